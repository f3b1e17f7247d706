"""Rendering a (denoised) CFA mosaic to RGB through LibRaw, with the file's own metadata.

LibRaw applies the camera's black levels, as-shot white balance, demosaicing and colour matrix, so
every camera it knows is rendered with its own colours; sidraw only swaps the photosite values.
"""

from __future__ import annotations

import numpy as np
import rawpy

from .color import Encoding, encoding_for


def render_params(
    encoding: Encoding, *, half_size: bool = False, xtrans: bool = False
) -> rawpy.Params:
    """LibRaw settings for sidraw's rendering: camera white balance, no auto brightening, 16 bit.

    Highlights are clipped after white balance so that saturated photosites come out neutral.
    LibRaw's maximum adjustment is off: by default it lowers the white point to the brightest
    photosite when that one lies above 75 % of white, which made a frame's brightness depend on
    its single brightest denoised photosite.
    X-Trans uses LibRaw's 1-pass Markesteijn demosaic (selected by its PPG setting): about twice
    as fast as 3 passes, and the denoised mosaic leaves little for the extra passes to fix.
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
