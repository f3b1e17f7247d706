"""The frame's own noise fit (sidraw.noise_estimate): accuracy on frames of known noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sidraw.noise_estimate import NoiseEstimate, estimate_noise, noise_vector

WHITE_RANGE = 16383 - 512


def _detail(rng: np.random.Generator, shape: tuple[int, int], grain: int = 3) -> np.ndarray:
    """Unit-variance texture correlated over ``grain`` pixels, as real detail is (pixel-wise
    independent "texture" would be noise by definition)."""
    h, w = shape
    coarse = rng.standard_normal((h // grain + 2, w // grain + 2)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, grain, axis=0), grain, axis=1)
    blur = sum(np.roll(np.roll(fine, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    blur = blur[:h, :w]
    return (blur - blur.mean()) / blur.std()


def _scene(rng: np.random.Generator, shape: tuple[int, int], texture: float) -> np.ndarray:
    """(h, w, 4) clean packed scene, normalised: smooth gradients and steps everywhere, detail of
    relative amplitude ``texture`` on two thirds of it (a photo has some plain areas)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.05 + 0.25 * (x / w) + 0.1 * np.sin(y / 37.0) ** 2
    regions = (np.floor(x / 64) + np.floor(y / 48)) % 3
    blocks = regions * 0.08
    detail = texture * _detail(rng, (h, w)) * (regions > 0)
    img = np.clip(base + blocks, 0, 1) * (1 + detail)
    gains = np.array([0.5, 1.0, 1.0, 0.7], np.float32)  # white balance: channels differ
    return np.clip(img[..., None] * gains, 0, 1)


def _capture(
    clean: np.ndarray, k_dn: float, read_dn: float, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Darken by ``ratio``, add Poisson (gain ``k_dn``) and Gaussian read noise, round to DN;
    returns the normalised (not amplified) packed frame."""
    signal = clean * (WHITE_RANGE / ratio)
    dn = rng.poisson(signal / k_dn) * k_dn + rng.normal(0.0, read_dn, clean.shape)
    return (np.rint(dn) / WHITE_RANGE).astype(np.float32)


def _variance_error(est: NoiseEstimate, k_dn: float, read_dn: float, level: float) -> float:
    """Fitted / true variance at a normalised signal ``level``."""
    true = k_dn / WHITE_RANGE * level + (read_dn**2 + 1 / 12) / WHITE_RANGE**2
    return (est.gain * level + est.read**2) / true


@pytest.mark.parametrize("k_dn", [0.1, 0.75, 3.0, 6.0])
@pytest.mark.parametrize("ratio", [1.0, 100.0, 300.0])
def test_fit_recovers_the_variance_at_the_frames_own_levels(k_dn: float, ratio: float) -> None:
    rng = np.random.default_rng(int(k_dn * 100 + ratio))
    read_dn = math.exp(0.5407 * math.log(k_dn) + 1.2182)  # the A7S2's median read noise (ELD)
    clean = _scene(rng, (384, 512), texture=0.3)
    frame = _capture(clean, k_dn, read_dn, ratio, rng)
    est = estimate_noise(frame)
    assert est.blocks > 1000
    # What the network is told is the variance where the frame's signal is.
    for q in (0.25, 0.5, 0.9):
        level = float(np.quantile(clean, q)) / ratio
        assert 0.6 < _variance_error(est, k_dn, read_dn, level) < 1.45, (q, est)
    # The gain itself where shot noise dominates the frame.
    # Gain and read noise each where they dominate the frame's variance.
    k_fit, read_fit = est.in_dn(WHITE_RANGE)
    shot = k_dn * float(np.median(clean)) * WHITE_RANGE / ratio
    if shot > 10 * read_dn**2:
        assert k_fit == pytest.approx(k_dn, rel=0.3)
    if read_dn**2 > shot:
        assert read_fit == pytest.approx(math.hypot(read_dn, 0.29), rel=0.35)


def test_texture_does_not_pass_for_noise() -> None:
    rng = np.random.default_rng(7)
    clean = _scene(rng, (384, 512), texture=0.0)
    # Strong fine texture on half of the frame: a blind variance would be ~10x too high.
    clean[:, :256] *= 1 + 0.5 * _detail(rng, (384, 256), grain=2)[..., None]
    clean = np.clip(clean, 0, 1)
    frame = _capture(clean, 0.75, 1.6, 100.0, rng)
    est = estimate_noise(frame)
    level = float(np.median(clean[:, 256:])) / 100
    assert 0.7 < _variance_error(est, 0.75, 1.6, level) < 1.45


def test_row_noise_does_not_enter_the_fit() -> None:
    rng = np.random.default_rng(8)
    clean = _scene(rng, (384, 512), texture=0.0)
    frame = _capture(clean, 0.75, 3.0, 100.0, rng)
    # Row noise of 4 DN would add 16 DN^2 to a variance of about 15 DN^2 if it entered the fit.
    rows = rng.normal(0.0, 4.0 / WHITE_RANGE, (384, 1, 1)).astype(np.float32)
    with_rows = estimate_noise(frame + rows)
    level = float(np.median(clean)) / 100
    assert 0.75 < _variance_error(with_rows, 0.75, 3.0, level) < 1.3


def test_degenerate_frames() -> None:
    assert estimate_noise(np.zeros((8, 8, 4), np.float32)).blocks == 0
    flat = estimate_noise(np.full((256, 256, 4), 0.2, np.float32))
    assert flat.gain == 0 and flat.read == 0
    clipped = estimate_noise(np.ones((256, 256, 4), np.float32))
    assert clipped.blocks == 0


def test_noise_vector_is_the_amplified_variance() -> None:
    est = NoiseEstimate(gain=2e-4, read=3e-4, blocks=1)
    a, b = noise_vector(est, 100.0)[0]
    assert a == pytest.approx(2e-2) and b == pytest.approx(9e-4)
    # Amplified x = 100 m: var(x) = 100^2 (gain m + read^2) = a x + b.
    m = 0.001
    assert a * 100 * m + b == pytest.approx(100**2 * (2e-4 * m + 3e-4**2))
    assert est.scaled(4.0).read == pytest.approx(6e-4)
