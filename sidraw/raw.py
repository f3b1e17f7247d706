"""Reading raw files: photosites, CFA layout and levels through LibRaw, exposure data through EXIF.

This is the input edge of the pipeline: everything after it works on numpy arrays and the small
:class:`RawInfo` record.
"""

from __future__ import annotations

import ctypes
import io
import logging
import mmap
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import exifread
import numpy as np
import rawpy

from .errors import CorruptFileError, InputError, MetadataError, UnsupportedFileError
from .mosaic import Layout, layout_from_pattern
from .signature import looks_like_raw, raw_format, what_it_looks_like

#: Extensions (lower case, with dot) that batch mode picks up from folders. Any file given
#: explicitly is tried whatever its extension.
RAW_EXTENSIONS = frozenset(
    ".3fr .ari .arw .bay .cap .cr2 .cr3 .crw .dcr .dcs .dng .drf .eip .erf "  # noqa: SIM905
    ".fff .iiq .k25 .kdc .mdc .mef .mos .mrw .nef .nrw .orf .pef .ptx .pxn .r3d .raf .raw .rw2 "
    ".rwl .rwz .sr2 .srf .srw .x3f".split()
)

#: Largest photosite count accepted before decoding (500 MP, beyond pixel-shift composites);
#: protects memory from absurd header values.
MAX_PHOTOSITES = 500_000_000

# Lossless and lossy raw codecs stay above ~0.25 byte per photosite; a file far below that
# cannot hold its image data (it was truncated), even though LibRaw may decode it silently.
_MIN_BYTES_PER_PHOTOSITE = 0.05
# Files smaller than this are decoded before the truncation check when their header claims at most
# _SMALL_DECODE_PHOTOSITES (the decode is then cheap: LibRaw allocates the claimed size up front).
_SMALL_DECODE_BYTES = 1 << 20
_SMALL_DECODE_PHOTOSITES = 1 << 25  # 32 MP: at most 256 MB even for 4-channel data
# Larger files are not raw photos (500 MP of 16-bit photosites plus previews stay below this);
# reading them whole would only exhaust memory.
MAX_FILE_BYTES = 4 * MAX_PHOTOSITES


@dataclass(frozen=True)
class ExifInfo:
    """Exposure metadata from EXIF; every field may be missing (None)."""

    make: str | None = None
    model: str | None = None
    lens_model: str | None = None
    exposure_time: float | None = None  # seconds
    f_number: float | None = None
    iso: float | None = None
    focal_length: float | None = None  # mm
    datetime_original: str | None = None  # "YYYY:MM:DD HH:MM:SS"
    orientation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RawInfo:
    """What sidraw knows about one raw file, without its pixels.

    Attributes:
        path: file name as given.
        format: the raw format, from the content (:func:`sidraw.signature.raw_format`), e.g.
            ``"DNG"``; TIFF-based formats without a mark of their own keep their extension.
        width, height: visible photosites.
        layout: the CFA packing layout.
        black: (P, P) float32 black level of each CFA position in DN.
        white: white (saturation) level in DN.
        wb_multipliers: as-shot white-balance gains (R, G, B), green = 1.
        color_matrix: (3, 3) XYZ -> camera matrix from the file (LibRaw ``rgb_xyz_matrix``).
        exif: exposure metadata.
        flip: LibRaw orientation code (0 none, 3 = 180, 5 = 90 CCW, 6 = 90 CW).
    """

    path: str
    format: str
    width: int
    height: int
    layout: Layout
    black: np.ndarray
    white: float
    wb_multipliers: tuple[float, float, float]
    color_matrix: np.ndarray
    exif: ExifInfo = field(default_factory=ExifInfo)
    flip: int = 0

    @property
    def cfa_pattern(self) -> str:
        """The CFA pattern as letters, row-major from the top-left visible photosite."""
        return "".join(str(c) for c in self.layout.pattern.ravel())


@dataclass
class RawFile:
    """An open raw file: metadata, the visible mosaic and the LibRaw handle used for rendering.

    Attributes:
        info: metadata.
        mosaic: (H, W) uint16 visible photosites in DN (black level included), a view into
            LibRaw's buffer: it is overwritten when a new mosaic is rendered.
        handle: the open ``rawpy.RawPy``.
        data: the file's bytes (for copying its metadata), until :meth:`drop_data`.
        owns_data: whether :func:`open_raw` read ``data`` itself (rather than being given them).
    """

    info: RawInfo
    mosaic: np.ndarray
    handle: rawpy.RawPy
    data: bytes = b""
    owns_data: bool = False

    def drop_data(self) -> None:
        """Let go of the file's bytes once its metadata has been read from them.

        rawpy keeps a reference to the bytes until the handle is closed, although LibRaw reads
        them only while opening and decoding the file. Bytes that :func:`open_raw` read itself
        are therefore given back to the system here (their pages read as zeros afterwards), so
        that a file is not held twice, as bytes and as decoded photosites, while it is denoised
        and rendered. Bytes a caller passed in are left alone.
        """
        data, self.data = self.data, b""
        if self.owns_data:
            _release_pages(data)


def _release_pages(data: bytes) -> None:
    """Give the whole memory pages under a large bytes object back to the system (Linux only).

    The object stays valid and can be freed as usual; what it holds reads as zeros afterwards.
    """
    if not sys.platform.startswith("linux") or len(data) < _RELEASE_MIN_BYTES:
        return
    page = mmap.PAGESIZE
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    if not address:
        return
    start = -(-address // page) * page  # the allocator's header before the data is left alone
    stop = (address + len(data)) // page * page
    if stop > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), mmap.MADV_DONTNEED)


_RELEASE_MIN_BYTES = 1 << 20


def _ratio_value(tag: Any) -> float | None:
    try:
        value = tag.values[0]
    except (AttributeError, IndexError, TypeError):
        return None
    try:
        if hasattr(value, "num"):
            if value.den == 0:
                return None
            return float(Fraction(value.num, value.den))
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _text_value(tag: Any) -> str | None:
    if tag is None:
        return None
    text = str(tag.printable if hasattr(tag, "printable") else tag).strip().strip("\x00").strip()
    return text or None


def parse_exif(tags: dict[str, Any]) -> ExifInfo:
    """Exposure metadata from an exifread tag dictionary.

    Both the ``EXIF ...`` sub-IFD and the ``Image ...`` (IFD0, as TIFF/EP and some raw formats
    store them) spellings are accepted; the EXIF one wins when both exist.
    """

    def pick(name: str) -> Any:
        return tags.get(f"EXIF {name}") or tags.get(f"Image {name}")

    iso_tag = pick("ISOSpeedRatings") or pick("PhotographicSensitivity") or pick("ISOSpeed")
    orientation = tags.get("Image Orientation")
    orient_value: int | None = None
    if orientation is not None:
        try:
            orient_value = int(orientation.values[0])
        except (AttributeError, IndexError, TypeError, ValueError):
            orient_value = None
    exposure = _ratio_value(pick("ExposureTime"))
    return ExifInfo(
        make=_text_value(tags.get("Image Make")),
        model=_text_value(tags.get("Image Model")),
        lens_model=_text_value(pick("LensModel")),
        exposure_time=exposure if exposure and exposure > 0 else None,
        f_number=_ratio_value(pick("FNumber")) or None,
        iso=_ratio_value(iso_tag) or None,
        focal_length=_ratio_value(pick("FocalLength")) or None,
        datetime_original=_text_value(pick("DateTimeOriginal")),
        orientation=orient_value,
    )


def read_exif(data: bytes) -> ExifInfo:
    """Parse EXIF from the bytes of a raw file; a file without EXIF gives empty fields."""
    try:
        with _EXIFREAD_QUIET:
            # exifread logs a warning line per damaged tag; EXIF is optional, keep stderr clean.
            logger = logging.getLogger("exifread")
            disabled, logger.disabled = logger.disabled, True
            try:
                tags = exifread.process_file(io.BytesIO(data), details=False, debug=False)
            finally:
                logger.disabled = disabled
    except Exception:  # exifread raises many kinds on odd files; EXIF is optional
        tags = {}
    info = parse_exif(tags)
    wanted = (info.make, info.model, info.exposure_time, info.iso, info.f_number)
    if None in (*wanted, info.datetime_original):
        # exifread reads TIFF-based files only (not CRW, for one): exiv2 fills in what it lacks.
        from .metadata import fill_exif

        info = fill_exif(info, data)
    return info


_EXIFREAD_QUIET = threading.Lock()


def _check_input_path(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except PermissionError:
        raise InputError("permission denied", path) from None
    except OSError as exc:  # e.g. a symlink loop, a name too long
        raise InputError(f"cannot read: {exc.strerror or exc}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, not a raw file", path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file", path)
    if st.st_size == 0:
        raise CorruptFileError("empty file", path)
    if st.st_size > MAX_FILE_BYTES:
        raise UnsupportedFileError(f"too large for a raw file ({st.st_size / 2**30:.1f} GiB)", path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise InputError("permission denied", path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path) from None


_STDERR_LOCK = threading.Lock()
# LibRaw prints its data-error callback as "<name>: <message>"; buffers have no name.
_LIBRAW_PREFIX = "unknown file: "


@contextmanager
def _libraw_messages() -> Iterator[list[str]]:
    """Collect what LibRaw prints on file descriptor 2 (e.g. "Unexpected end of file").

    LibRaw reports damaged data only on the C stderr; the messages become part of sidraw's error
    instead of stray lines between progress output. Anything else printed meanwhile is passed on.
    """
    messages: list[str] = []
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            yield messages
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield messages
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                other = []
                for line in tmp.read().decode(errors="replace").splitlines():
                    if line.startswith(_LIBRAW_PREFIX):
                        messages.append(line[len(_LIBRAW_PREFIX) :].strip())
                    elif line.strip():
                        other.append(line)
                if other:
                    os.write(2, ("\n".join(other) + "\n").encode())


def _open_libraw(data: bytes, name: str) -> rawpy.RawPy:
    raw = rawpy.RawPy()
    try:
        with _libraw_messages():
            raw.open_buffer(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError:
        raw.close()
        looks = what_it_looks_like(data)
        reason = "not a raw format LibRaw can read" + (f" ({looks})" if looks else "")
        raise UnsupportedFileError(reason, name) from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError) as exc:
        raw.close()
        if not looks_like_raw(data):
            # LibRaw read past the end of something that never was a raw file (a short note).
            looks = what_it_looks_like(data) or f"{len(data)} bytes that no raw format starts with"
            raise UnsupportedFileError(f"not a raw file ({looks})", name) from None
        reason = f"damaged or truncated raw data ({_libraw_reason(exc)})"
        raise CorruptFileError(reason, name) from None
    except rawpy.LibRawError as exc:
        raw.close()
        raise CorruptFileError(f"LibRaw cannot open it ({_libraw_reason(exc)})", name) from None
    return raw


def _libraw_reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip() or type(exc).__name__


def _check_sizes(raw: rawpy.RawPy, name: str) -> None:
    sizes = raw.sizes
    photosites = int(sizes.raw_width) * int(sizes.raw_height)
    if sizes.width < 6 or sizes.height < 6 or photosites <= 0:
        raise MetadataError(f"implausible image size {sizes.width}x{sizes.height}", name)
    if photosites > MAX_PHOTOSITES:
        raise MetadataError(
            f"implausible image size {sizes.raw_width}x{sizes.raw_height} in the header", name
        )


def _check_bytes(raw: rawpy.RawPy, n_bytes: int, name: str) -> None:
    sizes = raw.sizes
    if n_bytes < int(sizes.raw_width) * int(sizes.raw_height) * _MIN_BYTES_PER_PHOTOSITE:
        raise CorruptFileError(
            f"truncated: {n_bytes} bytes cannot hold {sizes.raw_width}x{sizes.raw_height} "
            "photosites",
            name,
        )


def _unpack(raw: rawpy.RawPy, name: str) -> None:
    try:
        with _libraw_messages() as messages:
            raw.unpack()
    except (rawpy.LibRawIOError, rawpy.LibRawDataError) as exc:
        detail = "; ".join(messages) or _libraw_reason(exc)
        raise CorruptFileError(f"damaged or truncated raw data ({detail})", name) from None
    except rawpy.LibRawError as exc:
        raise CorruptFileError(f"LibRaw cannot decode it ({_libraw_reason(exc)})", name) from None
    if messages:
        # LibRaw decodes some truncated files "successfully", filling the rest with garbage.
        raise CorruptFileError(f"damaged or truncated raw data ({'; '.join(messages)})", name)


def _layout(raw: rawpy.RawPy, name: str) -> Layout:
    try:
        pattern = raw.raw_pattern
    except NotImplementedError as exc:  # rawpy knows no pattern for LibRaw's "filters" code
        raise UnsupportedFileError(f"unsupported sensor layout ({exc})", name) from None
    if pattern is None or raw.raw_type != rawpy.RawType.Flat:
        raise UnsupportedFileError(
            "linear (already demosaiced) raw files are not supported yet: sidraw needs the "
            "sensor's colour filter mosaic",
            name,
        )
    desc = raw.color_desc.decode("ascii", errors="replace")
    if raw.num_colors != 3 or any(c not in "RGB" for c in desc):
        raise UnsupportedFileError(f"unsupported colour filters {desc!r} (only RGB CFAs)", name)
    try:
        return layout_from_pattern(np.asarray(pattern), desc)
    except UnsupportedFileError as exc:
        raise UnsupportedFileError(exc.reason, name) from None


def _levels(raw: rawpy.RawPy, layout: Layout, name: str) -> tuple[np.ndarray, float]:
    per_colour = np.asarray(raw.black_level_per_channel, dtype=np.float32)
    black = per_colour[np.asarray(raw.raw_pattern)]
    white = float(raw.white_level)
    if not np.isfinite(white) or white <= float(black.max()) + 16:
        raise MetadataError(f"implausible levels (black {black.max():g}, white {white:g})", name)
    return black.astype(np.float32), white


def _wb(raw: rawpy.RawPy) -> tuple[float, float, float]:
    wb = [float(v) for v in raw.camera_whitebalance[:3]]
    if not all(np.isfinite(wb)) or min(wb) <= 0:
        wb = [float(v) for v in raw.daylight_whitebalance[:3]]
    if not all(np.isfinite(wb)) or min(wb) <= 0:
        return (1.0, 1.0, 1.0)
    g = wb[1]
    return (wb[0] / g, 1.0, wb[2] / g)


def _check_pixels(mosaic: np.ndarray, black: np.ndarray, name: str) -> None:
    # A truncated file that LibRaw decodes without complaint leaves its missing rows at zero.
    step = max(1, int(np.sqrt(mosaic.size / 250_000)))
    sample = mosaic[::step, ::step]
    if sample.size and int(sample.max()) == int(sample.min()):
        raise CorruptFileError(
            f"no image data: every photosite has the value {int(sample.max())}", name
        )
    if float(black.min()) > 0:
        zero_rows = np.all(sample == 0, axis=1)
        if zero_rows.mean() > 0.05:
            raise CorruptFileError(
                f"truncated: {zero_rows.mean():.0%} of the rows hold no data", name
            )


def _info(raw: rawpy.RawPy, name: str, exif: ExifInfo, layout: Layout, fmt: str) -> RawInfo:
    black, white = _levels(raw, layout, name)
    sizes = raw.sizes
    return RawInfo(
        path=name,
        format=fmt,
        width=int(sizes.width),
        height=int(sizes.height),
        layout=layout,
        black=black,
        white=white,
        wb_multipliers=_wb(raw),
        color_matrix=np.asarray(raw.rgb_xyz_matrix[:3], dtype=np.float64),
        exif=exif,
        flip=int(sizes.flip),
    )


@contextmanager
def open_raw(path: str | os.PathLike[str], data: bytes | None = None) -> Iterator[RawFile]:
    """Open a raw file for conversion; the LibRaw handle is closed on exit.

    Args:
        path: the file (also used in error messages when ``data`` is given).
        data: the file's bytes, if already read (e.g. from stdin).

    Raises:
        InputError: missing, unreadable, a directory, or empty.
        UnsupportedFileError: not a raw format, or a sensor layout sidraw cannot pack.
        CorruptFileError: truncated or damaged image data.
        MetadataError: implausible sizes or levels.
    """
    p = Path(path)
    name = str(path)
    owned = data is None
    if data is None:
        _check_input_path(p)
        data = _read_bytes(p)
    elif len(data) == 0:
        raise CorruptFileError("empty file", name)
    raw = _open_libraw(data, name)
    try:
        _check_sizes(raw, name)
        sizes = raw.sizes
        photosites = int(sizes.raw_width) * int(sizes.raw_height)
        if len(data) < _SMALL_DECODE_BYTES and photosites <= _SMALL_DECODE_PHOTOSITES:
            # Cheap to decode: do it first so a linear DNG is reported as such, not as truncated.
            _unpack(raw, name)
            layout = _layout(raw, name)
            _check_bytes(raw, len(data), name)
        else:
            _check_bytes(raw, len(data), name)
            _unpack(raw, name)
            layout = _layout(raw, name)
        info = _info(raw, name, read_exif(data), layout, raw_format(data, name))
        mosaic = raw.raw_image_visible
        if mosaic.shape != (info.height, info.width):
            raise MetadataError(f"visible area {mosaic.shape} differs from the header", name)
        _check_pixels(mosaic, info.black, name)
        yield RawFile(info=info, mosaic=mosaic, handle=raw, data=data, owns_data=owned)
    finally:
        raw.close()


def read_info(path: str | os.PathLike[str]) -> tuple[RawInfo, np.ndarray]:
    """Metadata and a copy of the visible mosaic ((H, W) uint16 DN) of a raw file."""
    with open_raw(path) as rf:
        return rf.info, np.array(rf.mosaic, copy=True)
