"""Physics-based low-light raw noise (ELD: Wei et al., CVPR 2020).

A clean exposure ``x`` (normalised, 0 at black, 1 at white) is darkened by the ratio ``r``; the
sensor then records, in DN above black,

    y = K * Poisson(x * (white - black) / (r * K)) + read + row + quantisation,

with system gain ``K`` (DN per electron), read noise (Gaussian or Tukey-lambda, std
``sigma_read`` DN), one Gaussian offset per sensor row (std ``sigma_row`` DN) and rounding to
integer DN; black is added and the result clipped to ``[0, white]`` (or at black, for cameras that
store no values below it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

# ELD's calibration of the Sony A7S II (14-bit, white - black = 16383 - 512 DN).
A7S2_LN_K = (math.log(0.0939), math.log(6.011))
# ln sigma_read ~ N(slope * ln K + bias, std^2): ELD's fit of the Gaussian read noise's standard
# deviation (``g_scale``). Until sidraw 0.1 this was ELD's Tukey-lambda *scale* (``G_scale``:
# 0.4621, 0.5657, 0.2634), read as a standard deviation; a Tukey-lambda of lambda ~ 0 has a std
# of about 1.8 times its scale, so read noise was about half of the camera's.
A7S2_READ = (0.5407, 1.2182, 0.2675)
A7S2_ROW = (0.5275, -0.5917, 0.2943)  # ln sigma_row ~ N(slope * ln K + bias, std^2)

# Derived from darktable's noise profiles (data/noise/darktable_noiseprofiles.json): all 9599
# per-channel fits var = a * x + b with ISO >= 1600, a > 0 and b > 0 (366 cameras), converted to a
# 14-bit sensor with K = a * 15871 DN/e- and sigma_read = sqrt(b) * 15871 DN. ln K spans -1.34..3.77
# (1st..99th percentile); we keep -1.34..2.50 (K 0.26..12.2) because brighter-than-that gains leave
# almost no photons at SID ratios. A least-squares line gives
# ln sigma_read = 0.5456 ln K + 1.9896 with residual std 0.6591 (in normalised units:
# ln b = 1.0912 ln a - 4.8108, std 1.318). darktable's b also holds banding and pattern noise, so
# its read noise is larger than ELD's for the same K: together the two cover a wide range.
DARKTABLE_LN_K = (-1.34, 2.50)
DARKTABLE_READ = (0.5456, 1.9896, 0.6591)

RANGE_14BIT = 16383 - 512

# Share of A7S2 draws in "mixed" sampling; the rest use the darktable-derived ranges. The shipped
# Bayer model trained its first 2197 steps at 0.6, then 0.75: the noisier darktable draws dominated
# the L1 loss and the network smoothed away detail at moderate noise.
A7S2_PROBABILITY = 0.75


@dataclass(frozen=True)
class NoiseParams:
    """Noise of one simulated capture, in DN of a sensor with the given black and white.

    Attributes:
        k: system gain, DN per photoelectron.
        sigma_read: read-noise standard deviation, DN.
        read_lambda: Tukey-lambda shape of the read noise; None means Gaussian.
        sigma_row: standard deviation of the per-row offset, DN.
        black, white: black and white levels, DN.
        clip_black: clip at black (no negative values stored), else at 0 DN.
    """

    k: float
    sigma_read: float
    read_lambda: float | None
    sigma_row: float
    black: int = 512
    white: int = 16383
    clip_black: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def range(self) -> float:
        return float(self.white - self.black)


def a7s2_params(k: float, rng: np.random.Generator | None = None) -> NoiseParams:
    """A7S II noise at gain ``k`` (DN/e-, 14-bit): median read/row noise, or drawn if ``rng``."""
    lk = math.log(k)
    z1, z2 = (0.0, 0.0) if rng is None else (rng.standard_normal(), rng.standard_normal())
    read = math.exp(A7S2_READ[0] * lk + A7S2_READ[1] + A7S2_READ[2] * z1)
    row = math.exp(A7S2_ROW[0] * lk + A7S2_ROW[1] + A7S2_ROW[2] * z2)
    return NoiseParams(k=k, sigma_read=read, read_lambda=None, sigma_row=row)


def sample_params(rng: np.random.Generator, source: str = "mixed") -> NoiseParams:
    """Draw random noise parameters.

    Args:
        source: ``"a7s2"`` (ELD calibration), ``"darktable"`` (other cameras, see the constants
            above) or ``"mixed"`` (A7S2 with probability ``A7S2_PROBABILITY``, plus random bit
            depth and black clipping).
    """
    if source == "mixed":
        source = "a7s2" if rng.random() < A7S2_PROBABILITY else "darktable"
        mixed = True
    else:
        mixed = False
    if source == "a7s2":
        lk = rng.uniform(*A7S2_LN_K)
        read_fit = A7S2_READ
    else:
        lk = rng.uniform(*DARKTABLE_LN_K)
        read_fit = DARKTABLE_READ
    z = float(np.clip(rng.standard_normal(), -2.5, 2.5))
    sigma_read = math.exp(read_fit[0] * lk + read_fit[1] + read_fit[2] * z)
    zr = float(np.clip(rng.standard_normal(), -2.5, 2.5))
    sigma_row = math.exp(A7S2_ROW[0] * lk + A7S2_ROW[1] + A7S2_ROW[2] * zr)
    lam = float(rng.uniform(-0.3, 0.1)) if rng.random() < 0.5 else None
    black, white, scale = 512, 16383, 1.0
    clip_black = False
    if mixed:
        if rng.random() < 0.2:
            # A 12-bit sensor with the same noise relative to its range: coarser quantisation.
            black, white = 256, 4095
            scale = (white - black) / RANGE_14BIT
        clip_black = rng.random() < 0.1
    return NoiseParams(
        k=math.exp(lk) * scale,
        sigma_read=sigma_read * scale,
        read_lambda=lam,
        sigma_row=sigma_row * scale,
        black=black,
        white=white,
        clip_black=clip_black,
    )


# Share of training pairs at ratio 1 (a clean long exposure that must come back unchanged).
RATIO_ONE_PROBABILITY = 0.1


def sample_ratio(rng: np.random.Generator) -> float:
    """Amplification ratio: exactly 1 with probability 0.1, log-uniform 50..300 with
    probability 0.7, else log-uniform 1..50."""
    u = rng.random()
    if u < RATIO_ONE_PROBABILITY:
        return 1.0
    if u < RATIO_ONE_PROBABILITY + 0.7:
        return float(math.exp(rng.uniform(math.log(50), math.log(300))))
    return float(math.exp(rng.uniform(0.0, math.log(50))))


def tukey_lambda(u: np.ndarray, lam: float) -> np.ndarray:
    """Tukey-lambda quantile function of uniforms ``u`` in (0, 1) (standard, unit scale)."""
    if abs(lam) < 1e-4:
        return np.log(u / (1.0 - u))
    return (np.power(u, lam) - np.power(1.0 - u, lam)) / lam


def tukey_lambda_std(lam: float) -> float:
    """Standard deviation of the standard Tukey-lambda distribution (finite for lam > -0.5)."""
    return float(stats.tukeylambda.std(lam))


def read_noise(shape: tuple[int, ...], params: NoiseParams, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean read noise of std ``params.sigma_read`` DN, float32 of ``shape``."""
    if params.read_lambda is None:
        return (rng.standard_normal(shape, dtype=np.float32) * params.sigma_read).astype(np.float32)
    # Uniforms kept away from 0 and 1: the heavy tails stay finite in float32.
    u = rng.uniform(1e-6, 1.0 - 1e-6, size=shape)
    lam = params.read_lambda
    scale = params.sigma_read / tukey_lambda_std(lam)
    return (tukey_lambda(u, lam) * scale).astype(np.float32)


def add_noise(
    clean: np.ndarray, ratio: float, params: NoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Simulate the dark raw capture of a clean mosaic.

    Args:
        clean: (H, W) float32 clean mosaic, normalised (0 black, 1 white) at the bright exposure.
        ratio: exposure ratio (>= 1): the capture receives ``1 / ratio`` of the light.
        params: noise parameters.

    Returns:
        (H, W) uint16 raw DN, black level included, clipped to ``[0 or black, white]``.
    """
    signal = np.maximum(clean, 0.0) * (params.range / ratio)  # DN above black
    electrons = rng.poisson(signal / params.k).astype(np.float32)
    y = electrons * np.float32(params.k)
    y += read_noise(clean.shape, params, rng)
    if params.sigma_row > 0:
        y += rng.standard_normal((clean.shape[0], 1), dtype=np.float32) * params.sigma_row
    y += params.black
    np.rint(y, out=y)  # integer DN: uniform quantisation noise of one DN step
    np.clip(y, params.black if params.clip_black else 0, params.white, out=y)
    return y.astype(np.uint16)


def expected_variance(clean_dn: float, params: NoiseParams) -> float:
    """Variance (DN^2) of a photosite with mean signal ``clean_dn`` above black, before clipping."""
    return params.k * clean_dn + params.sigma_read**2 + params.sigma_row**2 + 1.0 / 12.0
