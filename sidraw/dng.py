"""Writing CFA mosaics as DNG files that LibRaw (and raw developers) read.

Used for ``--format dng`` outputs, for the synthetic raws of the tests and benchmarks, and as the
rendering template of the training evaluation. The file is an uncompressed, single-IFD DNG 1.4 with
the standard CFA, level and colour tags; exposure metadata is stored in IFD0 as TIFF/EP allows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile

_COLOUR_CODE = {"R": 0, "G": 1, "B": 2}

# The camera-space matrix of a Sony ILCE-7S (XYZ D65 -> camera), as published in dcraw's table.
DEFAULT_COLOR_MATRIX = np.array(
    [[0.5838, -0.1430, -0.0246], [-0.3497, 1.1477, 0.2297], [-0.0748, 0.1885, 0.5778]]
)


@dataclass
class DngMetadata:
    """What a DNG carries besides pixels.

    Attributes:
        pattern: (P, P) array of colour letters ``"R"``, ``"G"``, ``"B"`` (P = 2 or 6).
        black: (P, P) black level per CFA position in DN (a scalar is broadcast).
        white: white level in DN.
        color_matrix: (3, 3) XYZ(D65) -> camera matrix (DNG ColorMatrix1).
        as_shot_neutral: camera RGB of a neutral grey, i.e. 1 / white-balance gains.
        make, model: camera maker and model.
        exposure_time: seconds; f_number; iso; datetime_original as ``YYYY:MM:DD HH:MM:SS``.
        orientation: EXIF orientation (1 = normal).
    """

    pattern: np.ndarray
    black: np.ndarray | float = 0.0
    white: int = 16383
    color_matrix: np.ndarray = field(default_factory=lambda: DEFAULT_COLOR_MATRIX.copy())
    as_shot_neutral: tuple[float, float, float] = (0.5, 1.0, 0.6)
    make: str = "Sony"
    model: str = "ILCE-7SM2"
    exposure_time: float | None = None
    f_number: float | None = None
    iso: int | None = None
    datetime_original: str | None = None
    orientation: int = 1
    software: str = "sidraw"


def _rational(value: float, denominator: int = 1_000_000) -> tuple[int, int]:
    frac = Fraction(float(value)).limit_denominator(denominator)
    return frac.numerator, frac.denominator


def _flat_rationals(values: np.ndarray | list[float], denominator: int = 10_000) -> list[int]:
    out: list[int] = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        out.extend(_rational(float(v), denominator))
    return out


def write_dng(target: str | Path | BinaryIO, mosaic: np.ndarray, meta: DngMetadata) -> None:
    """Write a CFA mosaic as DNG.

    Args:
        target: a path or a binary file object.
        mosaic: (H, W) uint16 photosite values in DN, black level included.
        meta: CFA pattern, levels, colour and exposure metadata.
    """
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError("mosaic must be a 2-D uint16 array")
    pattern = np.asarray(meta.pattern)
    p = pattern.shape[0]
    codes = [_COLOUR_CODE[str(c)] for c in pattern.ravel()]
    black = np.broadcast_to(np.asarray(meta.black, dtype=np.float64), (p, p))
    tags: list[tuple[int, str, int, object, bool]] = [
        (33421, "H", 2, (p, p), True),  # CFARepeatPatternDim
        (33422, "B", p * p, bytes(codes), True),  # CFAPattern
        (50706, "B", 4, bytes([1, 4, 0, 0]), True),  # DNGVersion
        (50707, "B", 4, bytes([1, 1, 0, 0]), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{meta.make} {meta.model}", True),  # UniqueCameraModel
        (50710, "B", 3, bytes([0, 1, 2]), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
        (50713, "H", 2, (p, p), True),  # BlackLevelRepeatDim
        (50714, "2I", p * p, _flat_rationals(black.ravel(), 100), True),  # BlackLevel
        (50717, "I", 1, int(meta.white), True),  # WhiteLevel
        (50721, "2i", 9, _flat_rationals(meta.color_matrix, 2**28), True),  # ColorMatrix1
        (50728, "2I", 3, _flat_rationals(meta.as_shot_neutral, 2**28), True),  # AsShotNeutral
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (274, "H", 1, int(meta.orientation), True),  # Orientation
    ]
    if meta.exposure_time is not None:
        tags.append((33434, "2I", 1, _rational(meta.exposure_time), True))
    if meta.f_number is not None:
        tags.append((33437, "2I", 1, _rational(meta.f_number, 100), True))
    if meta.iso is not None:
        tags.append((34855, "H", 1, int(meta.iso), True))
    if meta.datetime_original is not None:
        tags.append((36867, "s", 0, meta.datetime_original, True))
    # tifffile needs a named file or a seekable buffer; file objects from os.fdopen have no name
    # (and pipes cannot seek): those get the DNG through memory.
    direct = isinstance(target, (str, Path, io.BytesIO)) or (
        isinstance(getattr(target, "name", None), str) and target.seekable()
    )
    buffer = target if direct else io.BytesIO()
    tifffile.imwrite(
        buffer,
        mosaic,
        photometric=32803,
        compression=None,
        metadata=None,
        software=meta.software,
        extratags=[(code, dtype, count, value, once) for code, dtype, count, value, once in tags]
        + [(271, "s", 0, meta.make, True), (272, "s", 0, meta.model, True)],
    )
    if not direct:
        target.write(buffer.getvalue())  # type: ignore[union-attr]
