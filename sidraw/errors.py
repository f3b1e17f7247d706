"""Exceptions for user-facing failures, catchable by cause.

Every error raised by sidraw for a bad input, a missing model or an output problem derives from
:class:`SidrawError`, so a script can ``except sidraw.SidrawError`` and print ``str(err)``: the
message is one line that names the file and the reason.
"""

from __future__ import annotations

from pathlib import Path


class SidrawError(Exception):
    """Base class of every user-facing sidraw failure.

    ``path`` is the file the error is about (None when it is about no file in particular).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self) -> tuple[type[SidrawError], tuple[str, str | None]]:
        # Pickled with its reason and path (a cluster task's error reaches the client whole).
        return type(self), (self.reason, self.path)


class InputError(SidrawError):
    """An input file cannot be used (missing, unreadable, not a file)."""


class UnsupportedFileError(InputError):
    """The file is readable but its format or sensor layout is not supported."""


class CorruptFileError(InputError):
    """The file claims to be a raw image but its data is damaged or truncated."""


class MetadataError(InputError):
    """The file's metadata (levels, sizes, pattern) is missing or implausible."""


class ModelError(SidrawError):
    """A model file or model card is missing, damaged or does not fit the input."""


class OutputError(SidrawError):
    """An output cannot be written (exists, not writable, disk full, collides with an input)."""


class ClusterError(SidrawError):
    """A Dask cluster cannot be used (not installed, unreachable, its workers fail to start)."""
