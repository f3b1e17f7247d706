"""The camera-calibration check of a frame's noise fit (sidraw.calibration)."""

from __future__ import annotations

import pytest

from sidraw.calibration import CALIBRATIONS, calibration_for, check_estimate
from sidraw.noise_estimate import NoiseEstimate

RANGE = 16383 - 512


def _fit(k_dn: float, read_dn: float) -> NoiseEstimate:
    return NoiseEstimate(k_dn / RANGE, read_dn / RANGE, 1000)


def test_exif_models_find_their_calibration() -> None:
    assert calibration_for("ILCE-7SM2").camera == "Sony A7S II"
    assert calibration_for("Canon EOS Rebel T5i").camera == "Canon EOS 700D"
    assert calibration_for("NIKON D850 ").camera == "Nikon D850"
    assert calibration_for("ILCE-7SM3") is None and calibration_for(None) is None
    assert len({c.camera for c in CALIBRATIONS}) == 5


def test_a_consistent_fit_is_kept() -> None:
    cal = calibration_for("ILCE-7SM2")
    fit = _fit(1.0, cal.expected_read(1.0) * 1.2)
    checked = check_estimate(fit, cal, RANGE)
    assert checked.estimate == fit and "agrees" in checked.note


@pytest.mark.parametrize("factor", [0.0, 0.25, 4.0])
def test_an_implausible_read_noise_is_replaced(factor: float) -> None:
    cal = calibration_for("ILCE-7SM2")
    fit = _fit(3.0, cal.expected_read(3.0) * factor)
    checked = check_estimate(fit, cal, RANGE)
    k, read = checked.estimate.in_dn(RANGE)
    assert k == pytest.approx(3.0)
    assert read == pytest.approx(cal.expected_read(3.0))
    assert "replaced" in checked.note


def test_a_gain_outside_the_calibration_keeps_the_fit() -> None:
    cal = calibration_for("ILCE-7SM2")
    fit = _fit(40.0, 0.0)
    checked = check_estimate(fit, cal, RANGE)
    assert checked.estimate == fit and "outside" in checked.note


def test_info_and_convert_report_the_fitted_noise(make_dng, tmp_path) -> None:
    """``sidraw info`` shows the fit of a generated frame of known noise, checked against the
    A7S2 calibration its EXIF names."""
    from sidraw.inspect import describe_file
    from sidraw.sample import SensorNoise

    path = make_dng("noisy.dng", width=1200, height=800)
    noise = describe_file(path)["noise"]
    sensor = SensorNoise()
    assert noise["k_dn_per_electron"] == pytest.approx(sensor.k, rel=0.3)
    assert noise["read_dn"] == pytest.approx(sensor.read_sigma, rel=0.3)
    assert noise["calibration"].startswith("Sony A7S II (ELD)")
