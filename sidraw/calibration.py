"""Published noise calibrations of real cameras: a check on a frame's own noise fit.

ELD (Wei et al., CVPR 2020; MIT licence) calibrated five cameras: the system gain K (DN per
electron) over their ISO range, and the read and row noise as log-linear functions of K. Where a
file's EXIF names one of them, the read noise of the frame's fit (:mod:`sidraw.noise_estimate`)
is checked against what the calibration expects at the fitted gain, and replaced by it when the
two disagree by more than the calibration's own spread allows (a fit on a frame with little flat
area, or with so much signal that read noise is hidden). The gain stays the fit's: the
calibrations do not map ISO to K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .noise_estimate import NoiseEstimate

#: Disagreements beyond this many standard deviations of the calibration's read-noise fit are
#: replaced.
MAX_Z = 3.0


@dataclass(frozen=True)
class Calibration:
    """One camera's calibration, in DN of its raw files.

    Attributes:
        camera: the camera's name.
        models: lower-case EXIF model names (any of them matches).
        k_range: calibrated gain range, DN per electron.
        read: ``(slope, bias, sigma)`` of ``ln sigma_read = slope * ln K + bias`` (residual std
            ``sigma``), the Gaussian read noise's standard deviation in DN.
        row: the same for the row noise.
    """

    camera: str
    models: tuple[str, ...]
    k_range: tuple[float, float]
    read: tuple[float, float, float]
    row: tuple[float, float, float]

    def expected_read(self, k: float) -> float:
        """Median read noise (DN) at gain ``k``."""
        slope, bias, _ = self.read
        return math.exp(slope * math.log(k) + bias)


# ELD's camera_params/release (Gaussian read noise "g_scale", row noise "R_scale").
CALIBRATIONS = (
    Calibration("Sony A7S II", ("ilce-7sm2",), (0.0939, 6.011),
                (0.5407, 1.2182, 0.2675), (0.5275, -0.5917, 0.2943)),
    Calibration("Nikon D850", ("nikon d850",), (0.415, 26.563),
                (0.5635, 0.7994, 0.2141), (0.4483, -1.7977, 0.2322)),
    Calibration("Canon EOS 5D Mark IV", ("canon eos 5d mark iv",), (0.2182, 13.964),
                (0.6771, 1.5122, 0.2464), (0.4713, -0.8079, 0.2436)),
    Calibration("Canon EOS 70D", ("canon eos 70d",), (0.4075, 26.08),
                (0.5681, 1.9983, 0.2487), (0.7292, -0.9371, 0.2502)),
    Calibration("Canon EOS 700D", ("canon eos 700d", "canon eos rebel t5i", "canon eos kiss x7i"),
                (0.4476, 28.648), (0.6525, 2.0799, 0.2578), (0.6221, -0.7756, 0.2485)),
)


def calibration_for(model: str | None) -> Calibration | None:
    """The calibration of the camera an EXIF ``Model`` names, if sidraw has one."""
    name = (model or "").strip().lower()
    for cal in CALIBRATIONS:
        if name in cal.models:
            return cal
    return None


@dataclass(frozen=True)
class CheckedNoise:
    """A noise fit after the calibration check.

    Attributes:
        estimate: the noise to use (the fit, or the fit with the calibration's read noise).
        note: what the check found, for ``sidraw info`` and ``--json``.
    """

    estimate: NoiseEstimate
    note: str


def check_estimate(
    estimate: NoiseEstimate, calibration: Calibration, white_range: float
) -> CheckedNoise:
    """Check a fit against a camera's calibration.

    Args:
        estimate: the frame's fit (normalised units).
        calibration: the camera's calibration.
        white_range: ``white - black`` of the file, DN.
    """
    k, read = estimate.in_dn(white_range)
    lo, hi = calibration.k_range
    if not lo / 2 <= k <= hi * 2:
        return CheckedNoise(
            estimate, f"{calibration.camera} (ELD): fitted gain {k:.3g} DN/e- is outside the "
            f"calibrated {lo:.3g}..{hi:.3g}; fit kept"
        )
    expected = calibration.expected_read(k)
    z = math.log(max(read, 1e-6) / expected) / calibration.read[2]
    if abs(z) <= MAX_Z:
        return CheckedNoise(
            estimate, f"{calibration.camera} (ELD): read noise {read:.3g} DN agrees with the "
            f"calibration's {expected:.3g} DN at this gain"
        )
    replaced = NoiseEstimate(estimate.gain, expected / white_range, estimate.blocks)
    return CheckedNoise(
        replaced, f"{calibration.camera} (ELD): fitted read noise {read:.3g} DN replaced by the "
        f"calibration's {expected:.3g} DN at {k:.3g} DN/e-"
    )
