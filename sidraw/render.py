"""Rendering a (denoised) CFA mosaic to RGB through LibRaw, with the file's own metadata.

LibRaw applies the camera's black levels, as-shot white balance, demosaicing and colour matrix, so
every camera it knows is rendered with its own colours; sidraw only swaps the photosite values.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rawpy

from .color import Encoding, encoding_for
from .dng import DngMetadata, write_dng
from .raw import RawFile


def render_params(
    encoding: Encoding, *, half_size: bool = False, xtrans: bool = False, flip: int | None = None
) -> rawpy.Params:
    """LibRaw settings for sidraw's rendering: camera white balance, no auto brightening, 16 bit.

    Highlights are clipped after white balance so that saturated photosites come out neutral.
    LibRaw's maximum adjustment is off: by default it lowers the white point to the brightest
    photosite when that one lies above 75 % of white, which made a frame's brightness depend on
    its single brightest denoised photosite.
    X-Trans uses LibRaw's 1-pass Markesteijn demosaic (selected by its PPG setting): about twice
    as fast as 3 passes, and the denoised mosaic leaves little for the extra passes to fix.
    ``flip`` overrides the file's orientation (LibRaw's flip code; 0 keeps the sensor's).
    """
    return rawpy.Params(
        demosaic_algorithm=rawpy.DemosaicAlgorithm.PPG if xtrans else None,
        use_camera_wb=True,
        use_auto_wb=False,
        no_auto_bright=True,
        output_bps=16,
        gamma=encoding.libraw_gamma,
        output_color=_LIBRAW_SPACE[encoding.space],
        highlight_mode=rawpy.HighlightMode.Clip,
        half_size=half_size,
        adjust_maximum_thr=0.0,
        user_flip=flip,
    )


_LIBRAW_SPACE = {
    "srgb": rawpy.ColorSpace.sRGB,
    "adobe": rawpy.ColorSpace.Adobe,
    "p3": rawpy.ColorSpace.P3D65,
    "rec2020": rawpy.ColorSpace.Rec2020,
    "prophoto": rawpy.ColorSpace.ProPhoto,
}


def load_mosaic(raw: rawpy.RawPy, mosaic: np.ndarray) -> None:
    """Replace the photosites of an open raw file (LibRaw renders from this buffer).

    Args:
        raw: an open rawpy file.
        mosaic: (H, W) uint16 DN with black level included, the shape of ``raw.raw_image_visible``.
    """
    visible = raw.raw_image_visible
    if mosaic.shape != visible.shape:
        raise ValueError(f"mosaic shape {mosaic.shape} differs from the raw's {visible.shape}")
    visible[...] = mosaic


def render(
    raw: rawpy.RawPy,
    mosaic: np.ndarray | None = None,
    *,
    encoding: Encoding | None = None,
    half_size: bool = False,
) -> np.ndarray:
    """Render a mosaic with the metadata of an open raw file.

    Args:
        raw: an open rawpy file (its pixels are replaced in place when ``mosaic`` is given).
        mosaic: (H, W) uint16 DN with black level included, the shape of ``raw.raw_image_visible``;
            None renders the file's current pixels.
        encoding: output primaries and transfer curve (default: sRGB).
        half_size: LibRaw's half-size mode (no demosaic, quick previews).

    Returns:
        (H', W', 3) uint16 RGB, oriented as the camera recorded (LibRaw applies the flip).
    """
    if mosaic is not None:
        load_mosaic(raw, mosaic)
    pattern = raw.raw_pattern
    xtrans = pattern is not None and pattern.shape[0] == 6
    params = render_params(encoding or encoding_for("srgb"), half_size=half_size, xtrans=xtrans)
    return raw.postprocess(params)


#: Photosites of context rendered above and below each band and then cut off: LibRaw's AHD
#: demosaic reads 6 rows around a pixel, so band seams come out identical to a whole-frame render.
BAND_MARGIN = 16
#: Photosites rendered per band (LibRaw holds about 18 bytes a photosite while rendering).
BAND_PHOTOSITES = 3_000_000


@dataclass
class Strips:
    """A rendered image delivered as horizontal strips, top to bottom.

    Attributes:
        shape: (H, W) of the oriented output image.
        strips: (h_i, W, 3) uint16 RGB strips whose heights sum to H.
        banded: True when rendered band by band (memory independent of the frame's size); False
            when LibRaw rendered the whole frame (one strip).
    """

    shape: tuple[int, int]
    strips: Iterator[np.ndarray]
    banded: bool


def render_strips(
    raw: RawFile,
    *,
    encoding: Encoding | None = None,
    band_photosites: int | None = None,
) -> Strips:
    """Render the mosaic in LibRaw's buffer (``raw.mosaic``) band by band, where that is exact.

    Each band of sensor rows (columns for files shot in portrait), with :data:`BAND_MARGIN`
    photosites of context, goes to LibRaw as a small DNG carrying the file's own levels, white
    balance and colour matrix; the band's output is cut, oriented and handed on, so only one band
    is ever rendered at a time. This is used only when LibRaw derives exactly the same rendering
    parameters (camera matrix, white balance, levels, pattern) from the band as from the file,
    and only for Bayer sensors: LibRaw's X-Trans demosaic depends on where its internal tiles
    fall, so X-Trans frames, and files whose parameters do not carry over, are rendered whole.

    Args:
        raw: the open file; its mosaic holds the photosites to render ((H, W) uint16 DN).
        encoding: output primaries and transfer curve (default: sRGB).
        band_photosites: about how many photosites each band holds (default
            :data:`BAND_PHOTOSITES`).

    Returns:
        The image as strips (see :class:`Strips`), rendered lazily as they are consumed.
    """
    enc = encoding or encoding_for("srgb")
    band_photosites = band_photosites or BAND_PHOTOSITES
    flip = int(raw.handle.sizes.flip) & 7
    h, w = raw.mosaic.shape
    out_shape = (w, h) if flip & 4 else (h, w)
    first = None
    if raw.info.layout.kind == "bayer":
        first = _first_band(raw, flip, band_photosites)
    if first is None:
        return Strips(out_shape, iter([render(raw.handle, encoding=enc)]), banded=False)
    return Strips(out_shape, _bands(raw, enc, flip, band_photosites, first), banded=True)


def _band_ranges(raw: RawFile, flip: int, band_photosites: int) -> list[tuple[int, int]]:
    """Sensor ranges (rows, or columns when the image is transposed) in output order."""
    h, w = raw.mosaic.shape
    n, across = (w, h) if flip & 4 else (h, w)
    period = raw.info.layout.period
    step = max(64, band_photosites // max(across, 1)) // period * period
    ranges = [(i0, min(i0 + step, n)) for i0 in range(0, n, step)]
    if _mirrors(flip)[0]:  # the output's top comes from the sensor's far end
        ranges = [(n - i1, n - i0) for i0, i1 in ranges]
    return ranges


def _mirrors(flip: int) -> tuple[bool, bool]:
    """(upside down, left-right) of the output relative to the sensor (or its transpose).

    LibRaw mirrors first (1: columns, 2: rows) and transposes afterwards (4).
    """
    if flip & 4:
        return bool(flip & 1), bool(flip & 2)
    return bool(flip & 2), bool(flip & 1)


def _band_dng(raw: RawFile, flip: int, lo: int, hi: int) -> bytes:
    """The photosites of sensor range ``lo:hi`` (rows, or columns if transposed) as a DNG."""
    info = raw.info
    region = raw.mosaic[:, lo:hi] if flip & 4 else raw.mosaic[lo:hi]
    wb = info.wb_multipliers
    meta = DngMetadata(
        pattern=info.layout.pattern,
        black=info.black,
        white=int(info.white),
        # LibRaw holds the matrix as float32: its shortest decimal form is the value the file
        # (or LibRaw's table) gave, so the band's rendering matrix comes out bit-identical.
        color_matrix=np.vectorize(lambda v: float(str(np.float32(v))))(info.color_matrix),
        as_shot_neutral=(1 / wb[0], 1.0, 1 / wb[2]),
        # Not the camera's name: LibRaw must take the colours from these tags, not its tables.
        make="sidraw",
        model="band",
    )
    buf = io.BytesIO()
    write_dng(buf, np.ascontiguousarray(region), meta)
    return buf.getvalue()


def _open_band(data: bytes) -> rawpy.RawPy:
    band = rawpy.RawPy()
    try:
        band.open_buffer(io.BytesIO(data))
        band.unpack()
    except BaseException:
        band.close()
        raise
    return band


def _same_rendering(src: rawpy.RawPy, band: rawpy.RawPy) -> bool:
    """Whether LibRaw renders the band with the file's parameters."""

    def ratios(wb: list[float]) -> np.ndarray:
        v = np.asarray(wb[:3], dtype=np.float64)
        return v / v[1] if v[1] > 0 else v

    def colours(r: rawpy.RawPy) -> np.ndarray:
        desc = r.color_desc.decode("ascii", errors="replace")
        return np.array(list(desc))[np.asarray(r.raw_pattern)]

    return (
        np.array_equal(band.color_matrix, src.color_matrix)
        and np.array_equal(ratios(band.camera_whitebalance), ratios(src.camera_whitebalance))
        and np.allclose(band.black_level_per_channel, src.black_level_per_channel)
        and float(band.white_level) == float(src.white_level)
        and np.array_equal(colours(band), colours(src))
    )


def _band_extent(raw: RawFile, flip: int, lo: int, hi: int) -> tuple[int, int]:
    n = raw.mosaic.shape[1] if flip & 4 else raw.mosaic.shape[0]
    return max(0, lo - BAND_MARGIN), min(n, hi + BAND_MARGIN)


def _first_band(raw: RawFile, flip: int, band_photosites: int) -> rawpy.RawPy | None:
    """The first band opened in LibRaw, or None when bands would not render like the file."""
    lo, hi = _band_ranges(raw, flip, band_photosites)[0]
    band = _open_band(_band_dng(raw, flip, *_band_extent(raw, flip, lo, hi)))
    if _same_rendering(raw.handle, band):
        return band
    band.close()
    return None


def _bands(
    raw: RawFile, enc: Encoding, flip: int, band_photosites: int, first: rawpy.RawPy
) -> Iterator[np.ndarray]:
    params = render_params(enc, flip=0)
    opened: rawpy.RawPy | None = first
    try:
        for lo, hi in _band_ranges(raw, flip, band_photosites):
            e0, e1 = _band_extent(raw, flip, lo, hi)
            band = opened if opened is not None else _open_band(_band_dng(raw, flip, e0, e1))
            opened = None
            try:
                rgb = band.postprocess(params)
            finally:
                band.close()
            part = rgb[:, lo - e0 : hi - e0] if flip & 4 else rgb[lo - e0 : hi - e0]
            del rgb
            upside_down, mirrored = _mirrors(flip)
            if flip & 4:
                part = part.transpose(1, 0, 2)
            if upside_down:
                part = part[::-1]
            if mirrored:
                part = part[:, ::-1]
            yield np.ascontiguousarray(part)
    finally:
        if opened is not None:
            opened.close()
