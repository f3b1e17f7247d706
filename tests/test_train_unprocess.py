"""Unprocessing: invertibility, neutral highlights, CFA sampling."""

from __future__ import annotations

import numpy as np
import pytest

# Training code needs the train extra (torch); without it these tests skip, so the README's
# test command passes after installing only ".[dev]".
pytest.importorskip("torch")

from sidraw.mosaic import pack
from sidraw.train import unprocess as up


def test_inverse_smoothstep_inverts() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(up.smoothstep(up.inverse_smoothstep(x)), x, atol=1e-5)


def _reprocess(raw_rgb: np.ndarray, cam: up.CameraParams) -> np.ndarray:
    """Forward camera pipeline (white balance, colour correction, gamma, tone)."""
    gains = np.array([cam.red_gain, 1.0, cam.blue_gain], np.float32) * cam.rgb_gain
    wb = raw_rgb * gains
    lin = wb @ np.linalg.inv(cam.rgb2cam).T
    return up.smoothstep(np.clip(lin, 0, 1) ** (1 / 2.2))


def test_unprocess_is_invertible_below_highlights() -> None:
    rng = np.random.default_rng(0)
    cam = up.random_camera(rng)
    # Moderate, mildly coloured values: no channel clips anywhere in the chain.
    srgb = rng.uniform(0.25, 0.55, size=(16, 16, 3)).astype(np.float32)
    raw = up.unprocess(srgb, cam)
    assert raw.dtype == np.float32 and raw.min() >= 0 and raw.max() <= 1
    assert np.allclose(_reprocess(raw, cam), srgb, atol=2e-3)


def test_saturated_white_stays_neutral() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        cam = up.random_camera(rng)
        white = np.ones((2, 2, 3), np.float32)
        assert np.allclose(up.unprocess(white, cam), 1.0, atol=1e-5)


def test_random_camera_rows_sum_to_one() -> None:
    cam = up.random_camera(np.random.default_rng(2))
    assert np.allclose(cam.rgb2cam.sum(axis=1), 1.0)
    assert 1.9 <= cam.red_gain <= 2.4 and 1.5 <= cam.blue_gain <= 1.9


@pytest.mark.parametrize("cfa", ["bayer", "xtrans"])
def test_mosaic_samples_the_pattern_colour(cfa: str) -> None:
    rng = np.random.default_rng(3)
    pattern = up.random_pattern(cfa, rng)
    rgb = np.zeros((24, 36, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.1, 0.5, 0.9
    m = up.mosaic(rgb, pattern)
    p = pattern.shape[0]
    expected = {"R": 0.1, "G": 0.5, "B": 0.9}
    for i in range(p):
        for j in range(p):
            assert np.allclose(m[i::p, j::p], expected[str(pattern[i, j])])
    # Packing puts each colour in its canonical channels.
    layout = up.layout_for(pattern)
    packed = pack(m, layout)
    colours = layout.channel_colors
    for c, letter in enumerate(colours):
        assert np.allclose(packed[..., c], expected[letter])
