"""Training pairs in exactly the domain ``sidraw convert`` feeds the network.

Input: raw DN -> :func:`sidraw.mosaic.pack` -> :func:`sidraw.mosaic.normalise_packed` -> x ratio ->
clip to ``[-1, 1]``. Target: the clean mosaic packed by the same code, normalised 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..mean_correction import correct
from ..mosaic import Layout, normalise_packed, pack
from ..noise_estimate import NoiseEstimate, estimate_noise, noise_vector
from .noise import NoiseParams, add_noise, sample_params, sample_ratio
from .unprocess import CameraParams, layout_for, mosaic, random_camera, random_pattern, unprocess

INPUT_CLIP = (-1.0, 1.0)


def network_input(
    raw_dn: np.ndarray, layout: Layout, black: np.ndarray | float, white: float, ratio: float
) -> np.ndarray:
    """The convert-time network input of a raw mosaic.

    Args:
        raw_dn: (H, W) uint16 photosite values, black included.
        layout: packing layout of the mosaic's CFA.
        black: (P, P) per-position black levels (a scalar is broadcast), DN.
        white: white level, DN.
        ratio: amplification ratio.

    Returns:
        (h, w, C) float32 in ``[-1, 1]``.
    """
    x = normalised_raw(raw_dn, layout, black, white)
    x *= np.float32(ratio)
    np.clip(x, *INPUT_CLIP, out=x)
    return x


def normalised_raw(
    raw_dn: np.ndarray, layout: Layout, black: np.ndarray | float, white: float
) -> np.ndarray:
    """(h, w, C) float32 packed raw, 0 at black and 1 at white, not amplified or clipped."""
    p = layout.period
    black_pp = np.broadcast_to(np.asarray(black, dtype=np.float32), (p, p))
    return normalise_packed(pack(raw_dn, layout), layout, black_pp, white)


def frame_estimate(
    raw_dn: np.ndarray, layout: Layout, black: np.ndarray | float, white: float
) -> NoiseEstimate:
    """The noise estimate ``sidraw convert`` makes of a raw mosaic (normalised units)."""
    return estimate_noise(normalised_raw(raw_dn, layout, black, white))


@dataclass
class Pair:
    """One training or validation pair.

    Attributes:
        noisy: (h, w, C) float32 network input, ``[-1, 1]``.
        clean: (h, w, C) float32 target, normalised ``0..1``.
        clean_mosaic: (H, W) float32 clean mosaic (0..1), for rendering.
        raw_dn: (H, W) uint16 noisy raw, black included.
        pattern: (P, P) CFA letters.
        ratio, noise, camera: how it was made.
        estimate: the noise fitted on ``raw_dn`` as convert fits it.
    """

    noisy: np.ndarray
    clean: np.ndarray
    clean_mosaic: np.ndarray
    raw_dn: np.ndarray
    pattern: np.ndarray
    ratio: float
    noise: NoiseParams
    camera: CameraParams
    estimate: NoiseEstimate

    def normalised(self) -> np.ndarray:
        """(h, w, C) float32 packed noisy raw, 0 at black and 1 at white, before the ratio."""
        layout = layout_for(self.pattern)
        return normalised_raw(self.raw_dn, layout, self.noise.black, self.noise.white)

    def noise_vector(self, scale: float = 1.0) -> np.ndarray:
        """(2,) float32 network noise input of this pair, variances times ``scale``."""
        return noise_vector(self.estimate.scaled(scale), self.ratio)[0]


def make_pair(
    srgb: np.ndarray,
    cfa: str,
    rng: np.random.Generator,
    *,
    ratio: float | None = None,
    noise: NoiseParams | None = None,
    camera: CameraParams | None = None,
    pattern: np.ndarray | None = None,
    exposure: float | None = None,
) -> Pair:
    """Unprocess an sRGB crop, mosaic it, darken it by ``ratio`` and add noise.

    Args:
        srgb: (H, W, 3) float32 sRGB 0..1.
        cfa: ``"bayer"`` or ``"xtrans"``.
        rng: random generator for everything not given.
        exposure: scale of the clean linear image (default log-uniform 0.5..1: not every
            reference is exposed to the right).
    """
    camera = camera or random_camera(rng)
    pattern = random_pattern(cfa, rng) if pattern is None else pattern
    noise = noise or sample_params(rng)
    ratio = sample_ratio(rng) if ratio is None else ratio
    if exposure is None:
        exposure = math.exp(rng.uniform(math.log(0.5), 0.0))
    lin = unprocess(srgb, camera) * np.float32(exposure)
    clean_mosaic = mosaic(lin, pattern)
    layout = layout_for(pattern)
    clean = pack(clean_mosaic, layout)
    raw = add_noise(clean_mosaic, ratio, noise, rng)
    noisy = network_input(raw, layout, noise.black, noise.white, ratio)
    estimate = frame_estimate(raw, layout, noise.black, noise.white)
    return Pair(noisy, clean, clean_mosaic, raw, pattern, ratio, noise, camera, estimate)


def mosaic_size(packed: int, cfa: str) -> int:
    """Edge of the sRGB crop needed for a packed patch of edge ``packed``: one spare block each
    side, so that X-Trans phase padding never reaches the kept patch."""
    block = 2 if cfa == "bayer" else 3
    return (packed + 2) * block


# Half of the training pairs see their noise estimate scaled by a log-normal factor of this
# spread (in log variance), so that a wrong estimate at convert time degrades gracefully.
ESTIMATE_JITTER = 0.35


def training_pair(
    srgb: np.ndarray, cfa: str, packed: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random pair cropped to ``packed`` x ``packed``.

    ``srgb`` must be (mosaic_size(packed), mosaic_size(packed), 3).

    Returns:
        (noisy, clean, noise): (C, p, p) float32 each, and the (2,) float32 noise input fitted
        on the whole noisy crop (jittered for half of the pairs).
    """
    pair = make_pair(srgb, cfa, rng)
    sl = (slice(1, 1 + packed), slice(1, 1 + packed))
    noisy = np.ascontiguousarray(pair.noisy[sl].transpose(2, 0, 1))
    clean = np.ascontiguousarray(pair.clean[sl].transpose(2, 0, 1))
    scale = math.exp(rng.normal(0.0, ESTIMATE_JITTER)) if rng.random() < 0.5 else 1.0
    return noisy, clean, pair.noise_vector(scale)


def finish_like_convert(
    out: np.ndarray,
    pair: Pair,
    noise: np.ndarray,
    mean_block: int,
    hi: float = 1.0,
    guard: float = 0.0,
) -> np.ndarray:
    """What ``sidraw convert`` does to the network's (h, w, C) output, clipped to 0..1, of a
    pair: photosites at the input clip ``hi`` in every channel are blown highlights, made white;
    then the mean correction of ``mean_block`` (0: none) with the model's ``noise`` input and
    the residual ``guard`` (0: none)."""
    out[np.all(pair.noisy >= min(hi, 1.0), axis=2)] = 1.0
    if not mean_block:
        return out
    x = pair.normalised()
    return correct(out, x * np.float32(pair.ratio), x, noise, mean_block, guard)
