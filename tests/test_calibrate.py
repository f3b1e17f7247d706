"""``sidraw calibrate``: gain, read and row noise recovered from synthesised dark and flats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sidraw.calibrate import (
    CalibrationError,
    calibrate,
    load_profile,
    profile_estimate,
    profile_noise_params,
)
from sidraw.cli import app
from sidraw.dng import DngMetadata, write_dng
from sidraw.inspect import describe_file
from sidraw.sample import pattern_letters

H, W = 384, 512
BLACK, WHITE = 512, 16383
# ISO -> (K DN/e-, read noise DN, row noise DN)
TRUTH = {800: (2.0, 6.0, 1.5), 3200: (8.0, 14.0, 3.0)}


def _frame(path: Path, signal: np.ndarray | float, iso: int, seed: int) -> None:
    """A frame of ``signal`` DN above black with Poisson shot noise at gain K, Gaussian read and
    row noise, a fixed hot-pixel pattern and a 1 % fixed sensitivity pattern (both cancel in
    differences), rounded to integer DN."""
    k, read, row = TRUTH[iso]
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(42)
    prnu = 1 + 0.01 * fixed.standard_normal((H, W))
    mean = np.broadcast_to(np.asarray(signal, np.float64), (H, W)) * prnu
    y = rng.poisson(mean / k) * k + rng.normal(0, read, (H, W)) + rng.normal(0, row, (H, 1))
    hot = fixed.random((H, W)) < 1e-3
    y[hot] += 800
    raw = np.clip(np.rint(y + BLACK), 0, WHITE).astype(np.uint16)
    meta = DngMetadata(pattern=pattern_letters("RGGB"), black=BLACK, white=WHITE,
                       model="ILCE-7SM2", iso=iso, exposure_time=1 / 100)
    write_dng(path, raw, meta)


def _shoot(folder: Path) -> tuple[list[Path], list[Path]]:
    yy, xx = np.mgrid[0:H, 0:W]
    # An uneven flat (vignetting) with colour: red and blue photosites see less light.
    vignette = 1 - 0.4 * (((yy - H / 2) / H) ** 2 + ((xx - W / 2) / W) ** 2)
    colour = np.where((yy % 2 == 0) & (xx % 2 == 0), 0.5, np.where((yy % 2) & (xx % 2), 0.6, 1.0))
    darks, flats = [], []
    for iso in TRUTH:
        for i in range(2):
            darks.append(folder / f"dark_{iso}_{i}.dng")
            _frame(darks[-1], 0.0, iso, seed=iso + i)
        for i in range(2):
            flats.append(folder / f"flat_{iso}_{i}.dng")
            _frame(flats[-1], 6000 * vignette * colour, iso, seed=10 * iso + i)
    return darks, flats


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    return _shoot(tmp_path_factory.mktemp("calib"))


def test_recovers_gain_read_and_row_noise(frames) -> None:
    darks, flats = frames
    profile = calibrate(darks, flats)
    assert profile.camera == "Sony ILCE-7SM2" and profile.white == WHITE
    for iso, (k, read, row) in TRUTH.items():
        got = profile.isos[str(iso)]
        # Documented accuracy (sidraw.calibrate): K and read noise within 3 %, row within 15 %.
        assert got.k_dn_per_electron == pytest.approx(k, rel=0.03)
        # The measured read noise includes the rounding to integer DN (1/12 DN^2).
        assert got.read_dn == pytest.approx(np.sqrt(read**2 + 1 / 12), rel=0.03)
        assert got.row_dn == pytest.approx(row, rel=0.15)
        assert abs(got.black_offset_dn) < 0.5
        assert (got.dark_frames, got.flat_pairs) == (2, 1)


def test_gain_without_darks_and_read_from_one_dark(frames) -> None:
    darks, flats = frames
    iso800 = [f for f in flats if "_800_" in f.name]
    profile = calibrate([], iso800)
    assert profile.isos["800"].k_dn_per_electron == pytest.approx(2.0, rel=0.05)
    assert profile.isos["800"].read_dn is None
    one = calibrate([darks[0]], []).isos["800"]
    assert one.k_dn_per_electron is None
    assert one.read_dn == pytest.approx(6.0, rel=0.05)  # hot pixels are rejected as outliers


def test_errors(frames, tmp_path: Path) -> None:
    _, flats = frames
    with pytest.raises(CalibrationError, match="flats come in pairs"):
        calibrate([], flats[:1])
    with pytest.raises(CalibrationError, match="give dark frames"):
        calibrate([], [])


def test_cli_profile_and_info(frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    darks, flats = frames
    monkeypatch.setenv("SIDRAW_PROFILES", str(tmp_path / "profiles"))
    folder = darks[0].parent
    res = CliRunner().invoke(app, ["calibrate", "--dark", str(darks[0]), "--dark",
                                   str(darks[1]), "--dark", str(darks[2]), "--dark",
                                   str(darks[3]), "--flat", *_flag(flats)])
    assert res.exit_code == 0, res.output
    path = tmp_path / "profiles" / "sony_ilce-7sm2.json"
    profile = load_profile(path)
    assert set(profile.isos) == {"800", "3200"}
    assert "ISO 800" in res.output and "K 2" in res.output
    # info shows the profile for a file of that camera at a measured ISO, and says when none fits.
    report = describe_file(folder / "flat_800_0.dng")
    assert report["profile"]["iso"] == "800"
    assert report["profile"]["noise"]["k_dn_per_electron"] == pytest.approx(2.0, rel=0.03)
    res = CliRunner().invoke(app, ["info", str(folder / "flat_3200_1.dng")])
    assert "profile" in res.output and "ISO 3200" in res.output
    # The profile as the models' and the training noise model's input.
    est = profile_estimate(profile.isos["800"], WHITE - BLACK)
    assert est.in_dn(WHITE - BLACK)[0] == pytest.approx(2.0, rel=0.03)
    params = profile_noise_params(profile, profile.isos["3200"])
    assert params["k"] == pytest.approx(8.0, rel=0.03) and params["black"] == BLACK
    json.dumps(profile.to_dict())


def _flag(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        out[len(out):] = [str(p)] if not out else ["--flat", str(p)]
    return out


def test_convert_prefers_the_camera_profile(
    frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of a profiled camera at a measured ISO gets the profile's noise, not its own fit."""
    from sidraw.pipeline import estimate_file_noise
    from sidraw.raw import open_raw

    darks, flats = frames
    monkeypatch.setenv("SIDRAW_PROFILES", str(tmp_path / "profiles"))
    res = CliRunner().invoke(app, ["calibrate", *[a for d in darks for a in ("--dark", str(d))],
                                   "--flat", *_flag(flats)])
    assert res.exit_code == 0, res.output
    with open_raw(darks[0].parent / "flat_800_0.dng") as raw:
        noise = estimate_file_noise(raw)
    assert noise.note.startswith("camera profile of") and "ISO 800" in noise.note
    assert noise.estimate.in_dn(WHITE - BLACK)[0] == pytest.approx(2.0, rel=0.03)
    monkeypatch.setenv("SIDRAW_PROFILES", str(tmp_path / "none"))
    with open_raw(darks[0].parent / "flat_800_0.dng") as raw:
        assert not estimate_file_noise(raw).note.startswith("camera profile")
