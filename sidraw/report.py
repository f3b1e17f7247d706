"""What the command line tells people: one place for every verb's messages, tables and JSON lines.

File names and error texts come from users and from LibRaw, so nothing here is ever parsed as
rich markup (a file named ``night [best].dng`` or ``odd[/b].dng`` is printed as it is), and each
one is made printable on one line first (:func:`shown`): bytes that are not UTF-8 appear as
``\\xNN`` escapes and control characters such as newlines as ``\\n``, so a name can neither crash
the encoder nor split a report line. Human messages go to stderr; JSON records go to stdout, one
object a line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import SidrawError

# Control characters (C0, DEL, C1) that would break a line or drive the terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def shown(value: object) -> str:
    """``value`` (a path, a message) as one printable line of valid Unicode.

    Names that are not valid UTF-8 reach Python with surrogate escapes; those become ``\\xNN``
    again instead of failing the encoder. Control characters are escaped.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


def json_text(value: object) -> str:
    """A path or message for a JSON record: valid Unicode (undecodable bytes as ``\\xNN``).

    Control characters are left to ``json.dumps``, which escapes them losslessly.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def error_text(err: SidrawError) -> str:
    """``path: reason`` of an error, each part :func:`shown`."""
    if err.path is None:
        return shown(err.reason)
    return f"{shown(err.path)}: {shown(err.reason)}"


def _console(stderr: bool) -> Console:
    # markup and highlighting off: what is printed is exactly the text given.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)


class Reporter:
    """Prints outcomes for one command run.

    Args:
        as_json: also write JSON records on stdout (:meth:`record`).
        quiet: print only errors and the summary of a batch with failures.
    """

    def __init__(self, *, as_json: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.err = _console(stderr=True)
        self.out = _console(stderr=False)

    # -- plain lines -------------------------------------------------------------------------

    def line(self, *parts: str | tuple[str, str], always: bool = False) -> None:
        """Print one stderr line made of plain strings and ``(text, style)`` pieces."""
        if self.quiet and not always:
            return
        self.err.print(Text.assemble(*parts))

    def usage(self, message: str) -> None:
        """A usage error (the caller exits with code 2)."""
        self.err.print(Text.assemble(("error:", "red"), " ", shown(message)))

    def failure(self, err: SidrawError) -> None:
        """One file that failed: ``✗ path: reason``."""
        self.err.print(Text.assemble(("✗", "red"), " ", error_text(err)))

    def record(self, record: dict[str, Any]) -> None:
        """One JSON object a line on stdout, when ``--json`` was given."""
        if self.as_json:
            self.json(record)

    @staticmethod
    def json(record: dict[str, Any]) -> None:
        """Write one JSON object a line on stdout, flushed (a reader may be waiting for it)."""
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    # -- convert -----------------------------------------------------------------------------

    def failed(self, err: SidrawError, output: str | None = None) -> None:
        """A file of a batch failed (``output``: where it would have gone, if known)."""
        self.failure(err)
        self.record(
            {
                "input": json_text(err.path) if err.path is not None else None,
                "output": output,
                "status": "failed",
                "error": json_text(err.reason),
            }
        )

    def converted(self, src: Path, record: dict[str, Any], summary: str, seconds: float) -> None:
        """A file was written; ``record`` is its :meth:`ConvertResult.to_dict`."""
        output = record.get("output") or ""
        self.record(
            {
                **record,
                "input": json_text(record["input"]),
                "output": json_text(output),
                "status": "ok",
                "error": None,
            }
        )
        self.line(("✓", "green"), f" {shown(src)} → {shown(output)}  {summary}  {seconds:.1f} s")

    def skipped(self, src: Path, dst: Path, reason: str = "exists") -> None:
        """A file was not converted: its output exists and was kept (``reason`` ``"exists"``),
        another process is converting it (``"in progress elsewhere"``), or another process
        wrote it meanwhile (``"appeared meanwhile"``). JSON records carry ``reason``."""
        self.record(
            {
                "input": json_text(src),
                "output": json_text(dst),
                "status": "skipped",
                "reason": reason,
                "error": None,
            }
        )
        if reason == "exists":
            why = f"{shown(dst)} exists (--overwrite replaces)"
        else:
            why = f"{shown(dst)} {reason}"
        self.line(("-", "yellow"), f" {shown(src)}: skipped, {why}")

    def planned(self, src: Path, dst: Path, exists: bool) -> None:
        """A ``--dry-run`` line."""
        status = "would-skip" if exists else "would-convert"
        if self.as_json:
            self.json({"input": json_text(src), "output": json_text(dst), "status": status})
            return
        action = "skip (exists)" if exists else "convert"
        self.err.print(Text(f"{action}: {shown(src)} → {shown(dst)}"))

    def summary(self, done: int, skipped: int, failed: int) -> None:
        """The last line of a batch (also when quiet, if something failed)."""
        self.line(f"{done} converted, {skipped} skipped, {failed} failed", always=failed > 0)

    def interrupted(self, done: int) -> None:
        self.err.print(
            Text(f"interrupted: {done} converted; run the same command again to resume", "yellow")
        )

    # -- tables (info, doctor) ---------------------------------------------------------------

    def table(self, rows: Iterable[tuple[str, str]]) -> None:
        """A two-column table on stdout; every cell is plain text."""
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")  # long paths wrap whole, never cut to "…"
        for key, value in rows:
            table.add_row(Text(key), Text(shown(value)))
        self.out.print(table)

    def verdict(self, ok: bool, good: str, bad: str) -> None:
        """A final green or red line on stdout."""
        self.out.print(Text(good, "green") if ok else Text(bad, "red"))
