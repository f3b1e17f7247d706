"""Evaluation helpers: metrics, the BM3D baseline's transform, rendering through a DNG."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Training code needs the train extra (torch); without it these tests skip, so the README's
# test command passes after installing only ".[dev]".
pytest.importorskip("torch")

pytest.importorskip("scipy")
pytest.importorskip("rawpy")

from sidraw.train import evaluate as ev
from sidraw.train.noise import a7s2_params
from sidraw.train.pairs import make_pair


def test_metrics_identity() -> None:
    a = np.random.default_rng(0).uniform(0, 1, (32, 32, 3))
    assert ev.ssim(a, a) == pytest.approx(1.0)
    assert ev.psnr(a, a) > 100
    assert ev.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-6)


def test_flat_bias_against_the_input_cancels_its_sampling_error() -> None:
    rng = np.random.default_rng(4)
    clean = np.broadcast_to(np.array([0.3, 0.05, 0.05, 0.1], np.float32), (64, 64, 4)).copy()
    noisy = clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)
    # A "denoiser" that keeps the input's local means exactly and lifts channel 1 by 0.01.
    pred = noisy.reshape(8, 8, 8, 8, 4).mean(axis=(1, 3), keepdims=True)
    pred = np.broadcast_to(pred, (8, 8, 8, 8, 4)).reshape(64, 64, 4) + np.float32([0, 0.01, 0, 0])
    diff, signal = ev.flat_bias(pred, clean, noisy)
    np.testing.assert_allclose(np.array(diff) / np.array(signal), [0, 0.2, 0, 0], atol=1e-5)
    # Against the clean frame the noise's sampling error shows too: 0.1 / 64 of each channel's
    # sum, several per cent of the dim channels.
    vs_clean, _ = ev.flat_bias(pred, clean)
    assert np.abs(np.array(vs_clean) / np.array(signal) - [0, 0.2, 0, 0]).max() > 1e-3


def test_gat_inverse_is_unbiased_for_poisson() -> None:
    rng = np.random.default_rng(1)
    for lam in (2.0, 10.0, 50.0):
        e = rng.poisson(lam, 200_000) + rng.normal(0, 1.0, 200_000)
        f = 2 * np.sqrt(np.maximum(e + 3 / 8 + 1.0, 0))
        # Exact unbiased inverse of the *expected* transformed value recovers the mean.
        assert ev._gat_inverse(np.array([f.mean()]), 1.0)[0] == pytest.approx(lam, rel=0.03)


def test_render_and_baselines_on_a_small_bayer_case() -> None:
    pytest.importorskip("bm3d")
    rng = np.random.default_rng(2)
    srgb = np.tile(np.linspace(0.2, 0.8, 96, dtype=np.float32)[None, :, None], (64, 1, 3))
    pair = make_pair(srgb, "bayer", rng, ratio=100.0, noise=a7s2_params(0.75), exposure=1.0)
    with tempfile.TemporaryDirectory() as td:
        renderer = ev.Renderer(pair, Path(td))
        try:
            ref = renderer(pair.clean)
            assert ref.shape[:2] == (64, 96) and 0 < ref.mean() < 1
            naive = ev.metrics(ev.naive(pair), pair, ref, renderer)
            bm3d = ev.metrics(ev.bm3d_gat(pair), pair, ref, renderer)
        finally:
            renderer.close()
    assert math.isfinite(naive["srgb_psnr"])
    assert bm3d["raw_psnr"] > naive["raw_psnr"]


def test_flat_bias_leaves_patches_at_the_clip_to_the_highlight_check() -> None:
    """A blown patch (clean at white) pulled down by 3 % is not a colour bias of the in-range
    patches, but the highlight check sees it, in the render, as a shift with a tint when the
    channels moved apart; a 3 % shift of an in-range patch still counts as bias."""
    clean = np.full((64, 64, 4), 0.4, np.float32)
    clean[:, 32:] = 1.0  # blown half
    pred = clean.copy()
    pred[:, 32:, 1] -= 0.03
    diff, signal = ev.flat_bias(pred, clean)
    assert np.abs(np.array(diff) / np.array(signal)).max() < 1e-6
    pred[:, :32, 0] += 0.012
    diff, signal = ev.flat_bias(pred, clean)
    assert np.array(diff)[0] / np.array(signal)[0] == pytest.approx(0.03, rel=1e-4)
    # Renders twice the packed size; the blown half's green channel 3 % low, red untouched.
    ref = np.ones((128, 128, 3))
    img = ref.copy()
    img[:, 64:, 1] -= 0.03
    shift, lit = ev.highlight_shift(img, ref, clean)
    rel = np.array(shift) / np.array(lit)
    np.testing.assert_allclose(rel, [0, -0.03, 0], atol=1e-9)
    # Nothing at the clip: nothing to score.
    assert ev.highlight_shift(img, ref, np.full_like(clean, 0.4))[1] == [0.0, 0.0, 0.0]


def test_an_int8_variant_is_evaluated_with_its_models_card(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{}")
    assert ev.card_beside(tmp_path / "m.int8.onnx") == tmp_path / "m.json"
    assert ev.card_beside(tmp_path / "m.onnx") == tmp_path / "m.json"
    assert ev.card_beside(tmp_path / "other.onnx") is None
