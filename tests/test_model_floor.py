"""The floor every bundled model must hold (issue 13): a clean frame at ratio 1 comes back
unchanged, and flat colours keep their colour. Small synthetic frames, so CI stays fast.

``SIDRAW_FLOOR_MODEL`` (a model card, ONNX file or folder) checks another model the same way.

The bundled version-1 weights are known to fail both (issue 13: 29.7 dB at ratio 1, colours
shifted by up to 11 % of the signal): they are marked as expected failures by their sha256, so
any other weights (new bundled ones, or ``SIDRAW_FLOOR_MODEL``) are checked for real.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("scipy")

from sidraw.model import Network, card_for
from sidraw.tiling import run_tiled
from sidraw.train.noise import a7s2_params
from sidraw.train.pairs import Pair, finish_like_convert, make_pair

CFAS = ("bayer", "xtrans")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two arrays in 0..1."""
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


#: sha256 of bundled ONNX files known to fail the floor.
BELOW_FLOOR = {
    "a8b7cd341ba4ab3d",  # sidraw-bayer 1
    "13d20a4fa15f94da",  # sidraw-xtrans 1
}


#: What runs on a CPU: ``auto`` (the INT8 variant where the card validates one) and float32.
PRECISIONS = ["auto", "fp32"]


def _network(cfa: str, precision: str) -> Network:
    card = card_for(cfa, os.environ.get("SIDRAW_FLOOR_MODEL"))
    if card.sha256[:16] in BELOW_FLOOR:
        pytest.xfail(f"{card.name} version {card.raw.get('version')} is known to fail the floor")
    return Network(card, "cpu", threads=1, precision=precision)


def _denoise(net: Network, pair: Pair) -> np.ndarray:
    """The convert-time tiled inference on a pair's input, with its fitted noise, blown
    highlights made white and the card's mean correction."""
    vec = pair.noise_vector()[None]
    out = run_tiled(
        pair.noisy, lambda b: net(b, noise=vec), overlap=net.card.overlap,
        multiple=net.card.downsample,
    )
    return finish_like_convert(
        np.clip(out, 0.0, 1.0), pair, vec, net.card.mean_block, net.card.input_clip[1],
        net.card.guard,
    )


def _textured_scene(h: int, w: int) -> np.ndarray:
    """(h, w, 3) sRGB 0..1: gradients, sharp edges, fine stripes and a grain texture."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.6 * x / w, 0.3 + 0.4 * y / h, 0.5 + 0.3 * np.sin(x / 9)], axis=2)
    img[(x // 24 + y // 24) % 2 == 0] *= 0.6
    img[: h // 3] += 0.15 * np.sin(x[: h // 3] * 1.3)[..., None]  # stripes near Nyquist
    grain = rng.standard_normal((h // 2, w // 2)).repeat(2, 0).repeat(2, 1)[:h, :w]
    img[h // 2 :] += 0.08 * grain[h // 2 :, :, None]
    return np.clip(img, 0.0, 1.0)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cfa", CFAS)
def test_a_clean_frame_at_ratio_one_comes_back_unchanged(cfa: str, precision: str) -> None:
    net = _network(cfa, precision)
    rng = np.random.default_rng(1)
    scene = _textured_scene(288, 432)
    pair = make_pair(scene, cfa, rng, ratio=1.0, noise=a7s2_params(0.0939), exposure=1.0)
    out = _denoise(net, pair)
    # Doing nothing scores far above 40 dB here, a blur well below it.
    assert psnr(np.clip(pair.noisy, 0, 1), pair.clean) > 45
    assert psnr(out, pair.clean) >= 40.0


#: Independent noise draws of the flat-colour frame: the bias is what stays in their mean.
FLAT_DRAWS = 2


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cfa", CFAS)
def test_flat_colours_keep_their_colour(cfa: str, precision: str) -> None:
    """Five flat patches (a saturated red, green and blue, a grey, a yellow) at K = 0.75 x100:
    over each patch's interior, the mean of every channel within 1 % of the patch's signal.

    The bias is measured against the amplified input of the same draws, which is unbiased:
    against the clean frame, the input's own noise would leave about 1 % of sampling error per
    draw on these patches, as much as the limit."""
    net = _network(cfa, precision)
    rng = np.random.default_rng(2)
    block = 2 if cfa == "bayer" else 3
    h, w = 144 * block, 216 * block  # 144 x 216 packed pixels for either CFA
    scene = np.empty((h, w, 3), np.float32)
    colours = [(0.8, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.8), (0.5, 0.5, 0.5), (0.9, 0.8, 0.2)]
    for i, c in enumerate(colours):
        scene[:, i * w // 5 : (i + 1) * w // 5] = c
    first = make_pair(scene, cfa, rng, ratio=100.0, noise=a7s2_params(0.75), exposure=1.0)
    pairs = [first] + [
        make_pair(scene, cfa, rng, ratio=100.0, noise=first.noise, camera=first.camera,
                  pattern=first.pattern, exposure=1.0)
        for _ in range(FLAT_DRAWS - 1)
    ]
    outs = [_denoise(net, p) for p in pairs]
    pw = first.clean.shape[1] // 5
    for i in range(5):
        # Patch interiors, away from the colour edges and the frame border.
        sl = (slice(16, -16), slice(i * pw + 12, (i + 1) * pw - 12))
        signal = float(first.clean[sl].mean())
        bias = _patch_bias(outs, pairs, sl) / signal
        assert np.all(bias < 0.01), (colours[i], bias)
    # The check can fail: the clean frame pulled 10 % towards grey fails it on the red patch.
    sl = (slice(16, -16), slice(12, pw - 12))
    grey = [p.clean + 0.1 * (p.clean[sl].mean() - p.clean) for p in pairs]
    assert np.any(_patch_bias(grey, pairs, sl) / float(first.clean[sl].mean()) > 0.01)


def _patch_bias(
    images: list[np.ndarray], pairs: list[Pair], sl: tuple[slice, slice]
) -> np.ndarray:
    """(C,) |mean over the draws and ``sl`` of ``image - amplified input| per channel."""
    c = pairs[0].clean.shape[2]
    d = [
        (im[sl] - p.noisy[sl]).reshape(-1, c).mean(axis=0)
        for im, p in zip(images, pairs, strict=True)
    ]
    return np.abs(np.mean(d, axis=0))
