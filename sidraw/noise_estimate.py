"""How noisy a frame is: a Poisson-Gaussian fit on its own packed mosaic.

A raw photosite with mean ``m`` above black (normalised: 0 black, 1 white) has variance
``gain * m + read**2``: shot noise, whose variance grows with the signal (``gain`` is the system
gain K in DN per electron divided by ``white - black``), plus signal-independent read noise. The
network is told this per pixel (:func:`noise_vector`), so it can tell texture from noise.

The fit needs no metadata. Each packed channel is cut into 2x2 blocks of photosites of one colour;
in a block ``(a, b; c, d)`` the diagonal detail ``(a - b - c + d) / 2`` has the noise's variance
and cancels the block's mean, its horizontal and vertical gradients and any per-row offset (row
noise), so only texture with a cross-derivative leaks into it. Blocks whose horizontal or vertical
detail is far above the noise are dropped as texture, the rest are binned by their mean, each bin
gives a robust variance (the median of the squared detail over that of a chi-square with one
degree of freedom), and a weighted line through the bins gives ``gain`` and ``read**2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Median of a chi-square with one degree of freedom: median(D^2) = CHI2_MEDIAN * var(D).
CHI2_MEDIAN = 0.454936
# The first fit, before any patch is known to be flat: in each bin of patches, the QUANTILE-th
# quantile of the patch means of D^2 (texture only raises them), over that of a chi-square with
# 16 degrees of freedom divided by 16.
QUANTILE = 0.2
CHI2_16_QUANTILE = 0.697007
# Texture is judged on patches of PATCH x PATCH blocks: a patch whose gradient energy is above
# PATCH_LIMIT times what the noise alone gives is texture (for PATCH = 4 the ratio of a flat patch
# is a chi-square with 32 degrees of freedom over 32; 0.5 % of flat patches exceed 1.75).
PATCH = 4
PATCH_EDGE = 2 * PATCH  # packed pixels along a patch
PATCH_LIMIT = 1.75
FALLBACK_QUANTILE = 0.05
BINS = 24
MIN_PER_BIN = 64
MIN_BLOCKS = 256
BLACK_CLIP_SHARE = 0.01
# Blocks with a photosite above this are near clipping, where the variance shrinks.
HIGHLIGHT = 0.9


@dataclass(frozen=True)
class NoiseEstimate:
    """Fitted noise of a frame, in normalised units (0 black, 1 white, before amplification).

    Attributes:
        gain: variance added per unit of signal (K / (white - black)).
        read: standard deviation of the signal-independent noise (read noise + quantisation).
        blocks: 2x2 blocks that entered the fit (0: nothing to fit; the values are then 0).
    """

    gain: float
    read: float
    blocks: int

    def in_dn(self, white_range: float) -> tuple[float, float]:
        """(K in DN per electron, read noise in DN) for a sensor with ``white - black``."""
        return self.gain * white_range, self.read * white_range

    def scaled(self, factor: float) -> NoiseEstimate:
        """The same noise with every variance multiplied by ``factor``."""
        return NoiseEstimate(self.gain * factor, self.read * math.sqrt(factor), self.blocks)


def noise_vector(estimate: NoiseEstimate, ratio: float) -> np.ndarray:
    """The network's noise input for a frame amplified by ``ratio``.

    The amplified input ``x = ratio * m`` has variance ``a * x + b`` with ``a = ratio * gain``
    and ``b = (ratio * read) ** 2``.

    Returns:
        (1, 2) float32 ``[[a, b]]``.
    """
    a = ratio * estimate.gain
    b = (ratio * estimate.read) ** 2
    return np.array([[a, b]], dtype=np.float32)


def _block_details(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, squared diagonal detail, gradient energy and usability of every 2x2 block.

    Args:
        packed: (h, w, C) float32 normalised packed mosaic.

    Returns:
        Four (hb, wb, C) float32 / bool arrays, ``hb`` and ``wb`` multiples of ``PATCH``:
        block mean, diagonal detail squared, ``H**2 + V**2``, and whether no photosite of the
        block is near clipping.
    """
    h = packed.shape[0] // PATCH_EDGE * PATCH_EDGE
    w = packed.shape[1] // PATCH_EDGE * PATCH_EDGE
    p = packed[:h, :w].astype(np.float32, copy=False)
    a, b = p[0::2, 0::2], p[0::2, 1::2]
    c, d = p[1::2, 0::2], p[1::2, 1::2]
    mean = (a + b + c + d) * 0.25
    diag = (a - b - c + d) * 0.5
    hor = (a - b + c - d) * 0.5
    ver = (a + b - c - d) * 0.5
    # Row noise offsets whole rows: in the vertical detail it is one value along a block row,
    # which texture is not. Take it out so that row noise does not pass for texture.
    ver = ver - np.median(ver, axis=1, keepdims=True)
    bright = np.maximum(np.maximum(a, b), np.maximum(c, d))
    usable = bright < HIGHLIGHT
    if _clipped_at_black(p):
        # Noise below black was cut off: blocks that touch black have too small a variance.
        usable &= np.minimum(np.minimum(a, b), np.minimum(c, d)) > 0
    return mean, diag * diag, hor * hor + ver * ver, usable


def _clipped_at_black(packed: np.ndarray) -> bool:
    """Whether the camera stored no values below black (some do): nothing negative, and black
    itself far more common than noise would make it."""
    return bool(packed.min() >= 0) and float(np.mean(packed == 0)) > BLACK_CLIP_SHARE


def _patch_sum(blocks: np.ndarray) -> np.ndarray:
    """Sums over PATCH x PATCH blocks: (hb, wb, C) -> (hb / PATCH, wb / PATCH, C)."""
    hb, wb, ch = blocks.shape
    return blocks.reshape(hb // PATCH, PATCH, wb // PATCH, PATCH, ch).sum(axis=(1, 3))


def _first_fit(mean: np.ndarray, d2: np.ndarray, usable: np.ndarray) -> tuple[float, float]:
    """A fit that texture cannot inflate much: low quantiles of patch-mean D^2 per level bin."""
    patch_mean = _patch_sum(mean) / PATCH**2
    patch_d2 = _patch_sum(d2) / PATCH**2
    ok = (_patch_sum(usable.astype(np.float32)) == PATCH**2).ravel()
    level, var = patch_mean.ravel()[ok], patch_d2.ravel()[ok]
    if level.size < 2 * MIN_PER_BIN // PATCH:
        return 0.0, 0.0
    order = np.argsort(level, kind="stable")
    level, var = level[order], var[order]
    bins = max(1, min(BINS, level.size // (MIN_PER_BIN // PATCH)))
    per = level.size // bins
    used = slice(level.size - bins * per, level.size)
    levels = level[used].reshape(bins, per).mean(axis=1)
    variances = np.quantile(var[used].reshape(bins, per), QUANTILE, axis=1) / CHI2_16_QUANTILE
    weight = np.full(bins, float(per)) / np.maximum(variances, 1e-20) ** 2
    return _fit_line(levels.astype(float), variances.astype(float), weight)


def _flat_patches(
    mean: np.ndarray, grad2: np.ndarray, gain: float, read2: float
) -> np.ndarray:
    """Which patches look flat under the noise ``gain * m + read2``: (hp, wp, C) bool.

    A flat patch's gradient energy over its expected variance is a chi-square with
    ``2 * PATCH**2`` degrees of freedom; texture pushes it above.
    """
    expected = _patch_sum(np.maximum(gain * np.maximum(mean, 0.0) + read2, 1e-20))
    score = _patch_sum(grad2) / (2 * expected)
    flat = score < PATCH_LIMIT
    if np.count_nonzero(flat) * PATCH * PATCH < MIN_BLOCKS:
        # Texture everywhere: keep the flattest patches there are.
        flat = score <= np.quantile(score, FALLBACK_QUANTILE)
    return flat


def _binned_variances(
    mean: np.ndarray, d2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin mean level, robust variance, blocks) of up to BINS equal-count bins.

    Args:
        mean, d2: block means and squared diagonal details, sorted by mean.
    """
    n = mean.size
    bins = max(1, min(BINS, n // MIN_PER_BIN))
    per = n // bins
    used = slice(n - bins * per, n)  # the few left over are the darkest blocks
    levels = mean[used].reshape(bins, per).mean(axis=1)
    variances = np.median(d2[used].reshape(bins, per), axis=1) / CHI2_MEDIAN
    return levels.astype(float), variances.astype(float), np.full(bins, float(per))


def _fit_line(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``y = g x + r2`` with ``g >= 0`` and ``r2 >= 0``.

    Bins without variance (photosites clipped at black, all equal) carry no information on the
    noise and are left out; so is anything not finite.
    """
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(weight) & (y > 0) & (weight > 0)
    if not np.any(ok):
        return 0.0, 0.0
    x, y, weight = x[ok], y[ok], weight[ok] / np.max(weight[ok])
    if x.size >= 2 and np.ptp(x) > 0:
        sw = np.sqrt(weight)
        design = np.stack([x, np.ones_like(x)], axis=1) * sw[:, None]
        (g, r2), *_ = np.linalg.lstsq(design, y * sw, rcond=None)
        if g >= 0 and r2 >= 0:
            return float(g), float(r2)
    # One of the two is not supported by the data: fit the other alone.
    g_only = max(float(np.sum(weight * x * y) / max(np.sum(weight * x * x), 1e-30)), 0.0)
    r2_only = max(float(np.sum(weight * y) / np.sum(weight)), 0.0)
    err_g = float(np.sum(weight * (y - g_only * x) ** 2))
    err_r = float(np.sum(weight * (y - r2_only) ** 2))
    return (g_only, 0.0) if err_g < err_r else (0.0, r2_only)


def estimate_noise(packed: np.ndarray, *, iterations: int = 4) -> NoiseEstimate:
    """Fit ``variance = gain * mean + read**2`` to a frame's own noise.

    Args:
        packed: (h, w, C) float32 packed mosaic, normalised (0 black, 1 white), not amplified
            (a band of rows works as well as the whole frame).
        iterations: rounds of texture rejection against the previous fit.

    Returns:
        The estimate; ``blocks == 0`` when the frame has too few usable blocks.
    """
    mean, d2, grad2, usable = _block_details(packed)
    if np.count_nonzero(usable) < MIN_BLOCKS:
        return NoiseEstimate(0.0, 0.0, 0)
    # Blocks are binned by the mean of their patch: a block's own mean carries its noise and any
    # row offset, and binning by a noisy level would bias the line (regression dilution).
    level = np.repeat(np.repeat(_patch_sum(mean) / PATCH**2, PATCH, axis=0), PATCH, axis=1)
    order = np.argsort(level, axis=None, kind="stable")  # sorted once, filtered every round
    mean_sorted, d2_sorted = level.ravel()[order], d2.ravel()[order]
    gain, read2 = _first_fit(mean, d2, usable)
    keep = usable
    for _ in range(iterations):
        flat = _flat_patches(mean, grad2, gain, read2)
        keep = usable & np.repeat(np.repeat(flat, PATCH, axis=0), PATCH, axis=1)
        kept = keep.ravel()[order]
        if np.count_nonzero(kept) < MIN_PER_BIN:
            break
        levels, variances, counts = _binned_variances(mean_sorted[kept], d2_sorted[kept])
        # A variance estimate from n samples has a spread proportional to var / sqrt(n).
        weight = counts / np.maximum(variances, 1e-20) ** 2
        gain, read2 = _fit_line(levels, variances, weight)
    return NoiseEstimate(gain, math.sqrt(read2), int(np.count_nonzero(keep)))
