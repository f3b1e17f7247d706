"""Carrying metadata from the raw file into the outputs: read and encoded with exiv2.

The photographer's metadata (camera, lens, capture time, exposure, GPS, author) is copied from the
raw file; sidraw adds ``Software``, an orientation of 1 (pixels are already rotated), an ICC profile
and an XMP record of what it did (ratio and how it was chosen, model name and sha256).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import struct
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import exiv2

from . import __version__
from .embed import Embedded, Entry
from .raw import ExifInfo

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
    """EXIF of a raw file's bytes (None when exiv2 cannot read the format).

    Canon CRW files get their exposure time and ISO from the camera's shot information, which
    exiv2 decodes wrongly (it reads signed values as unsigned: a 5 s exposure becomes 1 s).
    """
    with _EXIV2_LOCK:
        try:
            image = exiv2.ImageFactory.open(data)
            image.readMetadata()
        except exiv2.Exiv2Error:
            return None
        exif = image.exifData()
        if image.mimeType() == "image/x-canon-crw":
            _repair_crw(exif)
        return exif


def _signed16(value: int) -> int:
    return value - 0x10000 if value >= 0x8000 else value


def _canon_ev(value: int) -> float:
    """Canon's APEX encoding (1/32 EV, thirds as 12 and 20) of a 16-bit value, in EV."""
    value = _signed16(value)
    sign, value = (-1 if value < 0 else 1), abs(value)
    frac = value & 0x1F
    thirds = {0x0C: 32 / 3, 0x14: 64 / 3}.get(frac, frac)
    return sign * (value - frac + thirds) / 32


def _int_tag(exif: exiv2.ExifData, key: str) -> int | None:
    if key not in exif:
        return None
    datum = exif[key]
    return int(datum.toInt64(0)) if datum.count() else None


def _repair_crw(exif: exiv2.ExifData) -> None:
    """Exposure time and ISO of a CRW from its Canon shot information (as exiftool reads it)."""
    shutter = _int_tag(exif, "Exif.CanonSi.ShutterSpeedValue") or _int_tag(
        exif, "Exif.CanonSi.TargetShutterSpeed"
    )
    if shutter:
        seconds = Fraction(2 ** -_canon_ev(shutter)).limit_denominator(100_000)
        exif["Exif.Photo.ExposureTime"] = f"{seconds.numerator}/{seconds.denominator}"
    base = _int_tag(exif, "Exif.CanonSi.ISOSpeed")
    if base and "Exif.Photo.ISOSpeedRatings" not in exif:
        # Base ISO times the automatic ISO factor, each in 1/32 EV steps.
        auto = _signed16(_int_tag(exif, "Exif.CanonSi.AutoISO") or 0)
        iso = 100 / 32 * 2 ** (_signed16(base) / 32) * 2 ** (auto / 32)
        exif["Exif.Photo.ISOSpeedRatings"] = str(round(iso))


def _number(exif: exiv2.ExifData, *keys: str) -> float | None:
    """The first positive, finite value among ``keys`` (zero means "not recorded")."""
    for key in keys:
        if key in exif and exif[key].count():
            value = float(exif[key].toFloat(0))
            if math.isfinite(value) and value > 0:
                return value
    return None


def _text(exif: exiv2.ExifData, *keys: str) -> str | None:
    for key in keys:
        if key in exif:
            text = exif[key].toString().strip().strip("\0").strip()
            if text:
                return text
    return None


def exif_info(data: bytes) -> ExifInfo:
    """Camera and exposure metadata as exiv2 reads them (every field may be None)."""
    source = read_source(data)
    if source is None:
        return ExifInfo()
    with _EXIV2_LOCK:
        return ExifInfo(
            make=_text(source, "Exif.Image.Make"),
            model=_text(source, "Exif.Image.Model"),
            lens_model=_text(source, "Exif.Photo.LensModel"),
            exposure_time=_number(source, "Exif.Photo.ExposureTime", "Exif.Image.ExposureTime"),
            f_number=_number(source, "Exif.Photo.FNumber", "Exif.Image.FNumber"),
            iso=_number(source, "Exif.Photo.ISOSpeedRatings", "Exif.Image.ISOSpeedRatings"),
            focal_length=_number(source, "Exif.Photo.FocalLength", "Exif.Image.FocalLength"),
            datetime_original=_text(
                source, "Exif.Photo.DateTimeOriginal", "Exif.Image.DateTimeOriginal"
            ),
        )


def fill_exif(info: ExifInfo, data: bytes) -> ExifInfo:
    """``info`` (from exifread) with its missing fields taken from exiv2 where it has them."""
    fallback = exif_info(data)
    missing = {
        f.name: getattr(fallback, f.name)
        for f in dataclasses.fields(ExifInfo)
        if getattr(info, f.name) is None and getattr(fallback, f.name) is not None
    }
    return dataclasses.replace(info, **missing) if missing else info


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


# Field types whose values exiv2 gives as integers, and how they are packed (little-endian).
_INT_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 16: "Q", 17: "q"}
_IFD_OF_GROUP = {"Image": "ifd0", "Photo": "exif", "GPSInfo": "gps"}


def embedded(
    *,
    tags: dict[str, Any],
    record: SidrawRecord | None = None,
    icc: bytes | None = None,
    orientation: int | None = 1,
) -> Embedded:
    """The metadata of an output, ready for :func:`sidraw.embed.into_tiff` or the PNG writer.

    Args:
        tags: from :func:`select_tags`.
        record: sidraw's XMP record (None: no XMP).
        icc: ICC profile to embed (None: none).
        orientation: value of the Orientation tag (None: none, e.g. a DNG that keeps its own).
    """
    with _EXIV2_LOCK:
        exif = exiv2.ExifData()
        for key, value in tags.items():
            exif[key] = value
        exif["Exif.Image.Software"] = f"sidraw {__version__}"
        if orientation is not None:
            exif["Exif.Image.Orientation"] = orientation
        ifds: dict[str, list[Entry]] = {"ifd0": [], "exif": [], "gps": []}
        for datum in exif:
            ifd = _IFD_OF_GROUP.get(datum.groupName())
            entry = _entry(datum.tag(), datum.value())
            if ifd is not None and entry is not None:
                ifds[ifd].append(entry)
        xmp = _xmp_packet(record) if record is not None else b""
    return Embedded(
        ifd0=tuple(ifds["ifd0"]),
        exif=tuple(ifds["exif"]),
        gps=tuple(ifds["gps"]),
        xmp=xmp,
        icc=icc or None,
    )


def _entry(tag: int, value: exiv2.Value) -> Entry | None:
    """An exiv2 value as a TIFF field (None for types that have no TIFF form)."""
    t = int(value.typeId())
    n = value.count()
    if t == 2:  # ASCII, NUL-terminated
        data = value.toString().rstrip("\0").encode("utf-8", "replace") + b"\0"
        return Entry(tag, t, len(data), data)
    if t in _INT_FORMATS:
        ints = [value.toInt64(i) for i in range(n)]
        return Entry(tag, t, n, struct.pack(f"<{n}{_INT_FORMATS[t]}", *ints))
    if t in (5, 10):  # (unsigned) rationals
        pairs = [v for i in range(n) for v in value.toRational(i)]
        return Entry(tag, t, n, struct.pack(f"<{2 * n}{'I' if t == 5 else 'i'}", *pairs))
    if t in (11, 12):
        floats = [value.toFloat(i) for i in range(n)]
        return Entry(tag, t, n, struct.pack(f"<{n}{'f' if t == 11 else 'd'}", *floats))
    return None


def _xmp_packet(record: SidrawRecord) -> bytes:
    _register_namespace()
    xmp = exiv2.XmpData()
    xmp["Xmp.xmp.CreatorTool"] = f"sidraw {__version__}"
    xmp["Xmp.xmp.ModifyDate"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    xmp[f"Xmp.{XMP_PREFIX}.Version"] = __version__
    xmp[f"Xmp.{XMP_PREFIX}.Ratio"] = f"{record.ratio:.4f}"
    xmp[f"Xmp.{XMP_PREFIX}.RatioMode"] = record.ratio_mode
    xmp[f"Xmp.{XMP_PREFIX}.Model"] = record.model
    xmp[f"Xmp.{XMP_PREFIX}.ModelSHA256"] = record.model_sha256
    for k, v in record.extra.items():
        xmp[f"Xmp.{XMP_PREFIX}.{k}"] = v
    rc, packet = exiv2.XmpParser.encode(xmp)
    if rc != 0:
        raise RuntimeError(f"exiv2 could not encode XMP (code {rc})")
    return packet.encode("utf-8")
