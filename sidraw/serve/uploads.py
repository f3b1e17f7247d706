"""Multipart uploads, streamed to disk as they arrive, within the server's size limits.

Starlette's ``request.form()`` spools each file to a ``SpooledTemporaryFile`` (up to 1 MB in
memory, the rest in the system's temporary folder) and has no limit on a file's size, so the body
is parsed here with python-multipart's streaming parser instead: every chunk of a file is written
to its own folder under the work folder as it comes, and the per-file and per-request limits are
enforced on the bytes seen so far. An upload that breaks a limit stops being read and is answered
with 413; whatever it had written is removed. The name the client sent is kept as text only
(:func:`sidraw.serve.names.display_name`); the stored file is ``<work>/<uuid>/source<.ext>``.
"""

from __future__ import annotations

import errno
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..output import describe_os_error
from .config import MB
from .names import display_name, stored_suffix

#: Bytes of each upload kept in memory for the content check: raw formats mark their first bytes,
#: and a JPEG-wrapped raw is told by what follows its Exif segment (at most 64 KB).
HEAD_BYTES = 70_000
#: Form fields (options) are short: their count and size are capped.
MAX_FIELDS = 20
MAX_FIELD_BYTES = 1024


class UploadError(Exception):
    """An upload that is refused: ``status`` is the HTTP status, ``message`` one line for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class UploadedFile:
    """One file of an upload, on disk.

    Attributes:
        id: the generated name of its folder (and of the job it becomes).
        name: the name the client sent, as :func:`display_name` cleaned it.
        path: where it is stored.
        size: its size in bytes.
        head: its first :data:`HEAD_BYTES` bytes.
    """

    id: str
    name: str
    path: Path
    size: int = 0
    head: bytes = b""


@dataclass
class Upload:
    """A parsed upload request: its files (in the order sent) and its form fields."""

    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove every file of the upload with its folder."""
        for f in self.files:
            shutil.rmtree(f.path.parent, ignore_errors=True)


@dataclass(frozen=True)
class Limits:
    """Sizes in bytes: ``per_file``, ``per_request``; ``files``: most files in a request."""

    per_file: int
    per_request: int
    files: int


def _too_large(what: str, limit: int, option: str) -> UploadError:
    return UploadError(
        413, f"{what} is larger than this server's limit of {limit / MB:g} MB ({option})"
    )


class _Receiver:
    """python-multipart's callbacks: headers of each part, file data to disk, fields to text."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.upload = Upload()
        self._header_name = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: tuple[str, bytearray] | None = None
        self._file: UploadedFile | None = None
        self._out: BinaryIO | None = None

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_name.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self._header_name = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            if len(self.upload.fields) >= MAX_FIELDS:
                raise UploadError(400, f"too many form fields (at most {MAX_FIELDS})")
            self._field = (name, bytearray())
            return
        if len(self.upload.files) >= self.limits.files:
            raise UploadError(413, f"too many files in one upload (at most {self.limits.files})")
        shown = display_name(options[b"filename"].decode("utf-8", "replace"))
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True)
        self._file = UploadedFile(job_id, shown, folder / f"source{stored_suffix(shown)}")
        self.upload.files.append(self._file)
        self._out = open(self._file.path, "xb")  # noqa: SIM115  # closed in on_part_end/close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._field is not None:
            if len(self._field[1]) + len(chunk) > MAX_FIELD_BYTES:
                raise UploadError(400, f"form field {self._field[0]!r} is too long")
            self._field[1].extend(chunk)
            return
        f, out = self._file, self._out
        if f is None or out is None:
            return
        f.size += len(chunk)
        if f.size > self.limits.per_file:
            raise _too_large(f.name, self.limits.per_file, "--max-upload")
        if len(f.head) < HEAD_BYTES:
            f.head += chunk[: HEAD_BYTES - len(f.head)]
        # A plain write: chunks are at most 64 KB and land in the page cache, so this does not
        # hold the event loop up noticeably (a thread hop per chunk would cost more).
        out.write(chunk)

    def on_part_end(self) -> None:
        if self._field is not None:
            name, value = self._field
            self.upload.fields[name] = value.decode("utf-8", "replace")
            self._field = None
        self.close()

    def close(self) -> None:
        """Close the file being written, if any."""
        if self._out is not None:
            self._out.close()
        self._out, self._file = None, None


def _boundary(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, "send the files as multipart/form-data (a form with files)")
    return params[b"boundary"]


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str,
    content_length: str | None,
    root: Path,
    limits: Limits,
) -> Upload:
    """Stream a multipart body into ``root`` (one new folder per file).

    Args:
        chunks: the request body as it arrives (Starlette's ``request.stream()``).
        content_type, content_length: the request's headers of those names.
        root: the folder the files' folders are made in.
        limits: the sizes to enforce while reading.

    Raises:
        UploadError: a limit is broken (413), the body is no multipart form or malformed (415,
            400), or the disk is full (507); nothing of the upload is left on disk.
        starlette.requests.ClientDisconnect: the client went away; nothing is left either.
    """
    if content_length and content_length.isdigit() and int(content_length) > limits.per_request:
        # Refused before a byte of the body is read (curl waits for "100 Continue" until then).
        raise _too_large("the upload", limits.per_request, "--max-request")
    receiver = _Receiver(root, limits)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data", "on_part_end",
        )
    }  # fmt: skip
    parser = MultipartParser(_boundary(content_type), callbacks)  # type: ignore[arg-type]
    seen = 0
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if seen > limits.per_request:
                raise _too_large("the upload", limits.per_request, "--max-request")
            parser.write(chunk)
        parser.finalize()
    except BaseException as exc:
        receiver.close()
        receiver.upload.discard()
        if isinstance(exc, FormParserError):
            raise UploadError(400, f"malformed multipart body ({exc})") from None
        if isinstance(exc, OSError):
            status = 507 if exc.errno == errno.ENOSPC else 500
            raise UploadError(status, f"the server cannot store the upload: "
                                      f"{describe_os_error(exc)}") from None  # fmt: skip
        raise
    if not receiver.upload.files:
        raise UploadError(400, "the upload holds no file")
    return receiver.upload
