"""The real files in ../shared/data/raw: each with its expected result."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidraw.cli import app
from sidraw.errors import CorruptFileError, UnsupportedFileError
from sidraw.inspect import describe_file

EXPECTED = {
    "real/kodak_dc50.kdc": None,
    "real/canon_eos_6d_linear.dng": (UnsupportedFileError, "linear"),
    "real/iphone12pro_proraw_pixels_zeroed.dng": (UnsupportedFileError, "linear"),
    "broken/canon350d_truncated.dng": (CorruptFileError, "truncated"),
    "broken/panasonic_lx3_truncated.rw2": (CorruptFileError, "truncated"),
    "broken/fujifilm_truncated.raf": (CorruptFileError, "truncated"),
    "broken/nikon_d70_truncated.nef": (CorruptFileError, "corrupted"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_shared_file(shared_raw: Path, name: str) -> None:
    expected = EXPECTED[name]
    if expected is None:
        report = describe_file(shared_raw / name)
        assert report["cfa"] == {
            "kind": "bayer",
            "pattern": "GRBG",
            "phase": "GRBG",
            "packed_channels": ["R", "G", "G", "B"],
            "packing_offset": [0, 0],
        }
        assert report["size"] == {"width": 768, "height": 512}
        assert report["levels"]["white"] == 16383
        assert report["exposure"]["exposure_time"] == pytest.approx(87 / 20000)
        return
    kind, word = expected
    with pytest.raises(kind, match=word) as info:
        describe_file(shared_raw / name)
    assert name.split("/")[1] in str(info.value)
    assert "\n" not in str(info.value)


def test_batch_of_shared_files(shared_raw: Path, tmp_path: Path, models_dir: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "convert",
            str(shared_raw / "real"),
            str(shared_raw / "broken"),
            "-o",
            str(tmp_path),
            "--model",
            str(models_dir),
        ],
    )
    assert res.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kodak_dc50.tif"]
    assert "1 converted, 0 skipped, 6 failed" in res.output
    assert "Unexpected end of file" not in res.stderr.replace("(Unexpected end of file)", "")
