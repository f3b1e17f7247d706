"""Metadata written into finished files without rewriting their image data (sidraw.embed)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sidraw import metadata
from sidraw.embed import Embedded, Entry, exif_blob, into_tiff
from sidraw.output import write_png_strips, write_tiff_strips

ICC = bytes(range(256)) * 3


def sample_meta() -> Embedded:
    import exiv2

    tags = {
        "Exif.Image.Make": exiv2.AsciiValue("Sony"),
        "Exif.Image.Model": exiv2.AsciiValue("ILCE-7SM2"),
        "Exif.Photo.ExposureTime": exiv2.URationalValue([(1, 50)]),
        "Exif.Photo.ISOSpeedRatings": exiv2.UShortValue([6400]),
        "Exif.Photo.LensModel": exiv2.AsciiValue("FE 24mm F1.4 GM"),
        "Exif.Photo.ExposureBiasValue": exiv2.RationalValue([(-2, 3)]),
        "Exif.GPSInfo.GPSLatitudeRef": exiv2.AsciiValue("N"),
        "Exif.GPSInfo.GPSLatitude": exiv2.URationalValue([(48, 1), (51, 1), (30, 1)]),
    }
    record = metadata.SidrawRecord(ratio=90, ratio_mode="fixed", model="m", model_sha256="ab")
    return metadata.embedded(tags=tags, record=record, icc=ICC, orientation=1)


def check_tags(page: tifffile.TiffPage) -> None:
    tags = page.tags
    assert tags["Make"].value == "Sony" and tags["Model"].value == "ILCE-7SM2"
    assert tags["Software"].value.startswith("sidraw") and tags["Orientation"].value == 1
    exif = tags["ExifTag"].value
    assert exif["ExposureTime"] == (1, 50) and exif["ISOSpeedRatings"] == 6400
    assert exif["LensModel"] == "FE 24mm F1.4 GM" and exif["ExposureBiasValue"] == (-2, 3)
    gps = tags["GPSTag"].value
    assert gps["GPSLatitudeRef"] == "N" and gps["GPSLatitude"] == (48, 1, 51, 1, 30, 1)
    assert bytes(tags["InterColorProfile"].value) == ICC
    xmp = bytes(tags["XMP"].value).decode()
    assert "sidraw:Ratio" in xmp and "90.0000" in xmp


@pytest.mark.parametrize(("byteorder", "bigtiff"), [("<", False), (">", False), ("<", True)])
def test_into_tiff_adds_metadata_and_keeps_the_image(
    tmp_path: Path, byteorder: str, bigtiff: bool
) -> None:
    rgb = np.random.default_rng(0).integers(0, 65535, (70, 50, 3), dtype=np.uint16)
    path = tmp_path / "a.tif"
    tifffile.imwrite(
        path, rgb, byteorder=byteorder, bigtiff=bigtiff, photometric="rgb",
        compression="zlib", rowsperstrip=16, description="kept", metadata=None,
    )  # fmt: skip
    before = path.read_bytes()
    with open(path, "r+b") as f:
        into_tiff(f, sample_meta())
    after = path.read_bytes()
    # Nothing but the header's first-IFD offset changes; the rest is appended.
    at, size = (8, 8) if bigtiff else (4, 4)
    assert after[:at] == before[:at]
    assert after[at + size : len(before)] == before[at + size :]
    assert len(after) - len(before) < 4096
    with tifffile.TiffFile(path) as tf:
        assert tf.byteorder == byteorder and tf.is_bigtiff == bigtiff
        page = tf.pages[0]
        assert np.array_equal(page.asarray(), rgb)
        assert page.tags["ImageDescription"].value == "kept"
        check_tags(page)


def test_into_tiff_refuses_other_files() -> None:
    with pytest.raises(ValueError, match="not a TIFF"):
        into_tiff(io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(40)), Embedded())


def test_strip_writers_embed_metadata(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 65535, (130, 40, 3), dtype=np.uint16)
    strips = [rgb[:50], rgb[50:]]
    meta = sample_meta()
    tif, png = tmp_path / "a.tif", tmp_path / "a.png"
    with open(tif, "w+b") as f:
        write_tiff_strips(f, (130, 40), strips, meta)
    with tifffile.TiffFile(tif) as tf:
        assert np.array_equal(tf.pages[0].asarray(), rgb)
        check_tags(tf.pages[0])
    with open(png, "wb") as f:
        write_png_strips(f, (130, 40), strips, meta)
    with Image.open(png) as im:
        assert im.info["icc_profile"] == ICC
        assert "sidraw:Ratio" in im.info["XML:com.adobe.xmp"]
        exif = im.getexif()
        assert exif[0x010F] == "Sony" and exif[0x0112] == 1
        sub = exif.get_ifd(0x8769)
        assert float(sub[0x829A]) == pytest.approx(0.02) and sub[0xA434] == "FE 24mm F1.4 GM"
        assert exif.get_ifd(0x8825)[1] == "N"


def test_exif_blob_is_a_tiff_structure() -> None:
    blob = exif_blob(sample_meta())
    assert blob[:4] == b"II*\0" and struct.unpack("<I", blob[4:8])[0] == 8
    with tifffile.TiffFile(io.BytesIO(blob + bytes(16))) as tf:
        tags = tf.pages.first.tags  # an IFD without image data: read the tags only
        assert tags["Make"].value == "Sony" and "ExifTag" in tags


def test_entries_check_their_size() -> None:
    with pytest.raises(ValueError):
        Entry(271, 3, 2, b"\0\0")  # two SHORTs need 4 bytes
