"""Reading real DNG files written by the tests: LibRaw must see what the file says."""

from pathlib import Path

import numpy as np
import pytest

from sidraw.dng import DngMetadata, write_dng
from sidraw.errors import CorruptFileError, InputError, UnsupportedFileError
from sidraw.raw import ExifInfo, open_raw, parse_exif, read_info
from sidraw.sample import XTRANS_PATTERN, pattern_letters


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR", "xtrans"])
def test_levels_pattern_and_exif_come_from_the_file(tmp_path: Path, pattern: str) -> None:
    letters = pattern_letters(pattern)
    p = letters.shape[0]
    # Per-position black levels for Bayer; X-Trans files carry one level (rawpy exposes no 6x6
    # black pattern, see README "Limitations").
    black = np.arange(p * p, dtype=np.float64).reshape(p, p) * 2 + 500 if p == 2 else 1024.0
    rng = np.random.default_rng(0)
    mosaic = rng.integers(400, 4000, (600, 900), dtype=np.uint16)
    meta = DngMetadata(
        pattern=letters,
        black=black,
        white=15000,
        as_shot_neutral=(0.4, 1.0, 0.8),
        make="Testmaker",
        model="T-1",
        exposure_time=1 / 8,
        f_number=1.8,
        iso=25600,
        datetime_original="2025:12:31 23:59:58",
    )
    path = tmp_path / f"x_{pattern}.DNG"
    write_dng(path, mosaic, meta)
    info, pixels = read_info(path)
    assert info.cfa_pattern == "".join(letters.ravel())
    assert info.layout.kind == ("xtrans" if p == 6 else "bayer")
    assert info.white == 15000
    assert info.wb_multipliers == pytest.approx((2.5, 1.0, 1.25), rel=1e-3)
    assert np.array_equal(pixels, mosaic)
    assert info.exif.exposure_time == pytest.approx(0.125)
    assert info.exif.iso == 25600 and info.exif.f_number == pytest.approx(1.8)
    assert info.exif.make == "Testmaker" and info.exif.model == "T-1"
    assert info.exif.datetime_original == "2025:12:31 23:59:58"
    assert np.array_equal(info.black, np.broadcast_to(black, (p, p)))


def test_exif_prefers_exif_ifd_and_accepts_ifd0() -> None:
    class Tag:
        def __init__(self, value: object) -> None:
            self.values = [value]
            self.printable = str(value)

    class Ratio:
        def __init__(self, num: int, den: int) -> None:
            self.num, self.den = num, den

    tags = {
        "Image ExposureTime": Tag(Ratio(1, 10)),
        "EXIF ExposureTime": Tag(Ratio(1, 20)),
        "Image ISOSpeedRatings": Tag(800),
        "Image Make": Tag("Canon"),
    }
    info = parse_exif(tags)
    assert info.exposure_time == pytest.approx(0.05)
    assert info.iso == 800 and info.make == "Canon"
    assert parse_exif({}) == ExifInfo()


def test_missing_exif_still_reads(tmp_path: Path) -> None:
    mosaic = np.full((600, 900), 600, dtype=np.uint16)
    mosaic[::7, ::5] = 900
    path = tmp_path / "noexif.dng"
    write_dng(path, mosaic, DngMetadata(pattern=pattern_letters("RGGB"), black=512))
    info, _ = read_info(path)
    assert info.exif.exposure_time is None and info.exif.iso is None


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.arw").write_bytes(b"")
    (tmp_path / "noise.raf").write_bytes(np.random.default_rng(0).bytes(50_000))
    (tmp_path / "dir.dng").mkdir()
    with pytest.raises(CorruptFileError, match="empty"):
        read_info(tmp_path / "empty.arw")
    with pytest.raises(UnsupportedFileError):
        read_info(tmp_path / "noise.raf")
    with pytest.raises(InputError, match="directory"):
        read_info(tmp_path / "dir.dng")
    with pytest.raises(InputError, match="not found"):
        read_info(tmp_path / "missing.nef")


def test_truncated_dng_is_refused(tmp_path: Path, make_dng) -> None:
    full = make_dng("full.dng", width=1200, height=800).read_bytes()
    cut = tmp_path / "cut.dng"
    cut.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_info(cut)


def test_flat_pixels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.dng"
    write_dng(path, np.zeros((600, 900), np.uint16), DngMetadata(pattern=XTRANS_PATTERN, black=512))
    with pytest.raises(CorruptFileError, match="no image data"), open_raw(path):
        pass
