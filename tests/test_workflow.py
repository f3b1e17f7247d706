"""Outputs as first-class citizens of photo workflows: metadata, colour, DNG, pipes, scripting."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rawpy
import tifffile
from typer.testing import CliRunner

import sidraw
from sidraw import __version__, metadata
from sidraw.cli import app
from sidraw.color import COLOR_SPACES, encoding_for, icc_profile
from sidraw.model import ModelCache, load_card
from sidraw.pipeline import ConvertOptions, denoise
from sidraw.raw import open_raw

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def cli(*args: object, input: str | bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def tagged_dng(make_dng) -> Path:
    """A synthetic raw whose EXIF has lens, sub-seconds, offset, GPS, author and copyright."""
    import exiv2

    src = make_dng("tagged.dng", exposure_time=0.02, iso=6400)
    image = exiv2.ImageFactory.open(str(src))
    image.readMetadata()
    exif = image.exifData()
    exif["Exif.Photo.LensModel"] = "FE 24mm F1.4 GM"
    exif["Exif.Photo.DateTimeOriginal"] = "2026:01:02 03:04:05"
    exif["Exif.Photo.SubSecTimeOriginal"] = "123"
    exif["Exif.Photo.OffsetTimeOriginal"] = "+01:00"
    exif["Exif.Photo.FocalLength"] = exiv2.URationalValue([(24, 1)])
    exif["Exif.Image.Artist"] = "Night Owl"
    exif["Exif.Image.Copyright"] = "(c) Night Owl"
    exif["Exif.GPSInfo.GPSVersionID"] = "2 3 0 0"
    exif["Exif.GPSInfo.GPSLatitudeRef"] = "N"
    exif["Exif.GPSInfo.GPSLatitude"] = "48/1 51/1 30/1"
    exif["Exif.GPSInfo.GPSLongitudeRef"] = "E"
    exif["Exif.GPSInfo.GPSLongitude"] = "2/1 21/1 0/1"
    image.setExifData(exif)
    image.writeMetadata()
    return src


def exiftool(path: Path) -> dict:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed")
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-a", "-n", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)[0]


@pytest.mark.parametrize("fmt", ["tiff", "png"])
def test_metadata_read_back_by_exiftool(tmp_path: Path, models_dir: Path, tagged_dng, fmt) -> None:
    res = cli(
        "convert", tagged_dng, "-o", tmp_path, "--model", models_dir, "--ratio", "90", "-f", fmt
    )
    assert res.exit_code == 0, res.output
    tags = exiftool(tmp_path / f"tagged.{'tif' if fmt == 'tiff' else 'png'}")
    flat = {k.split(":", 1)[1]: v for k, v in tags.items() if ":" in k and "sidraw" not in k}
    ours = {k.split(":", 1)[1]: v for k, v in tags.items() if k.startswith("XMP-sidraw:")}
    assert flat["Make"] == "Sony" and flat["Model"] == "ILCE-7SM2"
    assert flat["LensModel"] == "FE 24mm F1.4 GM"
    assert flat["DateTimeOriginal"] == "2026:01:02 03:04:05"
    assert str(flat["SubSecTimeOriginal"]) == "123" and flat["OffsetTimeOriginal"] == "+01:00"
    assert flat["ExposureTime"] == pytest.approx(0.02)
    assert flat["FNumber"] == pytest.approx(2.8)
    assert flat["ISO"] == 6400 and flat["FocalLength"] == pytest.approx(24)
    assert flat["GPSLatitude"] == pytest.approx(48 + 51 / 60 + 30 / 3600)
    assert flat["Artist"] == "Night Owl" and flat["Copyright"] == "(c) Night Owl"
    assert flat["Software"] == f"sidraw {__version__}"
    assert flat["Orientation"] == 1
    assert float(ours["Ratio"]) == pytest.approx(90) and ours["RatioMode"] == "fixed"
    card = json.loads((models_dir / "test-bayer.json").read_text())
    assert ours["ModelSHA256"] == card["sha256"] and ours["Model"] == card["name"]
    assert flat["ProfileDescription"] == "sidraw sRGB"


def test_strip_gps(tmp_path: Path, models_dir: Path, tagged_dng) -> None:
    res = cli("convert", tagged_dng, "-o", tmp_path, "--model", models_dir, "--strip-gps")
    assert res.exit_code == 0, res.output
    tags = exiftool(tmp_path / "tagged.tif")
    assert not [k for k in tags if "GPS" in k]
    assert any(k.endswith(":LensModel") for k in tags)


def test_orientation_is_applied_to_pixels(tmp_path: Path, models_dir: Path) -> None:
    from sidraw.dng import DngMetadata, write_dng
    from sidraw.sample import pattern_letters

    mosaic = np.full((600, 900), 700, np.uint16)
    mosaic[::3, ::7] = 2000
    src = tmp_path / "rot.dng"
    write_dng(src, mosaic, DngMetadata(pattern=pattern_letters("RGGB"), black=512, orientation=6))
    dst = tmp_path / "rot.tif"
    sidraw.convert_file(src, dst, ConvertOptions(ratio=10), model=models_dir)
    img = tifffile.imread(dst)
    assert img.shape == (900, 600, 3)
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[0].tags["Orientation"].value == 1


def _srgb_oetf(x: np.ndarray) -> np.ndarray:
    return np.where(
        x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.clip(x, 0, None), 1 / 2.4) - 0.055
    )


def test_linear_output_matches_srgb_output(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("lin.dng")
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    sidraw.convert_file(src, a, ConvertOptions(ratio=60), model=models_dir)
    sidraw.convert_file(src, b, ConvertOptions(ratio=60, linear=True), model=models_dir)
    srgb = tifffile.imread(a).astype(np.float64) / 65535
    lin = tifffile.imread(b).astype(np.float64) / 65535
    ok = (srgb > 0.05) & (srgb < 0.95)
    assert np.abs(_srgb_oetf(lin)[ok] - srgb[ok]).mean() < 0.01


@pytest.mark.parametrize("space", [s for s in COLOR_SPACES if s != "srgb"])
def test_each_colour_space_has_matching_pixels_and_profile(
    tmp_path: Path, models_dir: Path, make_dng, space: str
) -> None:
    """Converting an output to sRGB through its embedded profile gives the sRGB output back."""
    from PIL import Image, ImageCms

    src = make_dng("cs.dng")
    ref, out = tmp_path / "ref.tif", tmp_path / f"{space}.tif"
    sidraw.convert_file(src, ref, ConvertOptions(ratio=60), model=models_dir)
    sidraw.convert_file(src, out, ConvertOptions(ratio=60, color_space=space), model=models_dir)
    with tifffile.TiffFile(out) as tf:
        icc = tf.pages[0].tags["InterColorProfile"].value
    assert bytes(icc) == icc_profile(encoding_for(space))
    pixels = tifffile.imread(out)
    reference = tifffile.imread(ref)
    if encoding_for(space).transfer == "linear":
        # Linear Rec. 2020 -> XYZ -> linear sRGB with the standard D65 matrices, then encode.
        to_xyz = np.array(
            [[0.6370, 0.1446, 0.1689], [0.2627, 0.6780, 0.0593], [0.0, 0.0281, 1.0610]]
        )
        to_srgb = np.array(
            [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
        )
        lin = (pixels / 65535) @ (to_srgb @ to_xyz).T
        got = np.round(_srgb_oetf(np.clip(lin, 0, 1)) * 255)
        want = (reference >> 8).astype(np.float64)
        inside = (want > 10).all(axis=2) & (want < 245).all(axis=2)
        assert np.abs(got - want)[inside].mean() < 4.0
        return
    # LittleCMS transforms need 8-bit data in Pillow; the comparison tolerates that rounding.
    img = Image.fromarray((pixels >> 8).astype(np.uint8))
    profile_bytes = bytes(icc)
    src_profile = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
    converted = ImageCms.profileToProfile(
        img,
        src_profile,
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
    )
    got = np.asarray(converted).astype(np.float64)
    want = (reference >> 8).astype(np.float64)
    inside = (want > 10).all(axis=2) & (want < 245).all(axis=2)
    assert np.abs(got - want)[inside].mean() < 4.0


def test_rec2020_is_linear_rec2020(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("r.dng")
    out = tmp_path / "r.tif"
    sidraw.convert_file(src, out, ConvertOptions(color_space="rec2020"), model=models_dir)
    tags = exiftool(out)
    assert tags["ICC_Profile:ProfileDescription"] == "sidraw linear Rec. 2020"


def test_dng_output_round_trip(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("raw.dng", pattern="GBRG", exposure_time=0.05)
    res = cli(
        "convert", src, "-o", tmp_path / "o", "--model", models_dir, "-f", "dng", "--ratio", "70"
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "o" / "raw.dng"
    with open_raw(src) as raw:
        net = ModelCache(models_dir, "cpu").get("bayer")
        expected, _ = denoise(raw, net, ConvertOptions(ratio=70))
        colour_matrix = raw.info.color_matrix
    with rawpy.imread(str(out)) as r:
        assert "".join(r.color_desc.decode()[i] for i in r.raw_pattern.ravel()).replace(
            "G", "G"
        ) in ("GBRG",)
        assert r.black_level_per_channel == [512, 512, 512, 512]
        assert r.white_level == 16383
        assert np.allclose(r.rgb_xyz_matrix[:3], colour_matrix, atol=1e-3)
        assert r.camera_whitebalance[:3] == pytest.approx([2.0, 1.0, 5 / 3], rel=1e-3)
        assert np.array_equal(r.raw_image_visible, expected)
    flat = {k.split(":", 1)[1]: v for k, v in exiftool(out).items() if ":" in k}
    assert flat["ExposureTime"] == pytest.approx(0.05) and float(flat["Ratio"]) == 70


def test_stdin_to_stdout_is_a_16bit_tiff(tmp_path: Path, models_dir: Path, make_dng) -> None:
    src = make_dng("pipe.dng")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidraw",
            "convert",
            "-",
            "--out",
            "-",
            "--model",
            str(models_dir),
            "--ratio",
            "40",
        ],
        input=src.read_bytes(),
        capture_output=True,
        check=True,
    )
    img = tifffile.imread(io.BytesIO(proc.stdout))
    assert img.dtype == np.uint16 and img.shape == (600, 900, 3)
    assert b"x40.0" in proc.stderr


def test_json_lines_and_logs_on_stderr(tmp_path: Path, models_dir: Path, make_dng) -> None:
    a = make_dng("a.dng")
    bad = tmp_path / "bad.arw"
    bad.write_bytes(b"junk" * 1000)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidraw",
            "convert",
            str(a),
            str(bad),
            "--json",
            "-o",
            str(tmp_path / "o"),
            "--model",
            str(models_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    by_input = {Path(r["input"]).name: r for r in records}
    assert by_input["a.dng"]["status"] == "ok" and by_input["a.dng"]["ratio"] > 1
    assert by_input["a.dng"]["output"].endswith("a.tif") and by_input["a.dng"]["seconds"] > 0
    assert by_input["bad.arw"]["status"] == "failed" and by_input["bad.arw"]["error"]
    assert "converted" in proc.stderr and "\x1b[" not in proc.stderr  # no progress bar on a pipe


def test_files_from_stdin_and_file(tmp_path: Path, models_dir: Path, make_dng) -> None:
    a, b = make_dng("a.dng"), make_dng("b.dng", seed=2)
    listing = f"{a}\n# a comment\n{b}\n"
    res = cli("convert", "-@", "-", "-o", tmp_path / "o1", "--model", models_dir, input=listing)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["a.tif", "b.tif"]
    lst = tmp_path / "list.txt"
    lst.write_text(listing)
    res = cli("convert", "--files-from", lst, "-o", tmp_path / "o2", "--model", models_dir)
    assert res.exit_code == 0 and len(list((tmp_path / "o2").iterdir())) == 2


def test_dry_run_writes_nothing(tmp_path: Path, models_dir: Path, make_dng) -> None:
    a = make_dng("a.dng")
    res = cli("convert", a, "-o", tmp_path / "o", "--dry-run", "--name", "{stem}_sidraw")
    assert res.exit_code == 0
    assert "a_sidraw.tif" in res.output
    assert not (tmp_path / "o").exists()


def test_name_template(tmp_path: Path, models_dir: Path, make_dng) -> None:
    a = make_dng("shot.dng")
    res = cli("convert", a, "-o", tmp_path, "--name", "{stem}_sidraw", "--model", models_dir)
    assert res.exit_code == 0 and (tmp_path / "shot_sidraw.tif").exists()
    assert cli("convert", a, "--name", "{nope}").exit_code == 2


def test_preview_and_compare(tmp_path: Path, models_dir: Path, make_dng) -> None:
    from PIL import Image

    a = make_dng("p.dng")
    res = cli("convert", a, "-o", tmp_path, "--preview", "--model", models_dir)
    assert res.exit_code == 0, res.output
    prev = Image.open(tmp_path / "p.preview.jpg")
    assert prev.format == "JPEG" and prev.width == 1608
    left, right = np.split(np.asarray(prev)[:, :1600], 2, axis=1)
    assert not np.array_equal(left, right)
    res = cli("compare", a, "-o", tmp_path / "c.jpg", "--model", models_dir)
    assert res.exit_code == 0 and Image.open(tmp_path / "c.jpg").format == "JPEG"


def test_shell_completion() -> None:
    """Completion answers through click's protocol (what the installed shell script calls), so the
    test does not depend on detecting the shell that runs pytest."""

    def complete(words: str) -> list[str]:
        env = {
            "_SIDRAW_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        res = runner.invoke(app, [], env=env, prog_name="sidraw")
        assert res.exit_code == 0, res.output
        return res.output.split()

    assert complete("sidraw conv") == ["convert"]
    assert "--color-space" in complete("sidraw convert --col")


def test_doctor_json() -> None:
    res = cli("doctor", "--json")
    report = json.loads(res.stdout)
    assert report["sidraw"] == __version__ and "CPUExecutionProvider" in report["providers"]
    assert report["device"] in ("cpu", "cuda")
    assert res.exit_code == (0 if report["ok"] else 1)
    for m in report["models"]:
        assert m["status"] == "ok" and len(m["sha256"]) == 64
        assert all(status == "ok" for status in m.get("variants", {}).values())


def test_doctor_checks_variant_files(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sidraw.doctor as doctor_mod

    for f in models_dir.glob("test-bayer.*"):
        shutil.copy(f, tmp_path)
    card_path = tmp_path / "test-bayer.json"
    data = json.loads(card_path.read_text())
    data["variants"] = {"int8": {"file": "test-bayer.int8.onnx", "sha256": "00" * 32}}
    card_path.write_text(json.dumps(data))
    monkeypatch.setattr(doctor_mod, "find_cards", lambda: [load_card(card_path)])
    (m,) = doctor_mod.report()["models"]
    assert m["status"] == "ok" and m["variants"] == {"int8": "missing"}
    (tmp_path / "test-bayer.int8.onnx").write_bytes(b"damaged")
    (m,) = doctor_mod.report()["models"]
    assert m["variants"] == {"int8": "sha256 mismatch"}


def test_metadata_of_unreadable_source_is_empty() -> None:
    assert metadata.select_tags(metadata.read_source(b"not an image")) == {}


def test_changelog_and_version_agree() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, flags=re.M)
    assert releases and releases[0] == __version__
