"""Training pairs are produced in the convert-time domain; the data split is fixed and disjoint."""

from __future__ import annotations

import numpy as np
import pytest

# Training code needs the train extra (torch); without it these tests skip, so the README's
# test command passes after installing only ".[dev]".
pytest.importorskip("torch")

pytest.importorskip("scipy")

from sidraw.mosaic import normalise_packed, pack
from sidraw.train import data as data_mod
from sidraw.train import pairs
from sidraw.train.unprocess import layout_for


@pytest.mark.parametrize("cfa", ["bayer", "xtrans"])
def test_pair_matches_convert_domain(cfa: str) -> None:
    rng = np.random.default_rng(0)
    srgb = rng.uniform(0, 1, size=(60, 72, 3)).astype(np.float32)
    pair = pairs.make_pair(srgb, cfa, rng, ratio=150.0)
    layout = layout_for(pair.pattern)
    p = layout.period
    black = np.full((p, p), pair.noise.black, np.float32)
    expected = normalise_packed(pack(pair.raw_dn, layout), layout, black, pair.noise.white) * 150.0
    assert np.array_equal(pair.noisy, np.clip(expected, -1, 1))
    assert np.array_equal(pair.clean, pack(pair.clean_mosaic, layout))
    assert pair.noisy.shape == pair.clean.shape == layout.packed_shape((60, 72))
    assert pair.noisy.min() >= -1 and pair.noisy.max() <= 1
    assert pair.clean.min() >= 0 and pair.clean.max() <= 1
    assert pair.raw_dn.dtype == np.uint16


def test_noisy_mean_tracks_clean() -> None:
    rng = np.random.default_rng(1)
    srgb = np.full((128, 128, 3), 0.5, np.float32)
    means = []
    for _ in range(20):
        pair = pairs.make_pair(srgb, "bayer", rng, ratio=20.0)
        means.append((pair.noisy.mean(), pair.clean.mean()))
    noisy, clean = np.mean(means, axis=0)
    assert noisy == pytest.approx(clean, rel=0.05)


@pytest.mark.parametrize(("cfa", "channels"), [("bayer", 4), ("xtrans", 9)])
def test_training_pair_shapes(cfa: str, channels: int) -> None:
    rng = np.random.default_rng(2)
    size = pairs.mosaic_size(32, cfa)
    noisy, clean, noise = pairs.training_pair(
        np.zeros((size, size, 3), np.float32) + 0.3, cfa, 32, rng
    )
    assert noisy.shape == clean.shape == (channels, 32, 32)
    assert noisy.dtype == clean.dtype == noise.dtype == np.float32
    assert noise.shape == (2,) and np.all(noise >= 0)


def test_noise_input_is_the_fit_of_the_noisy_frame() -> None:
    """Training tells the network what convert will: the fit of the noisy raw, not the truth."""
    from sidraw.noise_estimate import estimate_noise, noise_vector
    from sidraw.train.noise import a7s2_params

    rng = np.random.default_rng(3)
    srgb = np.tile(np.linspace(0.1, 0.9, 256, dtype=np.float32)[None, :, None], (192, 1, 3))
    pair = pairs.make_pair(srgb, "bayer", rng, ratio=100.0, noise=a7s2_params(3.0))
    layout = layout_for(pair.pattern)
    black = np.full((2, 2), pair.noise.black, np.float32)
    fitted = estimate_noise(normalise_packed(pack(pair.raw_dn, layout), layout, black, 16383))
    assert pair.estimate == fitted
    assert np.array_equal(pair.noise_vector(), noise_vector(fitted, 100.0)[0])
    k, _ = fitted.in_dn(pair.noise.range)
    assert k == pytest.approx(3.0, rel=0.3)


def test_split_is_fixed_and_disjoint() -> None:
    root = data_mod.data_root()
    if not (root / "clean" / "MANIFEST.tsv").exists():
        pytest.skip("shared data not available")
    entries = data_mod.manifest(root)
    train, val = data_mod.split(entries)
    assert len(val) >= 24
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(entries)
    assert data_mod.split(entries) == (train, val)


def test_gratings_hold_energy_near_the_mosaic_nyquist_limit() -> None:
    rng = np.random.default_rng(3)
    for _ in range(8):
        img = data_mod.fine_grating(128, rng)
        assert img.shape == (128, 128, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
        # Most of the luminance variation is at periods of at most 9 px (frequency >= 1/9).
        lum = img.mean(axis=2) - img.mean()
        power = np.abs(np.fft.fft2(lum)) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij"))
        assert power[f >= 1 / 9.5].sum() > 0.7 * power.sum()


def test_dead_leaves_hold_large_flat_saturated_areas() -> None:
    rng = np.random.default_rng(4)
    img = data_mod.dead_leaves(128, rng)
    assert img.shape == (128, 128, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    # Flat: most neighbouring pixels are (nearly) equal; coloured: chroma far from grey.
    assert np.mean(np.abs(np.diff(img, axis=1)).max(axis=2) < 0.01) > 0.8
    saturation = img.max(axis=2) - img.min(axis=2)
    assert np.mean(saturation > 0.5) > 0.1
    assert not np.array_equal(img, data_mod.dead_leaves(128, rng))
