"""What an uploaded file's name may become. It never becomes a path.

Uploads are stored under generated names (:mod:`.jobs`); the name the browser sent is kept only
as text, to show it and to name the download. Here it is cut to its last component, cleaned of
control characters and cut to a sane length; downloads get an ASCII fallback plus the RFC 5987
UTF-8 form in ``Content-Disposition``, and the entries of a zip are made unique.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from urllib.parse import quote

from ..output import EXTENSIONS
from ..raw import RAW_EXTENSIONS

#: Longest name kept, in characters (file systems allow 255 bytes; leave room for suffixes).
MAX_NAME = 120
FALLBACK_NAME = "upload.raw"

# Characters that are no part of a portable file name (Windows forbids these; '/' and '\' split
# paths; control characters would break a header or a line).
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]')


def display_name(sent: str | None) -> str:
    """The uploaded file's name as shown and used for its download.

    The last component of ``sent`` (either slash), without control or reserved characters,
    leading dots or trailing spaces and dots; ``upload.raw`` if nothing is left.
    """
    text = unicodedata.normalize("NFC", sent or "")
    text = re.split(r"[/\\]", text)[-1]
    text = _UNSAFE.sub("_", text).strip().lstrip(".").rstrip(". ")
    if len(text) > MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        keep = ext if dot and 0 < len(ext) <= 8 else ""
        text = (stem if keep else text)[: MAX_NAME - len(keep) - 1].rstrip(". ")
        text = f"{text}.{keep}" if keep else text
    return text or FALLBACK_NAME


def stored_suffix(name: str) -> str:
    """The suffix an upload is stored with: its own when it is a raw extension, else ``.raw``.

    LibRaw reads by content; the suffix only lets ``sidraw info`` name TIFF-based formats.
    """
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in RAW_EXTENSIONS else ".raw"


def result_name(name: str, fmt: str) -> str:
    """``night.ARW`` converted to ``fmt`` (``tiff``, ``png``, ``dng``) -> ``night.tif``."""
    stem = PurePosixPath(name).stem or PurePosixPath(FALLBACK_NAME).stem
    return stem + EXTENSIONS[fmt]


def content_disposition(name: str) -> str:
    """An ``attachment`` header value naming ``name`` safely in every browser."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", ascii_name).strip() or "result"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def unique_names(names: list[str]) -> list[str]:
    """The same names, a second ``a.tif`` as ``a (2).tif``: entries of one zip never collide."""
    seen: set[str] = set()
    unique: list[str] = []
    for name in names:
        candidate, n = name, 1
        path = PurePosixPath(name)
        while candidate.lower() in seen:
            n += 1
            candidate = f"{path.stem} ({n}){path.suffix}"
        seen.add(candidate.lower())
        unique.append(candidate)
    return unique
