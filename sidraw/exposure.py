"""Choosing the amplification ratio: how much brighter the output is than the captured raw.

Three ways, all clamped to ``[1, max_ratio]``:

* ``fixed``: the ratio the user gave (``--ratio N``).
* ``target``: ``ratio = target_exposure / exposure_time`` (``--target-exposure SECONDS``), the
  meaning of the ratio in Chen et al. 2018: "as if the shutter had stayed open this long".
* ``auto`` (default): from the data. The brightness statistic is the mean of the black-subtracted,
  normalised photosites (0 at black, 1 at white) after discarding the brightest 1 %, so that a few
  lamps or the moon do not darken the result. The ratio brings that statistic to
  :data:`AUTO_TARGET_MEAN` (0.10 of the white level, about where a camera's metering puts an average
  scene in the raw file, three stops below clipping):
  ``ratio = AUTO_TARGET_MEAN / trimmed_mean``.
  The EXIF exposure is used as a cross-check: ``ratio * exposure_time`` is the equivalent exposure
  time, shown by ``sidraw info``; an equivalent exposure beyond :data:`LONG_EXPOSURE_WARNING`
  seconds or a frame already brighter than the target is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RatioMode = Literal["auto", "fixed", "target"]

#: Trimmed mean (0..1 of white) that ``auto`` brings the frame to.
AUTO_TARGET_MEAN = 0.10
#: Fraction of the brightest photosites ignored by the ``auto`` statistic.
AUTO_TRIM = 0.01
#: Default upper clamp of the ratio (the largest ratio of the SID data set).
DEFAULT_MAX_RATIO = 300.0
#: Equivalent exposure (seconds) above which ``auto`` notes that the data and EXIF disagree.
LONG_EXPOSURE_WARNING = 120.0
# Below this trimmed mean the frame is taken as black and gets the largest ratio.
_FLOOR = 1e-6


@dataclass(frozen=True)
class RatioDecision:
    """The chosen ratio and how it was reached.

    Attributes:
        ratio: the amplification applied, already clamped.
        mode: ``"auto"``, ``"fixed"`` or ``"target"``.
        unclamped: the ratio before clamping to ``[1, max_ratio]``.
        statistic: the trimmed mean of the frame (0..1 of white), when measured.
        exposure_time: the EXIF exposure time in seconds, when known.
        notes: human-readable remarks (clamping, EXIF cross-check).
    """

    ratio: float
    mode: RatioMode
    unclamped: float
    statistic: float | None = None
    exposure_time: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def equivalent_exposure(self) -> float | None:
        """Seconds the output looks exposed for (``ratio * exposure_time``), when known."""
        if self.exposure_time is None:
            return None
        return self.ratio * self.exposure_time

    def describe(self) -> str:
        """One line, e.g. ``x152.3 (auto: trimmed mean 0.00066 -> 0.10)``."""
        if self.mode == "fixed":
            how = "given"
        elif self.mode == "target":
            how = f"target exposure {self.ratio * (self.exposure_time or 0):g} s"
        else:
            how = f"auto: trimmed mean {self.statistic:.3g} -> {AUTO_TARGET_MEAN:g}"
        text = f"x{self.ratio:.1f} ({how})"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


def brightness_statistic(packed: np.ndarray, trim: float = AUTO_TRIM) -> float:
    """Trimmed mean of normalised photosites, ignoring the brightest ``trim`` fraction.

    Args:
        packed: (h, w, C) float32, 0 at black and 1 at white (negatives allowed).
        trim: fraction of the brightest values to discard.

    Returns:
        The mean of the remaining values (0..1 of white).
    """
    flat = packed.reshape(-1)
    # A strided sample keeps this O(1 MB) on any sensor; the statistic is smooth in the sample.
    step = max(1, flat.size // 2_000_000)
    sample = flat[::step].astype(np.float32, copy=False)
    if sample.size == 0:
        return 0.0
    cut = float(np.quantile(sample, 1.0 - trim)) if trim > 0 else float(sample.max())
    kept = sample[sample <= cut]
    return float(kept.mean()) if kept.size else 0.0


def _clamp(value: float, max_ratio: float) -> tuple[float, tuple[str, ...]]:
    if value > max_ratio:
        return max_ratio, (f"clamped from x{value:.1f} to the maximum x{max_ratio:g}",)
    if value < 1.0:
        return 1.0, (f"clamped from x{value:.2f}: the frame is not dark",)
    return value, ()


def choose_ratio(
    packed: np.ndarray | None,
    *,
    ratio: float | None = None,
    target_exposure: float | None = None,
    exposure_time: float | None = None,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> RatioDecision:
    """Choose the amplification ratio of a frame.

    Args:
        packed: (h, w, C) float32 normalised photosites (needed for ``auto`` only).
        ratio: a fixed ratio, or None.
        target_exposure: seconds the output should look exposed for, or None.
        exposure_time: EXIF exposure time in seconds, or None when unknown.
        max_ratio: upper clamp (>= 1).

    Raises:
        ValueError: both ``ratio`` and ``target_exposure`` given, non-positive values, or a target
            exposure without an EXIF exposure time.
    """
    if max_ratio < 1:
        raise ValueError("max ratio must be at least 1")
    if ratio is not None and target_exposure is not None:
        raise ValueError("give either a ratio or a target exposure, not both")
    if ratio is not None:
        if not ratio > 0:
            raise ValueError("ratio must be positive")
        value, notes = _clamp(float(ratio), max_ratio)
        return RatioDecision(value, "fixed", float(ratio), None, exposure_time, notes)
    if target_exposure is not None:
        if not target_exposure > 0:
            raise ValueError("target exposure must be positive")
        if exposure_time is None:
            raise ValueError("the file has no EXIF exposure time, so --target-exposure cannot work")
        raw_ratio = target_exposure / exposure_time
        value, notes = _clamp(raw_ratio, max_ratio)
        return RatioDecision(value, "target", raw_ratio, None, exposure_time, notes)
    if packed is None:
        raise ValueError("auto ratio needs the image data")
    stat = brightness_statistic(packed)
    raw_ratio = AUTO_TARGET_MEAN / max(stat, _FLOOR)
    value, notes = _clamp(raw_ratio, max_ratio)
    if exposure_time is not None and value * exposure_time > LONG_EXPOSURE_WARNING:
        notes = (
            *notes,
            f"equivalent exposure {value * exposure_time:.0f} s is unusually long: check the ratio",
        )
    return RatioDecision(value, "auto", raw_ratio, stat, exposure_time, notes)


def amplify(packed: np.ndarray, ratio: float, out: np.ndarray | None = None) -> np.ndarray:
    """Network input from normalised photosites: ``clip(packed * ratio, -1, 1)``.

    Args:
        packed: (h, w, C) float32, 0 at black and 1 at white.
        ratio: amplification.
        out: optional output array (may be ``packed`` itself).

    Returns:
        (h, w, C) float32 in ``[-1, 1]``.
    """
    out = np.multiply(packed, np.float32(ratio), out=out)
    return np.clip(out, -1.0, 1.0, out=out)
