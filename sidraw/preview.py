"""Before/after pictures: the naively brightened input beside sidraw's result."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .exposure import RatioDecision
from .model import Device, ModelCache
from .mosaic import denormalise_packed, normalise_packed, pack, unpack
from .raw import RawFile, open_raw

PREVIEW_WIDTH = 1600  # pixels of the whole side-by-side picture
PREVIEW_SUFFIX = ".preview.jpg"


def preview_path(output: Path) -> Path:
    """``bright/IMG_1.tif`` -> ``bright/IMG_1.preview.jpg``."""
    return output.with_name(output.stem + PREVIEW_SUFFIX)


def naive_mosaic(raw: RawFile, ratio: float) -> np.ndarray:
    """The input brightened without denoising: (H, W) uint16 DN, ``black + clip(x * ratio)``."""
    info = raw.info
    packed = normalise_packed(pack(raw.mosaic, info.layout), info.layout, info.black, info.white)
    packed *= np.float32(ratio)
    np.clip(packed, 0.0, 1.0, out=packed)
    return unpack(
        denormalise_packed(packed, info.layout, info.black, info.white),
        info.layout,
        raw.mosaic.shape,
    )


def _to_8bit(rgb: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray((rgb >> 8).astype(np.uint8), "RGB")
    height = max(1, round(img.height * width / img.width))
    return np.asarray(img.resize((width, height), Image.Resampling.LANCZOS))


def side_by_side(before: np.ndarray, after: np.ndarray, width: int = PREVIEW_WIDTH) -> bytes:
    """A JPEG of two (H, W, 3) uint16 sRGB images next to each other (left: before).

    Args:
        before, after: the two renderings, any sizes (each is scaled to half of ``width``).
        width: width of the whole picture in pixels.

    Returns:
        The JPEG file's bytes.
    """
    from PIL import Image

    half = width // 2
    left, right = _to_8bit(before, half), _to_8bit(after, half)
    height = max(left.shape[0], right.shape[0])
    canvas = np.zeros((height, 2 * half + 8, 3), dtype=np.uint8)
    canvas[: left.shape[0], :half] = left
    canvas[: right.shape[0], half + 8 :] = right
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def compare_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    ratio: float | None = None,
    model: str | os.PathLike[str] | None = None,
    device: Device = "auto",
) -> RatioDecision:
    """Write a before/after JPEG of one raw file (the library function of ``sidraw compare``).

    Returns:
        The ratio decision used for both halves.
    """
    from .output import write_atomic
    from .pipeline import ConvertOptions, denoise
    from .render import render

    network = ModelCache(model, device).get
    with open_raw(src) as raw:
        net = network(raw.info.layout.kind)
        mosaic, decision = denoise(raw, net, ConvertOptions(ratio=ratio))
        naive = naive_mosaic(raw, decision.ratio)
        after = render(raw.handle, mosaic)
        before = render(raw.handle, naive)
    write_atomic(Path(dst), side_by_side(before, after), overwrite=True)
    return decision
