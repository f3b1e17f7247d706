"""`sidraw convert` and `sidraw info` end to end on DNG files written by the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import sidraw
from sidraw import __version__
from sidraw.cli import app

runner = CliRunner()


def run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR", "xtrans"])
def test_convert_every_cfa(tmp_path: Path, models_dir: Path, make_dng, pattern: str) -> None:
    src = make_dng(f"dark_{pattern}.ARW" if pattern != "xtrans" else "dark.RAF", pattern=pattern)
    out = tmp_path / "out"
    res = run("convert", src, "--out", out, "--model", models_dir, "--ratio", "100")
    assert res.exit_code == 0, res.output
    assert "x100.0" in res.output  # the ratio is reported for every file
    img = tifffile.imread(out / f"{src.stem}.tif")
    assert img.dtype == np.uint16 and img.shape == (600, 900, 3)
    assert img.max() > 0


def test_png_output_and_linear(tmp_path: Path, models_dir: Path, make_dng) -> None:
    import imagecodecs

    src = make_dng("a.dng")
    res = run("convert", src, "-o", tmp_path, "--model", models_dir, "-f", "png", "--linear")
    assert res.exit_code == 0, res.output
    img = imagecodecs.png_decode((tmp_path / "a.png").read_bytes())
    assert img.dtype == np.uint16 and img.shape == (600, 900, 3)


def test_batch_goes_on_after_a_bad_file(tmp_path: Path, models_dir: Path, make_dng) -> None:
    folder = tmp_path / "in"
    make_dng("good1.dng", folder=folder)
    (folder / "broken.arw").write_bytes(b"not a raw file at all" * 100)
    make_dng("good2.DNG", folder=folder)
    (folder / "notes.txt").write_text("ignored: not a raw extension")
    res = run("convert", folder, "--out", tmp_path / "out", "--model", models_dir)
    assert res.exit_code == 1
    assert "broken.arw" in res.output
    assert (tmp_path / "out" / "good1.tif").exists() and (tmp_path / "out" / "good2.tif").exists()
    assert not (tmp_path / "out" / "broken.tif").exists()
    assert "2 converted, 0 skipped, 1 failed" in res.output


def test_recursive_keeps_layout_and_existing_outputs_are_kept(
    tmp_path: Path, models_dir: Path, make_dng
) -> None:
    root = tmp_path / "shoot"
    make_dng("a.dng", folder=root / "day1")
    make_dng("b.dng", folder=root / "day2" / "late")
    out = tmp_path / "out"
    assert run("convert", root, "-r", "--out", out, "--model", models_dir).exit_code == 0
    a, b = out / "day1" / "a.tif", out / "day2" / "late" / "b.tif"
    assert a.exists() and b.exists()
    a.write_bytes(b"keep me")
    res = run("convert", root, "-r", "--out", out, "--model", models_dir)
    assert res.exit_code == 0 and "skipped" in res.output
    assert a.read_bytes() == b"keep me"
    res = run("convert", root, "-r", "--out", out, "--model", models_dir, "--overwrite")
    assert res.exit_code == 0 and a.read_bytes() != b"keep me"
    assert not list(out.rglob(".sidraw-*"))  # no temporaries left


def test_without_folder_input_not_recursive(tmp_path: Path, models_dir: Path, make_dng) -> None:
    make_dng("deep.dng", folder=tmp_path / "in" / "sub")
    res = run("convert", tmp_path / "in", "--out", tmp_path / "o", "--model", models_dir)
    assert res.exit_code == 1 and "no raw files" in res.output


def test_globs_and_same_stem_inputs(tmp_path: Path, models_dir: Path, make_dng) -> None:
    make_dng("x.dng", folder=tmp_path / "in")
    make_dng("x.arw", folder=tmp_path / "in", seed=1)
    res = run(
        "convert", str(tmp_path / "in" / "x.*"), "--out", tmp_path / "o", "--model", models_dir
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_arw.tif", "x_dng.tif"]


def test_target_exposure_uses_exif(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("t.dng", exposure_time=0.05)
    res = run("convert", src, "-o", tmp_path, "--model", models_dir, "--target-exposure", "5")
    assert res.exit_code == 0 and "x100.0" in res.output


def test_demosaic_option(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("d.dng")
    images = {}
    for demosaic in ("ppg", "ahd"):
        out = tmp_path / demosaic
        res = run("convert", src, "-o", out, "--model", models_dir, "--demosaic", demosaic)
        assert res.exit_code == 0, res.output
        images[demosaic] = tifffile.imread(out / "d.tif")
    assert images["ppg"].shape == images["ahd"].shape
    assert not np.array_equal(images["ppg"], images["ahd"])
    with pytest.raises(ValueError, match="unknown demosaic"):
        sidraw.convert_file(src, tmp_path / "x.tif", sidraw.ConvertOptions(demosaic="vng"))  # type: ignore[arg-type]
    assert not (tmp_path / "x.tif").exists()


def test_usage_errors_exit_2(tmp_path: Path, make_dng) -> None:
    src = make_dng("u.dng")
    assert run("convert", src, "--ratio", "lots").exit_code == 2
    assert run("convert", src, "--ratio", "10", "--target-exposure", "3").exit_code == 2
    assert run("convert", src, "--tile", "500").exit_code == 2
    assert run("convert", src, "--format", "jpeg").exit_code == 2
    assert run("convert", src, "--demosaic", "bilinear").exit_code == 2
    assert run("convert").exit_code == 2


def test_missing_model_is_a_clear_error(tmp_path: Path, make_dng) -> None:
    """A --model that cannot work is a usage error before the batch, naming what was given."""
    src = make_dng("m.dng")
    res = run("convert", src, "-o", tmp_path / "o", "--model", tmp_path / "nothing.json")
    assert res.exit_code == 2
    assert f"--model {tmp_path / 'nothing.json'}: no such file or folder" in res.output
    assert not (tmp_path / "o" / "m.tif").exists()
    (tmp_path / "nope.onnx").write_bytes(b"onnx")
    res = run("convert", src, "-o", tmp_path / "o", "--model", tmp_path / "nope.onnx")
    assert res.exit_code == 2
    assert "nope.onnx: its model card nope.json is not beside it" in res.output
    assert "nope.json: model card not found" not in res.output
    res = run("convert", src, "-o", tmp_path / "o", "--model", tmp_path)
    assert res.exit_code == 2 and "no model card (.json) in this folder" in res.output


def test_model_for_the_wrong_cfa(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("w.dng", pattern="xtrans")
    res = run("convert", src, "-o", tmp_path, "--model", models_dir / "test-bayer.json")
    assert res.exit_code == 1 and "for bayer sensors" in res.output


def test_info_json(make_dng) -> None:
    src = make_dng("i.dng", pattern="GBRG", exposure_time=0.04, iso=6400)
    res = run("info", src, "--json")
    assert res.exit_code == 0
    report = json.loads(res.stdout)
    assert report["cfa"]["kind"] == "bayer" and report["cfa"]["pattern"] == "GBRG"
    assert report["exposure"]["iso"] == 6400
    assert report["exposure"]["exposure_time"] == pytest.approx(0.04)
    assert report["levels"] == {"black": [512.0], "white": 16383.0}
    assert 1 <= report["auto_ratio"]["ratio"] <= 300
    assert report["auto_ratio"]["equivalent_exposure"] == pytest.approx(
        report["auto_ratio"]["ratio"] * 0.04, rel=1e-3
    )
    human = run("info", src)
    assert "GBRG" in human.stdout and "auto ratio" in human.stdout


def test_info_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"\0" * 100)
    res = run("info", bad)
    assert res.exit_code == 1 and "bad.nef" in res.output


def test_version_and_module_entry_point() -> None:
    assert run("--version").stdout.strip() == f"sidraw {__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "sidraw", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == f"sidraw {__version__}"


def test_library_call(tmp_path: Path, models_dir: Path, make_dng) -> None:
    import sidraw

    src = make_dng("lib.dng")
    result = sidraw.convert_file(
        src, tmp_path / "lib.tif", sidraw.ConvertOptions(ratio=50), model=models_dir
    )
    assert result.decision.ratio == 50 and Path(result.output).exists()
    assert set(result.timings) == {"decode", "pack", "inference", "render", "write"}
    with pytest.raises(sidraw.OutputError, match="already exists"):
        sidraw.convert_file(src, tmp_path / "lib.tif", model=models_dir)
