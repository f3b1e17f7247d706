"""Synthetic noise: statistics match the model; parameter ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest

# Training code needs the train extra (torch); without it these tests skip, so the README's
# test command passes after installing only ".[dev]".
pytest.importorskip("torch")

pytest.importorskip("scipy")

from sidraw.train import noise


@pytest.mark.parametrize("lam", [None, -0.2, 0.05])
def test_flat_field_mean_and_variance(lam: float | None) -> None:
    rng = np.random.default_rng(0)
    params = noise.NoiseParams(k=2.0, sigma_read=3.0, read_lambda=lam, sigma_row=0.0)
    ratio = 100.0
    level = 0.3  # bright exposure, normalised
    clean = np.full((400, 500), level, np.float32)
    raw = noise.add_noise(clean, ratio, params, rng).astype(np.float64) - params.black
    signal_dn = level * params.range / ratio
    assert raw.mean() == pytest.approx(signal_dn, abs=0.05)
    assert raw.var() == pytest.approx(noise.expected_variance(signal_dn, params), rel=0.03)


def test_row_noise_is_per_row() -> None:
    rng = np.random.default_rng(1)
    params = noise.NoiseParams(k=1.0, sigma_read=0.5, read_lambda=None, sigma_row=4.0)
    raw = noise.add_noise(np.zeros((300, 2000), np.float32), 1.0, params, rng).astype(np.float64)
    row_means = raw.mean(axis=1) - params.black
    # Row means carry the row offsets (std 4); within-row scatter is only read + quantisation.
    assert row_means.std() == pytest.approx(4.0, rel=0.15)
    assert (raw - raw.mean(axis=1, keepdims=True)).std() == pytest.approx(
        math.sqrt(0.25 + 1 / 12), rel=0.05
    )


def test_clipping_at_white_and_black() -> None:
    rng = np.random.default_rng(2)
    p = noise.NoiseParams(k=1.0, sigma_read=50.0, read_lambda=None, sigma_row=0.0, clip_black=True)
    raw = noise.add_noise(np.zeros((100, 100), np.float32), 1.0, p, rng)
    assert raw.min() == p.black
    bright = noise.add_noise(np.full((10, 10), 2.0, np.float32), 1.0, p, rng)
    assert bright.max() == p.white


def test_tukey_lambda_quantiles_match_scipy() -> None:
    from scipy import stats

    u = np.linspace(0.01, 0.99, 50)
    for lam in (-0.25, 0.0, 0.1):
        assert np.allclose(noise.tukey_lambda(u, lam), stats.tukeylambda.ppf(u, lam), atol=1e-6)


def test_sampled_parameters_in_range() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        p = noise.sample_params(rng, "a7s2")
        assert 0.0939 * 0.999 <= p.k <= 6.011 * 1.001
        assert p.sigma_read > 0 and p.sigma_row > 0
        m = noise.sample_params(rng)
        assert m.white in (4095, 16383) and m.black < m.white
    ratios = np.array([noise.sample_ratio(rng) for _ in range(2000)])
    assert ratios.min() >= 1.0 and ratios.max() <= 300.0
    assert 0.65 < np.mean(ratios >= 50) < 0.75
    assert 0.08 < np.mean(ratios == 1.0) < 0.12  # clean long exposures: must come back unchanged


def test_a7s2_median_parameters() -> None:
    p = noise.a7s2_params(1.0)
    assert p.sigma_read == pytest.approx(math.exp(1.2182))  # ELD g_scale: the Gaussian std
    assert p.sigma_row == pytest.approx(math.exp(-0.5917))
