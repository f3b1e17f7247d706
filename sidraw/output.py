"""Writing output images: 16-bit TIFF or PNG, atomically.

An output is first written to a hidden temporary file in the destination folder, flushed and
fsynced, then moved to its final name in one step, so a crash, a full disk or Ctrl-C never leaves a
truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from .embed import Embedded, into_tiff, png_chunks
from .errors import OutputError

ImageFormat = Literal["tiff", "png", "dng"]

EXTENSIONS: dict[str, str] = {"tiff": ".tif", "png": ".png", "dng": ".dng"}

TMP_PREFIX = ".sidraw-"
TMP_SUFFIX = ".tmp"


#: Rows of a TIFF strip: strips are compressed independently, on all cores.
TIFF_ROWS_PER_STRIP = 64


def _rechunk(strips: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Regroup (h_i, W, 3) strips of any heights into strips of ``rows`` rows (the last shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for strip in strips:
        while strip.shape[0]:
            take = min(rows - count, strip.shape[0])
            pending.append(strip[:take])
            count += take
            strip = strip[take:]
            if count == rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if pending:
        yield np.concatenate(pending)


def _check_strip(strip: np.ndarray, width: int) -> None:
    if strip.ndim != 3 or strip.shape[1:] != (width, 3) or strip.dtype != np.uint16:
        raise ValueError(f"expected (h, {width}, 3) uint16 strips, got {strip.shape} {strip.dtype}")


def write_tiff_strips(
    target: BinaryIO,
    shape: tuple[int, int],
    strips: Iterable[np.ndarray],
    meta: Embedded | None = None,
) -> None:
    """Write an RGB image given as horizontal strips as a deflate-compressed 16-bit TIFF.

    Only one batch of compressed strips is held at a time, so the whole image never has to be
    in memory.

    Args:
        target: a seekable binary file, open for reading too when ``meta`` is given.
        shape: (H, W) of the image.
        strips: (h_i, W, 3) uint16 strips, top to bottom, heights summing to H.
        meta: EXIF, XMP and ICC profile to embed.
    """
    import imagecodecs
    import tifffile

    height, width = shape

    def encode(strip: np.ndarray) -> bytes:
        _check_strip(strip, width)
        # TIFF predictor 2: horizontal differences per sample, then deflate at level 1 (about
        # twice as fast as the default for files ~2 % larger).
        delta = imagecodecs.delta_encode(np.ascontiguousarray(strip), axis=1)
        return imagecodecs.deflate_encode(delta, level=1)  # zlib format, as TIFF wants

    def encoded() -> Iterator[bytes]:
        workers = os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            batch: list[np.ndarray] = []
            rows = 0
            for strip in _rechunk(strips, TIFF_ROWS_PER_STRIP):
                batch.append(strip)
                rows += strip.shape[0]
                if len(batch) == 2 * workers:
                    yield from pool.map(encode, batch)
                    batch = []
            if rows != height:  # before the last strips: tifffile stops asking after them
                raise ValueError(f"strips hold {rows} rows, the image {height}")
            yield from pool.map(encode, batch)

    tifffile.imwrite(
        target,
        data=encoded(),
        shape=(height, width, 3),
        dtype=np.uint16,
        photometric="rgb",
        compression="zlib",
        predictor=True,
        rowsperstrip=TIFF_ROWS_PER_STRIP,
        metadata=None,
    )
    if meta is not None:
        into_tiff(target, meta)


def write_png_strips(
    target: BinaryIO,
    shape: tuple[int, int],
    strips: Iterable[np.ndarray],
    meta: Embedded | None = None,
    level: int = 6,
) -> None:
    """Write an RGB image given as horizontal strips as a 16-bit PNG, one strip at a time.

    Args:
        target: a binary file.
        shape: (H, W) of the image.
        strips: (h_i, W, 3) uint16 strips, top to bottom, heights summing to H.
        meta: EXIF, XMP and ICC profile to embed.
        level: zlib compression level.
    """
    height, width = shape
    target.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(target, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    for kind, body in png_chunks(meta) if meta is not None else []:
        _png_chunk(target, kind, body)
    compressor = zlib.compressobj(level)
    rows = 0
    for strip in strips:
        _check_strip(strip, width)
        # Filter "Sub" on every row: each byte minus the same byte of the pixel to its left.
        data = strip.astype(">u2").view(np.uint8).reshape(strip.shape[0], width * 6)
        lines = np.empty((strip.shape[0], width * 6 + 1), dtype=np.uint8)
        lines[:, 0] = 1
        lines[:, 1:7] = data[:, :6]
        np.subtract(data[:, 6:], data[:, :-6], out=lines[:, 7:])
        rows += strip.shape[0]
        chunk = compressor.compress(lines.tobytes())
        if chunk:
            _png_chunk(target, b"IDAT", chunk)
    if rows != height:
        raise ValueError(f"strips hold {rows} rows, the image {height}")
    _png_chunk(target, b"IDAT", compressor.flush())
    _png_chunk(target, b"IEND", b"")


def _png_chunk(target: BinaryIO, kind: bytes, data: bytes) -> None:
    target.write(struct.pack(">I", len(data)) + kind + data)
    target.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_image_strips(
    target: BinaryIO,
    shape: tuple[int, int],
    strips: Iterable[np.ndarray],
    fmt: ImageFormat,
    meta: Embedded | None = None,
) -> None:
    """Write an (H, W, 3) uint16 RGB image, given as strips, in ``fmt`` (``"tiff"`` or ``"png"``),
    with the metadata ``meta`` (:func:`sidraw.metadata.embedded`).

    A TIFF target must be seekable and readable (``"w+b"``).
    """
    if fmt == "tiff":
        write_tiff_strips(target, shape, strips, meta)
    elif fmt == "png":
        write_png_strips(target, shape, strips, meta)
    else:
        raise ValueError(f"unknown image format {fmt!r}")


def write_image(target: BinaryIO, rgb: np.ndarray, fmt: ImageFormat) -> None:
    """Write an (H, W, 3) uint16 RGB image in ``fmt`` (``"tiff"`` or ``"png"``) to a file."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint16:
        raise ValueError(f"expected (H, W, 3) uint16, got {rgb.shape} {rgb.dtype}")
    write_image_strips(target, rgb.shape[:2], [rgb], fmt)


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OS error: ``disk full``, ``permission denied``, ..."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.EEXIST:
        return "already exists"
    return exc.strerror or str(exc)


def check_target(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse an output name that cannot or must not be written, before any work is spent on it.

    Raises:
        OutputError: a folder has that name; the file exists (without ``overwrite``); the file
            exists and is read-only (``overwrite`` does not replace a file the user protected).
    """
    final = Path(path)
    if final.is_dir():
        raise OutputError("a folder of that name exists", final)
    if not final.exists():
        return
    if not overwrite:
        raise OutputError("already exists (use --overwrite to replace it)", final)
    # Mode bits, not only os.access: root may write anything, yet a read-only output is meant
    # to be kept (and on Windows the rename would fail anyway).
    if not final.stat().st_mode & 0o222 or not os.access(final, os.W_OK):
        raise OutputError("exists and is read-only (make it writable to replace it)", final)


def write_atomic(
    path: str | os.PathLike[str],
    writer: Callable[[BinaryIO], None] | bytes,
    *,
    overwrite: bool = False,
) -> None:
    """Write a file atomically: temporary file in the same folder, fsync, then rename.

    Args:
        path: final file name.
        writer: the bytes to write, or a function that writes them to a binary file object
            (open for reading too, so that writers can go back to what they wrote).
        overwrite: replace an existing file; otherwise an existing file is an error.

    Raises:
        OutputError: the file exists (without ``overwrite``), the folder is not writable, or the
            disk is full. No temporary file is left behind.
    """
    final = Path(path)
    folder = final.parent
    check_target(final, overwrite=overwrite)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write here: {describe_os_error(exc)}", final) from None
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        # A file object opened by name: writers such as tifffile need a real file name.
        with open(tmp, "w+b") as f:
            if isinstance(writer, (bytes, bytearray, memoryview)):
                f.write(writer)
            else:
                writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        if overwrite:
            os.replace(tmp, final)
        else:
            _link_no_replace(tmp, final)
        _fsync_dir(folder)
    except OSError as exc:
        raise OutputError(f"cannot write: {describe_os_error(exc)}", final) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_no_replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final`` unless ``final`` exists (no check-then-write race)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OSError(errno.EEXIST, "already exists") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # File systems without hard links (some FUSE, SMB): fall back to a checked rename.
        if final.exists():
            raise OSError(errno.EEXIST, "already exists") from None
        os.replace(tmp, final)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _read_umask()


#: Age after which a leftover temporary file is taken for the debris of a killed run. A running
#: sidraw keeps its temporary for the seconds of one write, so another sidraw writing into the
#: same folder meanwhile never loses its file.
STALE_TMP_SECONDS = 600.0


def cleanup_temporaries(folder: str | os.PathLike[str], *, min_age: float = 0.0) -> list[Path]:
    """Remove sidraw temporary files left in a folder by a killed run; returns what was removed.

    Only regular files named ``.sidraw-*.tmp`` whose last change is at least ``min_age`` seconds
    old are removed; anything else is left alone.
    """
    removed = []
    now = time.time()
    try:
        candidates = list(Path(folder).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for p in candidates:
        with contextlib.suppress(OSError):
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age:
                continue
            p.unlink()
            removed.append(p)
    return removed
