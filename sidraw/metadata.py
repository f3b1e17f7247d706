"""Carrying metadata from the raw file into the outputs, with exiv2.

The photographer's metadata (camera, lens, capture time, exposure, GPS, author) is copied from the
raw file; sidraw adds ``Software``, an orientation of 1 (pixels are already rotated), an ICC profile
and an XMP record of what it did (ratio and how it was chosen, model name and sha256).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import exiv2

from . import __version__

XMP_NAMESPACE = "https://github.com/sidraw/sidraw/ns/1.0/"
XMP_PREFIX = "sidraw"

# Tags copied from the raw file. DNG and some raw formats keep exposure tags in IFD0 ("Image"):
# those are moved to the Exif sub-IFD ("Photo") where editors look for them.
_COPY_IMAGE = ("Make", "Model", "Artist", "Copyright")
_COPY_PHOTO = (
    "LensMake",
    "LensModel",
    "LensSpecification",
    "LensSerialNumber",
    "BodySerialNumber",
    "DateTimeOriginal",
    "DateTimeDigitized",
    "SubSecTimeOriginal",
    "SubSecTimeDigitized",
    "OffsetTime",
    "OffsetTimeOriginal",
    "OffsetTimeDigitized",
    "ExposureTime",
    "FNumber",
    "ISOSpeedRatings",
    "RecommendedExposureIndex",
    "SensitivityType",
    "ExposureProgram",
    "ExposureBiasValue",
    "ExposureMode",
    "MeteringMode",
    "Flash",
    "FocalLength",
    "FocalLengthIn35mmFilm",
    "WhiteBalance",
)
_IFD0_TO_PHOTO = {
    "Exif.Image.ExposureTime": "Exif.Photo.ExposureTime",
    "Exif.Image.FNumber": "Exif.Photo.FNumber",
    "Exif.Image.ISOSpeedRatings": "Exif.Photo.ISOSpeedRatings",
    "Exif.Image.DateTimeOriginal": "Exif.Photo.DateTimeOriginal",
    "Exif.Image.FocalLength": "Exif.Photo.FocalLength",
    "Exif.Image.ExposureBiasValue": "Exif.Photo.ExposureBiasValue",
    "Exif.Image.LensInfo": "Exif.Photo.LensSpecification",
}


@dataclass
class SidrawRecord:
    """What sidraw did, stored in XMP (``Xmp.sidraw.*``)."""

    ratio: float
    ratio_mode: str
    model: str
    model_sha256: str
    extra: dict[str, str] = field(default_factory=dict)


# Batches read one file's metadata while another thread writes the previous output's; exiv2 (its
# XMP toolkit above all) is not documented as safe for that, so every call into it takes turns.
_EXIV2_LOCK = threading.RLock()


def _register_namespace() -> None:
    with contextlib.suppress(exiv2.Exiv2Error):  # already registered in this process
        exiv2.XmpProperties.registerNs(XMP_NAMESPACE, XMP_PREFIX)


def read_source(data: bytes) -> exiv2.ExifData | None:
    """EXIF of a raw file's bytes (None when exiv2 cannot read the format)."""
    with _EXIV2_LOCK:
        try:
            image = exiv2.ImageFactory.open(data)
            image.readMetadata()
        except exiv2.Exiv2Error:
            return None
        return image.exifData()


def select_tags(source: exiv2.ExifData | None, *, strip_gps: bool = False) -> dict[str, Any]:
    """The tags to carry over: key -> exiv2 value, IFD0 exposure tags moved to the Exif IFD."""
    if source is None:
        return {}
    with _EXIV2_LOCK:
        return _select(source, strip_gps)


def _select(source: exiv2.ExifData, strip_gps: bool) -> dict[str, Any]:
    wanted = {f"Exif.Image.{t}" for t in _COPY_IMAGE} | {f"Exif.Photo.{t}" for t in _COPY_PHOTO}
    tags: dict[str, Any] = {}
    for datum in source:
        key = datum.key()
        if key in wanted or (key.startswith("Exif.GPSInfo.") and not strip_gps):
            tags[key] = datum.getValue()
    for ifd0, photo in _IFD0_TO_PHOTO.items():
        if photo not in tags and ifd0 in source:
            tags[photo] = source[ifd0].getValue()
    return tags


def apply(
    encoded: bytes,
    *,
    tags: dict[str, Any],
    record: SidrawRecord | None = None,
    icc: bytes | None = None,
    orientation: int | None = 1,
) -> bytes:
    """Write metadata into an encoded TIFF, PNG or DNG held in memory; returns the new bytes.

    Arguments as for :func:`apply_to_file`.
    """
    with _EXIV2_LOCK:
        image = exiv2.ImageFactory.open(encoded)
        _update(image, tags=tags, record=record, icc=icc, orientation=orientation)
        io = image.io()
        with io.mmap() as view:
            return bytes(view)


def apply_to_file(
    path: str | os.PathLike[str],
    *,
    tags: dict[str, Any],
    record: SidrawRecord | None = None,
    icc: bytes | None = None,
    orientation: int | None = 1,
) -> None:
    """Write metadata into a TIFF, PNG or DNG file in place.

    Args:
        path: the image file.
        tags: from :func:`select_tags`.
        record: sidraw's XMP record.
        icc: ICC profile to embed (None: none).
        orientation: value of the Orientation tag (None: leave as the tags say).
    """
    with _EXIV2_LOCK:
        image = exiv2.ImageFactory.open(os.fspath(path))
        _update(image, tags=tags, record=record, icc=icc, orientation=orientation)


def _update(
    image: exiv2.Image,
    *,
    tags: dict[str, Any],
    record: SidrawRecord | None,
    icc: bytes | None,
    orientation: int | None,
) -> None:
    image.readMetadata()
    exif = image.exifData()
    for key, value in tags.items():
        exif[key] = value
    exif["Exif.Image.Software"] = f"sidraw {__version__}"
    if orientation is not None:
        exif["Exif.Image.Orientation"] = orientation
    image.setExifData(exif)
    if record is not None:
        _register_namespace()
        xmp = image.xmpData()
        xmp["Xmp.xmp.CreatorTool"] = f"sidraw {__version__}"
        xmp["Xmp.xmp.ModifyDate"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        xmp[f"Xmp.{XMP_PREFIX}.Version"] = __version__
        xmp[f"Xmp.{XMP_PREFIX}.Ratio"] = f"{record.ratio:.4f}"
        xmp[f"Xmp.{XMP_PREFIX}.RatioMode"] = record.ratio_mode
        xmp[f"Xmp.{XMP_PREFIX}.Model"] = record.model
        xmp[f"Xmp.{XMP_PREFIX}.ModelSHA256"] = record.model_sha256
        for k, v in record.extra.items():
            xmp[f"Xmp.{XMP_PREFIX}.{k}"] = v
        image.setXmpData(xmp)
    if icc:
        image.setIccProfile(exiv2.DataBuf(icc))
    image.writeMetadata()
