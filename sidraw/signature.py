"""What a file is, from its first bytes: the raw format it holds, or what else it looks like.

LibRaw recognises raw files by their content, not their names; sidraw says what they are the
same way. :func:`raw_format` names the format shown by ``sidraw info`` (a DNG renamed ``.ARW`` is
a DNG), and :func:`looks_like_raw` tells a damaged raw file (which starts like one) from a file
that is no raw file at all, such as a text note or a JPEG, whatever its extension.
"""

from __future__ import annotations

import struct
from pathlib import Path

# (offset, bytes) that raw formats LibRaw reads start with.
_RAW_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (6, b"HEAPCCDR", "CRW"),  # Canon CIFF (before TIFF: it starts with a byte-order mark too)
    (0, b"IIRO", "ORF"),  # Olympus
    (0, b"IIRS", "ORF"),
    (0, b"MMOR", "ORF"),
    (0, b"IIU\0", "RW2"),  # Panasonic, Leica
    (0, b"II*\0", "TIFF"),  # DNG, NEF, ARW, CR2, PEF, SRW, ... (told apart below)
    (0, b"MM\0*", "TIFF"),
    (4, b"ftypcrx ", "CR3"),
    (0, b"FUJIFILM", "RAF"),
    (0, b"\0MRM", "MRW"),
    (0, b"FOVb", "X3F"),
    (0, b"IIII", "IIQ"),  # Phase One
    (0, b"MMMM", "IIQ"),
    (0, b"ARRI", "ARI"),
    (4, b"RED1", "R3D"),
    (4, b"RED2", "R3D"),
    (0, b"NOKIARAW", "RAW"),
    (0, b"RIFF", "RAW"),  # Sinar and others
)

# Formats that are certainly not raw photos, for a clearer message.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
)

_TIFF_DNG_VERSION = 50706


def _raw_kind(data: bytes) -> str | None:
    for offset, magic, kind in _RAW_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return kind
    return "JPEG" if _raw_after_jpeg_exif(data) else None


def _raw_after_jpeg_exif(data: bytes) -> bool:
    """A JPEG whose Exif segment is followed by raw data, not by the next JPEG marker.

    Some cameras store their raw file that way; LibRaw reads it (the test mirrors LibRaw's).
    """
    if data[:4] != b"\xff\xd8\xff\xe1" or data[6:10] != b"Exif" or len(data) < 6:
        return False
    end = 4 + int.from_bytes(data[4:6], "big")
    return end < len(data) and data[end] != 0xFF


def looks_like_raw(data: bytes) -> bool:
    """Whether the bytes start as some raw format LibRaw reads does."""
    return _raw_kind(data) is not None


def what_it_looks_like(data: bytes) -> str | None:
    """``"text"``, ``"a JPEG image"``, ... for files that are recognisably no raw photo."""
    if data[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    for magic, kind in _OTHER_MAGIC:
        if data.startswith(magic):
            return kind
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\n\r\t" for c in text):
        return "text"
    return None


def raw_format(data: bytes, name: str) -> str:
    """The format of a raw file as an upper-case name (``DNG``, ``CR2``, ``RAF``, ...).

    Read from the content; TIFF-based raws that carry no mark of their own (NEF, ARW, PEF, ...)
    keep their extension, unless it names another format.
    """
    ext = Path(name).suffix.lstrip(".").upper()
    kind = _raw_kind(data)
    if kind == "TIFF":
        if _is_dng(data):
            return "DNG"
        if data[8:11] == b"CR\x02":
            return "CR2"
        return ext if ext and ext not in _CONTENT_NAMED else "TIFF"
    if kind in (None, "JPEG", "RAW") or (kind == "RW2" and ext == "RWL"):
        return ext or "RAW"
    return kind


# Extensions whose format is known from the content: a TIFF-based file under one of these names
# is not what its name says.
_OWN_MARK = frozenset(k for _, _, k in _RAW_MAGIC if k not in ("TIFF", "RAW"))
_CONTENT_NAMED = _OWN_MARK | {"DNG", "CR2", "TIF", "TIFF"}


def _is_dng(data: bytes) -> bool:
    """Whether a TIFF's first IFD has a DNGVersion tag."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for k in range(count):
            (tag,) = struct.unpack_from(order + "H", data, ifd + 2 + 12 * k)
            if tag == _TIFF_DNG_VERSION:
                return True
    except struct.error:  # a truncated header: not a DNG as far as we can tell
        return False
    return False
