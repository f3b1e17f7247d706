"""Putting prepared metadata (EXIF, XMP, ICC) into written TIFF, DNG and PNG files.

Nothing here rewrites image data, so memory stays independent of the image size:

* TIFF and DNG: a new first IFD (the writer's tags plus the metadata's) is appended at the end
  of the file, followed by the Exif and GPS IFDs, and the header is pointed at it. The old first
  IFD stays in the file as a few hundred unreferenced bytes; all its out-of-line values (strip
  offsets, colour matrices, ...) are still referenced where they are.
* PNG: ``iCCP``, ``eXIf`` and ``iTXt`` (XMP) chunks, written before the image data by
  :func:`sidraw.output.write_png_strips`.

Metadata arrives as :class:`Embedded` (built by :func:`sidraw.metadata.embedded`); entries hold
their values as little-endian bytes and are swapped for big-endian files.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

#: Bytes of one value of each TIFF field type (1 BYTE ... 18 IFD8).
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
              16: 8, 17: 8, 18: 8}  # fmt: skip
# The unit whose bytes a byte-order swap reverses (a rational is two 4-byte integers).
_SWAP_UNIT = {**TYPE_SIZES, 5: 4, 10: 4}

TAG_XMP = 700
TAG_ICC = 34675
TAG_EXIF_IFD = 34665
TAG_GPS_IFD = 34853


@dataclass(frozen=True)
class Entry:
    """One TIFF/EXIF field: tag, TIFF type, count and the values as little-endian bytes."""

    tag: int
    type: int
    count: int
    data: bytes

    def __post_init__(self) -> None:
        if self.type not in TYPE_SIZES or len(self.data) != self.count * TYPE_SIZES[self.type]:
            raise ValueError(f"tag {self.tag}: {len(self.data)} bytes for {self.count} of type "
                             f"{self.type}")  # fmt: skip


@dataclass(frozen=True)
class Embedded:
    """Metadata ready to be written into an output file.

    Attributes:
        ifd0: fields of the first IFD (Make, Model, Software, Orientation, ...), without the
            XMP, ICC and sub-IFD pointer fields, which are added from the other attributes.
        exif: fields of the Exif IFD (exposure, lens, capture time).
        gps: fields of the GPS IFD.
        xmp: the XMP packet, UTF-8 (empty: none).
        icc: the ICC profile (None: none).
    """

    ifd0: tuple[Entry, ...] = ()
    exif: tuple[Entry, ...] = ()
    gps: tuple[Entry, ...] = ()
    xmp: bytes = b""
    icc: bytes | None = None


@dataclass(frozen=True)
class _Format:
    """How a TIFF file lays out its IFDs: byte order and classic (32-bit) or BigTIFF."""

    order: str  # "<" or ">"
    big: bool

    @property
    def count(self) -> str:
        return self.order + ("Q" if self.big else "H")

    @property
    def offset(self) -> str:
        return self.order + ("Q" if self.big else "I")

    @property
    def entry(self) -> str:
        return self.order + ("HHQ" if self.big else "HHI")

    @property
    def field(self) -> int:
        """Bytes of an entry's value field (values that fit are stored in it)."""
        return 8 if self.big else 4

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def pointer_type(self) -> int:
        return 16 if self.big else 4  # LONG8 / LONG


# An IFD entry as stored: tag, type, count and its value field (inline value or offset).
_Stored = tuple[int, int, int, bytes]


def _swapped(entry: Entry, order: str) -> bytes:
    """The entry's values in ``order`` ("<" or ">")."""
    unit = _SWAP_UNIT[entry.type]
    if order == "<" or unit == 1:
        return entry.data
    data = entry.data
    return b"".join(data[i : i + unit][::-1] for i in range(0, len(data), unit))


def _ifd_block(
    fmt: _Format,
    stored: list[_Stored],
    entries: list[Entry],
    base: int,
    next_ifd: int = 0,
) -> bytes:
    """One IFD at file offset ``base``, followed by its out-of-line values.

    Args:
        fmt: the file's layout.
        stored: entries kept exactly as they are (their offsets still point into the file).
        entries: new entries, encoded here.
        base: where the block will be written (even).
        next_ifd: offset of the next IFD (0: none).
    """
    fields: dict[int, _Stored] = {tag: (tag, t, n, value) for tag, t, n, value in stored}
    n = len({*fields, *(e.tag for e in entries)})
    table = struct.calcsize(fmt.count) + n * fmt.entry_size + struct.calcsize(fmt.offset)
    extra = bytearray()
    for e in entries:
        data = _swapped(e, fmt.order)
        if len(data) <= fmt.field:
            value = data.ljust(fmt.field, b"\0")
        else:
            value = struct.pack(fmt.offset, base + table + len(extra))
            extra += data
            extra += b"\0" * (len(extra) % 2)  # values start on word boundaries
        fields[e.tag] = (e.tag, e.type, e.count, value)
    out = bytearray(struct.pack(fmt.count, n))
    for tag in sorted(fields):  # TIFF wants ascending tags
        tag, t, count, value = fields[tag]
        out += struct.pack(fmt.entry, tag, t, count) + value
    out += struct.pack(fmt.offset, next_ifd)
    return bytes(out + extra)


def _pointer(fmt: _Format, tag: int, offset: int) -> Entry:
    size = 8 if fmt.big else 4
    return Entry(tag, fmt.pointer_type, 1, offset.to_bytes(size, "little"))


def _sub_ifds(fmt: _Format, meta: Embedded, start: int) -> tuple[bytes, list[Entry]]:
    """The Exif and GPS IFDs written from offset ``start``, and the IFD0 entries pointing to
    them (and holding the XMP and ICC profile)."""
    blob = bytearray()
    pointers: list[Entry] = []
    for tag, entries in ((TAG_EXIF_IFD, meta.exif), (TAG_GPS_IFD, meta.gps)):
        if entries:
            pointers.append(_pointer(fmt, tag, start + len(blob)))
            blob += _ifd_block(fmt, [], list(entries), start + len(blob))
    if meta.xmp:
        pointers.append(Entry(TAG_XMP, 1, len(meta.xmp), meta.xmp))
    if meta.icc:
        pointers.append(Entry(TAG_ICC, 7, len(meta.icc), meta.icc))
    return bytes(blob), pointers


def _read_format(header: bytes) -> _Format:
    if header[:2] not in (b"II", b"MM"):
        raise ValueError("not a TIFF file")
    order = "<" if header[:2] == b"II" else ">"
    version = struct.unpack(order + "H", header[2:4])[0]
    if version not in (42, 43):
        raise ValueError("not a TIFF file")
    return _Format(order, version == 43)


def _read_ifd(f: BinaryIO, fmt: _Format, offset: int) -> tuple[list[_Stored], int]:
    """The stored entries of the IFD at ``offset`` and the offset of the next IFD."""
    f.seek(offset)
    (n,) = struct.unpack(fmt.count, f.read(struct.calcsize(fmt.count)))
    raw = f.read(n * fmt.entry_size + struct.calcsize(fmt.offset))
    if len(raw) != n * fmt.entry_size + struct.calcsize(fmt.offset):
        raise ValueError("truncated TIFF directory")
    stored = []
    head = struct.calcsize(fmt.entry)
    for i in range(n):
        e = raw[i * fmt.entry_size : (i + 1) * fmt.entry_size]
        tag, t, count = struct.unpack(fmt.entry, e[:head])
        stored.append((tag, t, count, e[head:]))
    (next_ifd,) = struct.unpack(fmt.offset, raw[n * fmt.entry_size :])
    return stored, next_ifd


def into_tiff(f: BinaryIO, meta: Embedded) -> None:
    """Add metadata to a written TIFF or DNG, open for reading and writing (``"r+b"``).

    Fields of ``meta`` replace fields of the same tag in the first IFD; its other fields (image
    structure, DNG tags) are kept. Only the end of the file and its 8 or 16 byte header are
    written.

    Raises:
        ValueError: the file is not a TIFF.
    """
    f.seek(0)
    header = f.read(16)
    fmt = _read_format(header)
    first_at = 8 if fmt.big else 4
    (first,) = struct.unpack(fmt.offset, header[first_at : first_at + fmt.field])
    stored, next_ifd = _read_ifd(f, fmt, first)
    end = f.seek(0, 2)
    start = end + end % 2  # IFDs start on word boundaries
    subs, pointers = _sub_ifds(fmt, meta, start)
    new_tags = {e.tag for e in (*meta.ifd0, *pointers)}
    kept = [s for s in stored if s[0] not in new_tags]
    ifd0_at = start + len(subs)
    ifd0 = _ifd_block(fmt, kept, [*meta.ifd0, *pointers], ifd0_at, next_ifd)
    f.write(b"\0" * (start - end) + subs + ifd0)
    f.seek(first_at)
    f.write(struct.pack(fmt.offset, ifd0_at))
    f.flush()


def exif_blob(meta: Embedded) -> bytes:
    """The EXIF of ``meta`` as a little-endian TIFF structure (a PNG ``eXIf`` chunk's body)."""
    fmt = _Format("<", False)
    ifd0_at = 8
    # The IFD0 table's size does not depend on where the sub-IFDs go: lay it out once to learn
    # where it ends, then again with the real offsets.
    probe_subs, probe_pointers = _sub_ifds(fmt, meta, 0)
    probe = _ifd_block(fmt, [], [*meta.ifd0, *_exif_only(probe_pointers)], ifd0_at)
    subs_at = ifd0_at + len(probe) + len(probe) % 2
    subs, pointers = _sub_ifds(fmt, meta, subs_at)
    ifd0 = _ifd_block(fmt, [], [*meta.ifd0, *_exif_only(pointers)], ifd0_at)
    assert len(ifd0) == len(probe) and len(subs) == len(probe_subs)
    return b"II*\0" + struct.pack("<I", ifd0_at) + ifd0 + b"\0" * (len(ifd0) % 2) + subs


def _exif_only(pointers: list[Entry]) -> list[Entry]:
    # In PNG the XMP and the profile have chunks of their own.
    return [p for p in pointers if p.tag in (TAG_EXIF_IFD, TAG_GPS_IFD)]


def png_chunks(meta: Embedded) -> list[tuple[bytes, bytes]]:
    """(type, body) of the PNG chunks carrying ``meta``, to be written before the image data."""
    chunks: list[tuple[bytes, bytes]] = []
    if meta.icc:
        chunks.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc)))
    if meta.ifd0 or meta.exif or meta.gps:
        chunks.append((b"eXIf", exif_blob(meta)))
    if meta.xmp:
        # Keyword, no compression, no language tag, no translated keyword, then the packet.
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + meta.xmp))
    return chunks
