"""What a new user meets first (issue 14): set-up without torch, odd file names, ``--out FILE``,
``--out -`` on a terminal, provenance of reduced precisions, metadata of formats exifread cannot
read, clear errors, honest samples, a short grouped ``--help``, and a split ``convert``."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tifffile
from typer.testing import CliRunner

from sidraw import cli, metadata
from sidraw.cli import app
from sidraw.inspect import describe_file
from sidraw.model import load_card
from sidraw.report import json_text, shown

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = {"width": 256, "height": 192}


def run(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# -- 1. the README's test command without torch ----------------------------------------------

_WITHOUT_TORCH = """
import sys

class NoTorch:
    # What an environment without the train extra looks like to an import.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "bm3d"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]]))
"""


def test_every_test_module_collects_without_torch() -> None:
    """With only ``.[dev]`` installed, training tests skip instead of erroring at collection."""
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(REPO / "tests")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    # Exit code 5 (nothing collected) would be a failure too.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error" not in proc.stdout.lower().split("short test summary")[-1]
    assert "test_cli.py::" in proc.stdout


def test_ci_runs_the_readme_test_command_before_installing_torch() -> None:
    readme = (REPO / "README.md").read_text()
    command = 'python3 -m pip install -e ".[dev]" && python3 -m pytest -q'
    assert command in readme
    ci = (REPO / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if not line.strip().startswith("#")]
    readme_run = next(k for k, line in enumerate(lines) if command in line)
    torch_install = next(
        k for k, line in enumerate(lines) if "pip install" in line and "torch" in line
    )
    assert readme_run < torch_install
    assert "venv" in " ".join(lines[:readme_run])  # in a fresh virtual environment of its own


# -- 2. file names and messages are plain text -----------------------------------------------

ODD_NAMES = ["night [best].dng", "[red]alarm[/red].dng", "[/b].dng", "two\nlines.dng"]


def _odd_folder(root: Path, make_dng) -> tuple[Path, list[str]]:
    folder = root / "odd["
    names = list(ODD_NAMES)
    try:
        (folder / os.fsdecode(b"caf\xe9.dng")).parent.mkdir(parents=True, exist_ok=True)
        make_dng(os.fsdecode(b"caf\xe9.dng"), folder=folder, **SMALL)
        names.append(os.fsdecode(b"caf\xe9.dng"))
    except (OSError, UnicodeError):  # file systems that insist on UTF-8 names
        pass
    for n in ODD_NAMES:
        make_dng(n, folder=folder, **SMALL)
    return folder, names


def test_markup_and_odd_bytes_in_names(tmp_path: Path, models_dir: Path, make_dng) -> None:
    # Names with "/" ("[/b].dng") are nested, as in the issue: the printed path holds "[/b]".
    folder, names = _odd_folder(tmp_path, make_dng)
    broken = folder / "[bold]broken[/bold].dng"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"II*\0" + b"\0" * 200)
    out = tmp_path / "out[x]"
    res = run("convert", folder, "-r", "-o", out, "--model", models_dir, "--json")
    assert res.exit_code == 1, res.output  # the broken file fails, the batch goes on
    for name in names:
        dst = out / Path(name).with_suffix(".tif")
        assert f"{shown(folder / name)} → {shown(dst)}  x" in res.stderr
        assert dst.is_file()
    assert f"✗ {shown(broken)}: " in res.stderr
    assert f"{len(names)} converted, 0 skipped, 1 failed" in res.stderr
    records = {r["input"]: r for r in json_lines(res.stdout)}
    for name in names:
        assert records[json_text(folder / name)]["status"] == "ok"
    assert records[json_text(broken)]["status"] == "failed"

    files = [folder / n for n in names]
    human = run("info", *files, env={"COLUMNS": "500"})
    assert human.exit_code == 0, human.output
    for f in files:
        assert shown(f) in human.stdout
    reports = json_lines(run("info", *files, "--json").stdout)
    assert [r["file"] for r in reports] == [json_text(f) for f in files]
    failed = run("info", broken, "--json")
    assert failed.exit_code == 1 and json_lines(failed.stdout)[0]["file"] == json_text(broken)
    assert f"✗ {shown(broken)}: " in failed.stderr


def test_error_texts_keep_their_brackets(tmp_path: Path, make_dng) -> None:
    if cuda_available():
        pytest.skip("a CUDA GPU is available: --device cuda is no error here")
    res = run("convert", make_dng("a.dng", **SMALL), "--device", "cuda")
    assert res.exit_code == 2 and "sidraw[gpu]" in res.output


# -- 3. --out FILE ----------------------------------------------------------------------------


def test_out_names_one_output_file(
    tmp_path: Path, models_dir: Path, make_dng, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_dng("a.dng", **SMALL)
    monkeypatch.chdir(tmp_path)
    res = run("convert", src, "--out", "result.tif", "--model", models_dir)
    assert res.exit_code == 0, res.output
    assert Path("result.tif").is_file() and tifffile.imread("result.tif").shape == (192, 256, 3)
    assert run("convert", src, "--out", "sub/r.png", "--model", models_dir).exit_code == 0
    assert Path("sub/r.png").read_bytes()[:4] == b"\x89PNG"
    assert run("convert", src, "-o", "clean.dng", "--model", models_dir).exit_code == 0
    assert describe_file("clean.dng")["format"] == "DNG"
    again = run("convert", src, "--out", "result.tif", "--model", models_dir)
    assert again.exit_code == 0 and "skipped" in again.output  # resume as for folders

    mismatch = run("convert", src, "--out", "r.png", "-f", "tiff")
    assert mismatch.exit_code == 2 and "--format is tiff" in mismatch.output
    two = run("convert", src, make_dng("b.dng", **SMALL), "--out", "two.tif")
    assert two.exit_code == 2 and "exactly one input" in two.output
    Path("notes").write_text("a file")
    existing = run("convert", src, "--out", "notes")
    assert existing.exit_code == 2 and "is an existing file, not a folder" in existing.output
    jpeg = run("convert", src, "--out", "r.jpg")
    assert jpeg.exit_code == 2 and "writes TIFF" in jpeg.output
    assert not Path("two.tif").exists() and not Path("r.jpg").exists()


# -- 4. --out - on a terminal -----------------------------------------------------------------


def _convert_on_a_terminal(args: list[str]) -> tuple[int, str, int]:
    """Run ``sidraw convert`` with a pseudo-terminal as stdout: (exit code, stderr, bytes out)."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    received = [0]

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            received[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-m", "sidraw", "convert", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.returncode, proc.stderr, received[0]


def test_stdout_on_a_terminal_is_refused(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = str(make_dng("t.dng", **SMALL))
    code, err, got = _convert_on_a_terminal([src, "--out", "-", "--model", str(models_dir)])
    assert code == 2 and "stdout is a terminal: redirect it or give --out DIR" in err
    assert got == 0
    code, err, got = _convert_on_a_terminal(
        [src, "--out", "-", "--model", str(models_dir), "--force"]
    )
    assert code == 0, err
    assert got > 192 * 256  # the image went to the terminal, as asked


# -- 5. provenance of reduced precisions ------------------------------------------------------


def _xmp(path: Path, name: str) -> str:
    with tifffile.TiffFile(path) as tf:
        packet = bytes(tf.pages[0].tags[700].value).decode()
    match = re.search(rf'sidraw:{name}(?:="|>)([^"<]*)', packet)
    assert match, packet
    return match.group(1)


def test_int8_provenance_in_xmp_and_json(tmp_path: Path, make_dng, models_dir: Path) -> None:
    # A quantised copy of the small test model (the bundled models are too slow for this test).
    from sidraw.quantize import quantize

    folder = tmp_path / "model"
    folder.mkdir()
    for f in models_dir.glob("test-bayer.*"):
        shutil.copy(f, folder)
    quantize(folder / "test-bayer.json", count=2, layers="downsampled")
    card = load_card(folder / "test-bayer.json")
    src = make_dng("p.dng", **SMALL)
    for precision, sha in (("int8", card.variants["int8"]["sha256"]), ("fp32", card.sha256)):
        out = tmp_path / precision
        res = run(
            "convert", src, "-o", out, "--device", "cpu", "--precision", precision, "--json",
            "--model", folder / "test-bayer.json",
        )
        assert res.exit_code == 0, res.output
        (record,) = json_lines(res.stdout)
        assert record["precision"] == precision and record["model_sha256"] == sha
        assert _xmp(out / "p.tif", "Precision") == precision
        assert _xmp(out / "p.tif", "ModelSHA256") == sha
    assert card.variants["int8"]["sha256"] != card.sha256


def test_precision_help_says_what_auto_does() -> None:
    from sidraw.model import card_for, choose_file

    text = " ".join(run("convert", "--help", env={"COLUMNS": "200"}).output.split())
    assert "int8 on CPUs if validated, else fp32" in text
    # Both bundled cards do: auto picks each bundled model's INT8 variant on a CPU.
    for cfa in ("bayer", "xtrans"):
        assert choose_file(card_for(cfa), "auto", "cpu")[2] == "int8"


# -- 6. metadata of formats exifread cannot read ----------------------------------------------


def test_crw_metadata_comes_from_exiv2(shared_raw: Path, tmp_path: Path, models_dir: Path) -> None:
    crw = shared_raw / "cameras" / "canon_eos_d30_iso100_5s.crw"
    report = describe_file(crw)
    assert report["camera"]["make"] == "Canon" and report["camera"]["model"] == "Canon EOS D30"
    exp = report["exposure"]
    assert exp["exposure_time"] == pytest.approx(5, rel=0.05)  # exiftool: 5 s
    assert exp["iso"] == 100 and exp["f_number"] == pytest.approx(5.7, abs=0.1)
    assert exp["datetime_original"] == "2018:01:01 13:03:32"
    human = run("info", crw).stdout
    assert "Canon EOS D30" in human and "ISO 100" in human and "time unknown" not in human

    res = run("convert", crw, "-o", tmp_path, "--model", models_dir, "--target-exposure", "50")
    assert res.exit_code == 0, res.output
    assert "target exposure 50 s" in res.output
    import exiv2

    image = exiv2.ImageFactory.open(str(tmp_path / f"{crw.stem}.tif"))
    image.readMetadata()
    exif = image.exifData()
    assert exif["Exif.Image.Model"].toString() == "Canon EOS D30"
    assert exif["Exif.Photo.ExposureTime"].toFloat(0) == pytest.approx(5, rel=0.05)
    assert exif["Exif.Photo.ISOSpeedRatings"].toInt64(0) == 100


def test_magic_lantern_dng_zeros_are_unknown(shared_raw: Path) -> None:
    """The Magic Lantern DNG records 0 s, f/0 and ISO 0: unknown, not values."""
    report = describe_file(shared_raw / "cameras" / "canon_550d_magiclantern_colorchart.dng")
    assert report["camera"]["make"] == "Canon"
    assert report["camera"]["model"] == "Canon EOS Kiss X4"
    assert report["exposure"]["exposure_time"] is None and report["exposure"]["iso"] is None
    assert report["exposure"]["f_number"] is None


def test_exiv2_fills_only_what_exifread_lacks(make_dng) -> None:
    from sidraw.raw import ExifInfo

    data = make_dng("f.dng", **SMALL).read_bytes()
    filled = metadata.fill_exif(ExifInfo(make="Given"), data)
    assert filled.make == "Given" and filled.model == "ILCE-7SM2"
    assert filled.exposure_time == pytest.approx(1 / 30) and filled.iso == 12800


# -- 7. clear errors ----------------------------------------------------------------------------


def test_not_a_raw_file(tmp_path: Path, models_dir: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    res = run("convert", notes, "-o", tmp_path / "o", "--model", models_dir)
    assert res.exit_code == 1
    assert f"✗ {notes}: not a raw file (text)" in res.output
    assert "Input/output error" not in res.output


def test_info_json_reports_errors_on_stdout(tmp_path: Path) -> None:
    from PIL import Image

    jpg = tmp_path / "holiday.jpg"
    Image.new("RGB", (64, 48)).save(jpg)
    res = run("info", jpg, "--json")
    assert res.exit_code == 1
    (record,) = json_lines(res.stdout)
    assert record["file"] == str(jpg) and record["status"] == "failed"
    assert "JPEG" in record["error"]


def test_device_cuda_without_a_gpu_is_one_usage_error(tmp_path: Path, make_dng) -> None:
    if cuda_available():
        pytest.skip("a CUDA GPU is available")
    a, b = make_dng("a.dng", **SMALL), make_dng("b.dng", **SMALL)
    res = run("convert", a, b, "-o", tmp_path / "o", "--device", "cuda")
    assert res.exit_code == 2
    assert res.output.count("--device cuda needs") == 1 and "converted" not in res.output
    assert not (tmp_path / "o").exists()


# -- 8. honest samples --------------------------------------------------------------------------


def test_sample_refuses_names_it_cannot_honour(tmp_path: Path) -> None:
    res = run("sample", tmp_path / "x.ARW", "--width", "64", "--height", "64")
    assert res.exit_code == 2 and "writes DNG files: name it" in res.output
    assert not list(tmp_path.iterdir())


def test_sample_into_a_folder(tmp_path: Path) -> None:
    # A folder (such as ".") gets sample.dng in it, not a traceback.
    res = run("sample", tmp_path, "--width", "64", "--height", "64")
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["sample.dng"]


def test_format_comes_from_the_content(tmp_path: Path, make_dng) -> None:
    renamed = tmp_path / "x.ARW"
    shutil.copy(make_dng("x.dng", **SMALL), renamed)
    assert describe_file(renamed)["format"] == "DNG"
    assert "DNG" in run("info", renamed).stdout


def test_sample_is_as_dark_as_it_says_and_carries_photo_tags(tmp_path: Path) -> None:
    import exiv2

    path = tmp_path / "dark.dng"
    res = run("sample", path, "--width", "320", "--height", "224", "--ratio", "50")
    assert res.exit_code == 0 and "x50 darker" in res.output
    assert describe_file(path)["auto_ratio"]["ratio"] == pytest.approx(50, rel=0.05)
    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    keys = {d.key() for d in image.exifData()}
    assert {"Exif.GPSInfo.GPSLatitude", "Exif.Photo.LensModel", "Exif.Image.Artist"} <= keys


def test_setup_outputs_are_ignored_by_git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("dark.dng", "bright/dark.tif"):
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert proc.returncode == 0, f"{path} (made by the README's set-up) is not git-ignored"


# -- 9. help and templates ----------------------------------------------------------------------


def test_convert_help_is_grouped_and_short() -> None:
    res = run("convert", "--help", env={"COLUMNS": "80"})
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert len(lines) <= 60
    assert "<bool>" not in res.output
    for panel in ("Input and output", "Exposure", "Colour", "Model and speed", "Batch"):
        assert panel in res.output
    compare = " ".join(run("compare", "--help", env={"COLUMNS": "200"}).output.split())
    assert re.search(r"--model \S+ Model card", compare)


def test_bad_name_template_lists_the_fields(tmp_path: Path, make_dng) -> None:
    res = run("convert", make_dng("n.dng", **SMALL), "--name", "{bogus}")
    assert res.exit_code == 2
    assert "unknown field {bogus}" in res.output
    assert "{stem}, {ext}, {name}" in res.output


# -- the code behind it -------------------------------------------------------------------------


def test_convert_is_split_into_named_pieces() -> None:
    """Option checks, batch planning and reporting are separate; every verb reports the same way."""
    from sidraw import cli_options, cli_plan, report

    assert len(inspect.getsource(cli.convert).splitlines()) < 60
    assert callable(cli_options.convert_options) and callable(cli_plan.plan_batch)
    source = inspect.getsource(cli)
    assert "Console(" not in source and "markup=True" not in source
    for verb in (cli.convert, cli.info, cli.sample, cli.doctor, cli.compare):
        assert "Reporter(" in inspect.getsource(verb)
    assert report.Reporter is cli.Reporter
