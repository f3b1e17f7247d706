"""Rendering a (denoised) CFA mosaic to RGB through LibRaw, with the file's own metadata.

LibRaw applies the camera's black levels, as-shot white balance, demosaicing and colour matrix, so
every camera it knows is rendered with its own colours; sidraw only swaps the photosite values.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import rawpy

from .color import Encoding, encoding_for
from .dng import DngMetadata, write_dng
from .raw import RawFile

Demosaic = Literal["ppg", "ahd", "dht"]

#: LibRaw demosaics by name. On X-Trans, LibRaw runs its 1-pass Markesteijn demosaic for "ppg" and
#: the 3-pass one for the others.
DEMOSAICS: dict[str, rawpy.DemosaicAlgorithm] = {
    "ppg": rawpy.DemosaicAlgorithm.PPG,
    "ahd": rawpy.DemosaicAlgorithm.AHD,
    "dht": rawpy.DemosaicAlgorithm.DHT,
}

#: The default, measured with ``bench/demosaic.py`` against a demosaic-free ground truth on the 96
#: Bayer and 16 X-Trans validation cases: on denoised mosaics PPG scores as AHD (+0.007 dB sRGB
#: PSNR, Bayer) and 1-pass as 3-pass Markesteijn (-0.001 dB, X-Trans) in half the time. AHD and
#: 3 passes are better on clean mosaics only, where the network's own error does not dominate;
#: DHT is +0.1 dB on denoised Bayer mosaics for about three times PPG's time.
DEFAULT_DEMOSAIC: Demosaic = "ppg"


def demosaic_algorithm(name: str) -> rawpy.DemosaicAlgorithm:
    """LibRaw's demosaic of that name (see :data:`DEMOSAICS`).

    Raises:
        ValueError: not one of :data:`DEMOSAICS`.
    """
    if name not in DEMOSAICS:
        raise ValueError(f"unknown demosaic {name!r} (choose from {', '.join(DEMOSAICS)})")
    return DEMOSAICS[name]


def render_params(
    encoding: Encoding,
    *,
    half_size: bool = False,
    flip: int | None = None,
    demosaic: Demosaic = DEFAULT_DEMOSAIC,
) -> rawpy.Params:
    """LibRaw settings for sidraw's rendering: camera white balance, no auto brightening, 16 bit.

    Highlights are clipped after white balance so that saturated photosites come out neutral.
    LibRaw's maximum adjustment is off: by default it lowers the white point to the brightest
    photosite when that one lies above 75 % of white, which made a frame's brightness depend on
    its single brightest denoised photosite.
    ``demosaic`` names LibRaw's demosaic (see :data:`DEMOSAICS`, :data:`DEFAULT_DEMOSAIC`).
    ``flip`` overrides the file's orientation (LibRaw's flip code; 0 keeps the sensor's).
    """
    return rawpy.Params(
        demosaic_algorithm=demosaic_algorithm(demosaic),
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
    demosaic: Demosaic = DEFAULT_DEMOSAIC,
) -> np.ndarray:
    """Render a mosaic with the metadata of an open raw file.

    Args:
        raw: an open rawpy file (its pixels are replaced in place when ``mosaic`` is given).
        mosaic: (H, W) uint16 DN with black level included, the shape of ``raw.raw_image_visible``;
            None renders the file's current pixels.
        encoding: output primaries and transfer curve (default: sRGB).
        half_size: LibRaw's half-size mode (no demosaic, quick previews).
        demosaic: LibRaw's demosaic (see :data:`DEMOSAICS`).

    Returns:
        (H', W', 3) uint16 RGB, oriented as the camera recorded (LibRaw applies the flip).
    """
    if mosaic is not None:
        load_mosaic(raw, mosaic)
    params = render_params(encoding or encoding_for("srgb"), half_size=half_size, demosaic=demosaic)
    return raw.postprocess(params)


#: Photosites of context rendered above and below each Bayer band and then cut off: LibRaw's PPG
#: and AHD demosaics read at most a few rows around a pixel, so band seams come out identical to a
#: whole-frame render (tested for each).
BAND_MARGIN = 16
#: Photosites rendered per Bayer band (LibRaw holds about 18 bytes a photosite while rendering).
BAND_PHOTOSITES = 3_000_000
#: The same for X-Trans. LibRaw's Markesteijn demosaic works in tiles of 512 photosites of its own
#: and decides each tile's interpolation directions from that tile alone, so a band starts a new
#: tile grid: bands are larger (fewer seams), their context is wider, and a few pixels near each
#: seam come out as a whole-frame render with its tiles elsewhere would have them.
XTRANS_BAND_MARGIN = 36
XTRANS_BAND_PHOTOSITES = 9_000_000
#: Bayer demosaics that render a band as they render it in the frame: LibRaw's DHT scales by the
#: frame's channel extremes, so a DHT band comes out differently and DHT renders the whole frame
#: (on X-Trans, LibRaw runs its Markesteijn demosaic for every choice).
_BANDED_DEMOSAICS = frozenset({"ppg", "ahd"})
#: LibRaw's X-Trans demosaic needs frames of at least its tile size.
_XTRANS_MIN_BAND = 768

# LibRaw's sRGB (D65) -> XYZ matrix, from which it derives its camera -> sRGB matrix.
_XYZ_FROM_RGB = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)


@dataclass
class Strips:
    """A rendered image delivered as horizontal strips, top to bottom.

    Attributes:
        shape: (H, W) of the oriented output image.
        strips: (h_i, W, 3) uint16 RGB strips whose heights sum to H.
        banded: True when rendered band by band (memory independent of the frame's height); False
            when LibRaw rendered the whole frame (one strip).
    """

    shape: tuple[int, int]
    strips: Iterator[np.ndarray]
    banded: bool


@dataclass(frozen=True)
class _Banding:
    """How a file is cut into bands: along which sensor axis, how big, with what context."""

    flip: int
    step: int
    least: int  # the shortest band LibRaw renders like the others (a short last one is merged)
    margin: int
    period: int
    matrix: np.ndarray  # (3, 3) XYZ -> camera matrix written into every band

    @property
    def axis(self) -> int:
        """The sensor axis the bands run along (1: columns, for images shown transposed)."""
        return 1 if self.flip & 4 else 0


def render_strips(
    raw: RawFile,
    *,
    encoding: Encoding | None = None,
    band_photosites: int | None = None,
    demosaic: Demosaic = DEFAULT_DEMOSAIC,
) -> Strips:
    """Render the mosaic in LibRaw's buffer (``raw.mosaic``) band by band.

    Each band of sensor rows (columns for files shot in portrait), with some photosites of
    context, goes to LibRaw as a small DNG carrying the file's own levels, white balance and
    colour matrix; the band's output is cut, oriented and handed on, so only one band is ever
    rendered at a time. Bands are used only when LibRaw derives exactly the same rendering
    parameters (camera matrix, white balance, levels, pattern) from the band as from the file;
    otherwise, for X-Trans frames too small for LibRaw's X-Trans demosaic, and with the DHT
    demosaic on Bayer files, the frame is rendered whole. Bayer bands give exactly the
    whole-frame render; X-Trans bands differ from it in a few pixels near each seam (see
    :data:`XTRANS_BAND_PHOTOSITES`).

    Args:
        raw: the open file; its mosaic holds the photosites to render ((H, W) uint16 DN).
        encoding: output primaries and transfer curve (default: sRGB).
        band_photosites: about how many photosites each band holds (default
            :data:`BAND_PHOTOSITES`, :data:`XTRANS_BAND_PHOTOSITES` for X-Trans).
        demosaic: LibRaw's demosaic (see :data:`DEMOSAICS`).

    Returns:
        The image as strips (see :class:`Strips`), rendered lazily as they are consumed.
    """
    enc = encoding or encoding_for("srgb")
    flip = int(raw.handle.sizes.flip) & 7
    h, w = raw.mosaic.shape
    out_shape = (w, h) if flip & 4 else (h, w)
    xtrans = raw.info.layout.kind == "xtrans"  # Markesteijn whatever the choice: bands work
    bands = xtrans or demosaic in _BANDED_DEMOSAICS
    found = _banding(raw, flip, band_photosites) if bands else None
    if found is None:
        whole = render(raw.handle, encoding=enc, demosaic=demosaic)
        return Strips(out_shape, iter([whole]), banded=False)
    banding, first = found
    return Strips(out_shape, _bands(raw, enc, banding, first, demosaic), banded=True)


def _banding(
    raw: RawFile, flip: int, band_photosites: int | None
) -> tuple[_Banding, rawpy.RawPy] | None:
    """How to cut the file into bands and its first band, open in LibRaw; None when bands would
    not render like the file."""
    xtrans = raw.info.layout.kind == "xtrans"
    h, w = raw.mosaic.shape
    n, across = (w, h) if flip & 4 else (h, w)
    period = raw.info.layout.period
    if xtrans:
        margin, size = XTRANS_BAND_MARGIN, band_photosites or XTRANS_BAND_PHOTOSITES
        least = _XTRANS_MIN_BAND
        if across < _XTRANS_MIN_BAND or n < 2 * least:
            return None
    else:
        margin, size, least = BAND_MARGIN, band_photosites or BAND_PHOTOSITES, 64
    step = max(least, size // max(across, 1)) // period * period
    if step >= n:
        return None
    # The matrix LibRaw reports, else the one that reproduces the camera -> sRGB matrix it
    # derived (it may have taken it from the file's own DNG tags rather than its tables).
    for matrix in (_shortest(raw.info.color_matrix), _matrix_from_rgb_cam(raw.handle)):
        banding = _Banding(flip, step, least, margin, period, matrix)
        lo, hi = _band_ranges(banding, n)[0]
        e0, e1 = max(0, lo - margin), min(n, hi + margin)
        band = _open_band(_band_dng(raw, banding, e0, e1))
        if _same_rendering(raw.handle, band, e0 % period, banding.axis):
            return banding, band
        band.close()
    return None


def _shortest(matrix: np.ndarray) -> np.ndarray:
    # LibRaw holds the matrix as float32: its shortest decimal form is the value the file (or
    # LibRaw's table) gave, so the band's rendering matrix comes out bit-identical.
    return np.vectorize(lambda v: float(str(np.float32(v))))(np.asarray(matrix)[:3, :3])


def _matrix_from_rgb_cam(handle: rawpy.RawPy) -> np.ndarray:
    """An XYZ -> camera matrix from which LibRaw derives the file's camera -> sRGB matrix."""
    rgb_cam = np.asarray(handle.color_matrix, dtype=np.float64)[:3, :3]
    return np.linalg.pinv(rgb_cam) @ np.linalg.inv(_XYZ_FROM_RGB)


def _band_ranges(banding: _Banding, n: int) -> list[tuple[int, int]]:
    """Sensor ranges (rows, or columns when the image is transposed) in output order."""
    ranges = [(i0, min(i0 + banding.step, n)) for i0 in range(0, n, banding.step)]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] < banding.least:
        ranges[-2:] = [(ranges[-2][0], n)]
    if _mirrors(banding.flip)[0]:  # the output's top comes from the sensor's far end
        ranges = [(n - i1, n - i0) for i0, i1 in ranges]
    return ranges


def _mirrors(flip: int) -> tuple[bool, bool]:
    """(upside down, left-right) of the output relative to the sensor (or its transpose).

    LibRaw mirrors first (1: columns, 2: rows) and transposes afterwards (4).
    """
    if flip & 4:
        return bool(flip & 1), bool(flip & 2)
    return bool(flip & 2), bool(flip & 1)


def _band_dng(raw: RawFile, banding: _Banding, lo: int, hi: int) -> bytes:
    """The photosites of sensor range ``lo:hi`` (rows, or columns if transposed) as a DNG."""
    info = raw.info
    region = raw.mosaic[:, lo:hi] if banding.axis else raw.mosaic[lo:hi]
    wb = info.wb_multipliers
    meta = DngMetadata(
        # The CFA pattern as seen from the band's first photosite.
        pattern=np.roll(info.layout.pattern, -(lo % banding.period), axis=banding.axis),
        black=np.roll(
            np.broadcast_to(np.asarray(info.black, dtype=np.float64), info.layout.pattern.shape),
            -(lo % banding.period),
            axis=banding.axis,
        ),
        white=int(info.white),
        color_matrix=banding.matrix,
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


def _same_rendering(src: rawpy.RawPy, band: rawpy.RawPy, shift: int, axis: int) -> bool:
    """Whether LibRaw renders the band, which starts ``shift`` photosites into a CFA period
    along ``axis``, with the file's parameters."""

    def ratios(wb: list[float]) -> np.ndarray:
        v = np.asarray(wb[:3], dtype=np.float64)
        return v / v[1] if v[1] > 0 else v

    def colours(r: rawpy.RawPy) -> np.ndarray:
        desc = r.color_desc.decode("ascii", errors="replace")
        return np.array(list(desc))[np.asarray(r.raw_pattern)]

    return (
        np.array_equal(band.color_matrix, src.color_matrix)
        and np.array_equal(ratios(band.camera_whitebalance), ratios(src.camera_whitebalance))
        and np.allclose(sorted(band.black_level_per_channel), sorted(src.black_level_per_channel))
        and float(band.white_level) == float(src.white_level)
        and np.array_equal(colours(band), np.roll(colours(src), -shift, axis=axis))
    )


def _bands(
    raw: RawFile, enc: Encoding, banding: _Banding, first: rawpy.RawPy, demosaic: Demosaic
) -> Iterator[np.ndarray]:
    params = render_params(enc, flip=0, demosaic=demosaic)
    n = raw.mosaic.shape[banding.axis]
    opened: rawpy.RawPy | None = first
    try:
        for lo, hi in _band_ranges(banding, n):
            e0, e1 = max(0, lo - banding.margin), min(n, hi + banding.margin)
            band = opened if opened is not None else _open_band(_band_dng(raw, banding, e0, e1))
            opened = None
            try:
                rgb = band.postprocess(params)
            finally:
                band.close()
            part = rgb[:, lo - e0 : hi - e0] if banding.axis else rgb[lo - e0 : hi - e0]
            del rgb
            upside_down, mirrored = _mirrors(banding.flip)
            if banding.axis:
                part = part.transpose(1, 0, 2)
            if upside_down:
                part = part[::-1]
            if mirrored:
                part = part[:, ::-1]
            yield np.ascontiguousarray(part)
    finally:
        if opened is not None:
            opened.close()
