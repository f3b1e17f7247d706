"""The conversion of one raw file: read, choose the ratio, pack, denoise in tiles, render, write.

:func:`convert_file` is the library entry point that ``sidraw convert`` calls for every file;
scripts can call it too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .exposure import DEFAULT_MAX_RATIO, RatioDecision, amplify, choose_ratio
from .model import Device, ModelCache, Network
from .mosaic import denormalise_packed, normalise_packed, pack, unpack
from .output import ImageFormat, encode_image, write_atomic
from .raw import RawFile, open_raw
from .render import ColorSpace, render
from .tiling import DEFAULT_TILE, run_tiled


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of a conversion (the CLI options of ``sidraw convert``).

    Attributes:
        ratio: fixed amplification, or None.
        target_exposure: seconds the output should look exposed for, or None.
        max_ratio: upper clamp of the ratio.
        fmt: ``"tiff"`` or ``"png"``.
        linear: linear transfer curve instead of sRGB's.
        color_space: output primaries.
        tile, overlap: tiling in packed pixels (overlap None: the model card's measured one).
        overwrite: replace existing outputs.
    """

    ratio: float | None = None
    target_exposure: float | None = None
    max_ratio: float = DEFAULT_MAX_RATIO
    fmt: ImageFormat = "tiff"
    linear: bool = False
    color_space: ColorSpace = "srgb"
    tile: int = DEFAULT_TILE
    overlap: int | None = None
    overwrite: bool = False


@dataclass
class ConvertResult:
    """What happened to one file.

    Attributes:
        input: the input path.
        output: the written file (None when nothing was written).
        decision: the amplification ratio and how it was chosen.
        model: the model name used.
        seconds: wall time of the whole conversion.
        timings: seconds per stage (decode, pack, inference, render, write).
    """

    input: str
    output: str | None
    decision: RatioDecision
    model: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "ratio": round(self.decision.ratio, 4),
            "ratio_mode": self.decision.mode,
            "model": self.model,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def denoise(
    raw: RawFile,
    network: Network,
    options: ConvertOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, RatioDecision]:
    """Denoise and brighten the mosaic of an open raw file.

    Returns:
        ((H, W) uint16 clean mosaic in DN with the file's black level, the ratio decision).
    """
    t = timings if timings is not None else {}
    start = time.perf_counter()
    info = raw.info
    network.check_layout(info.layout, info.path)
    packed = normalise_packed(pack(raw.mosaic, info.layout), info.layout, info.black, info.white)
    decision = choose_ratio(
        packed,
        ratio=options.ratio,
        target_exposure=options.target_exposure,
        exposure_time=info.exif.exposure_time,
        max_ratio=options.max_ratio,
    )
    x = amplify(packed, decision.ratio, out=packed)
    lo, hi = network.card.input_clip
    if (lo, hi) != (-1.0, 1.0):
        np.clip(x, lo, hi, out=x)
    t["pack"] = time.perf_counter() - start

    start = time.perf_counter()
    y = run_tiled(
        x,
        network,
        tile=options.tile,
        overlap=options.overlap if options.overlap is not None else network.card.overlap,
        multiple=network.card.downsample,
        progress=progress,
    )
    t["inference"] = time.perf_counter() - start

    start = time.perf_counter()
    np.clip(y, 0.0, 1.0, out=y)
    # Photosites clipped in every channel are blown highlights: make them exactly white so that
    # LibRaw's highlight clipping renders them neutral instead of tinted by the white balance.
    blown = np.all(x >= hi, axis=2)
    y[blown] = 1.0
    mosaic = unpack(
        denormalise_packed(y, info.layout, info.black, info.white), info.layout, raw.mosaic.shape
    )
    t["pack"] += time.perf_counter() - start
    return mosaic, decision


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    *,
    models: ModelCache | None = None,
    model: str | os.PathLike[str] | None = None,
    device: Device = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Convert one dark raw file into a bright, clean 16-bit image.

    Args:
        src: the raw file (any format LibRaw reads with a Bayer or X-Trans CFA).
        dst: the output file (written atomically; not overwritten unless ``options.overwrite``).
        options: conversion settings (defaults: auto ratio, sRGB TIFF).
        models: a model cache shared across files (default: a new one from ``model``/``device``).
        model: a model card, ONNX file or folder (default: the bundled models).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: called with ``(tiles done, tiles total)`` during inference.

    Raises:
        sidraw.SidrawError: bad input, missing model, or the output cannot be written.
    """
    opts = options or ConvertOptions()
    cache = models or ModelCache(model, device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src_name = os.fspath(src)
    with open_raw(src_name) as raw:
        timings["decode"] = time.perf_counter() - t0
        network = cache.get(raw.info.layout.kind)
        mosaic, decision = denoise(raw, network, opts, progress=progress, timings=timings)
        start = time.perf_counter()
        rgb = render(raw.handle, mosaic, linear=opts.linear, color_space=opts.color_space)
        timings["render"] = time.perf_counter() - start
    start = time.perf_counter()
    data = encode_image(rgb, opts.fmt, software=f"sidraw {__version__}")
    write_atomic(Path(dst), data, overwrite=opts.overwrite)
    timings["write"] = time.perf_counter() - start
    return ConvertResult(
        input=src_name,
        output=os.fspath(dst),
        decision=decision,
        model=network.card.name,
        seconds=time.perf_counter() - t0,
        timings=timings,
    )
