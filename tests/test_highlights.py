"""A lamp that clips must come out neutral white, not tinted by the white balance."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

import sidraw
from sidraw.model import card_for


def lamp_core(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    cy, cx = int(0.25 * h), int(0.75 * w)
    return img[cy - 3 : cy + 4, cx - 3 : cx + 4].reshape(-1, 3).astype(np.float64)


def convert_lamp(tmp_path: Path, make_dng, pattern: str, model: Path | None) -> np.ndarray:
    # ratio 100 darkening, converted at x100: the lamp (4x white) clips in every channel.
    src = make_dng(f"lamp_{pattern}.dng", pattern=pattern, ratio=100)
    dst = tmp_path / f"lamp_{pattern}.tif"
    sidraw.convert_file(src, dst, sidraw.ConvertOptions(ratio=100), model=model)
    return tifffile.imread(dst)


@pytest.mark.parametrize("pattern", ["RGGB", "xtrans"])
def test_clipped_lamp_is_neutral(tmp_path: Path, models_dir: Path, make_dng, pattern: str) -> None:
    core = lamp_core(convert_lamp(tmp_path, make_dng, pattern, models_dir))
    assert core.min() > 0.97 * 65535
    assert np.all(core.max(axis=1) - core.min(axis=1) < 0.01 * 65535)


@pytest.mark.parametrize("pattern,cfa", [("RGGB", "bayer"), ("xtrans", "xtrans")])
def test_bundled_model_keeps_highlights_neutral(
    tmp_path: Path, make_dng, pattern: str, cfa: str
) -> None:
    try:
        card_for(cfa)
    except sidraw.ModelError:
        pytest.skip("no bundled model")
    img = convert_lamp(tmp_path, make_dng, pattern, None)
    core = lamp_core(img)
    assert core.min() > 0.97 * 65535
    assert np.all(core.max(axis=1) - core.min(axis=1) < 0.01 * 65535)
    # The halo around the lamp, where the frame is bright but not clipped, is not magenta/green:
    # its colour stays near the scene's warm lamp colour (R >= G >= B).
    h, w, _ = img.shape
    ring = img[int(0.25 * h) - 12, int(0.75 * w) - 3 : int(0.75 * w) + 4].astype(np.float64)
    assert np.all(ring[:, 0] >= ring[:, 2])


def test_brightness_does_not_depend_on_the_brightest_photosite(tmp_path: Path, make_dng) -> None:
    """LibRaw's default maximum adjustment rescales the whole frame when the brightest photosite
    lies between 75 % and 100 % of white; sidraw's rendering must not."""
    import rawpy

    from sidraw.render import render

    with rawpy.imread(str(make_dng("flat.dng", width=240, height=160))) as raw:
        black = int(raw.black_level_per_channel[0])
        white = int(raw.white_level)
        flat = np.full(raw.raw_image_visible.shape, black + (white - black) // 8, np.uint16)
        before = render(raw, flat).astype(np.float64)
        spot = flat.copy()
        spot[0, 0] = black + int(0.8 * (white - black))
        after = render(raw, spot).astype(np.float64)
    rest = (slice(8, None), slice(8, None))
    assert before[rest].mean() > 1000  # not black, so a rescaling would show
    np.testing.assert_allclose(after[rest].mean(), before[rest].mean(), rtol=1e-4)
