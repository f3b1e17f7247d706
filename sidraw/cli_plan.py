"""Planning a ``sidraw convert`` batch: which inputs, where each output goes, in which format.

The command line's items (files, folders, globs, ``-`` for stdin, ``--files-from`` lists) become
:class:`~sidraw.batch.Job` objects. ``--out`` may name a folder (the default for anything that is
not clearly a file), ``-`` (stdout), or one output file: a name ending in ``.tif``, ``.tiff``,
``.png`` or ``.dng``, or an existing file. A file target takes its format from its extension and
needs exactly one input. Mistakes in any of this are usage errors, reported before any work.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .batch import DEFAULT_NAME, InputFile, Job, Plan, collect_inputs, plan_jobs
from .cli_options import UsageError
from .errors import OutputError, SidrawError
from .output import ImageFormat

STDIN = "-"

#: Output file extensions and the format each one means.
FILE_FORMATS: dict[str, ImageFormat] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".dng": "dng",
}
# Image extensions that sidraw does not write: such an --out is a mistake, not a folder name.
_OTHER_IMAGES = frozenset(
    (".jpg", ".jpeg", ".jxl", ".webp", ".heic", ".heif", ".avif", ".bmp", ".gif", ".exr")
)
#: The fields of a ``--name`` template.
NAME_FIELDS = ("stem", "ext", "name")

TargetKind = Literal["beside", "folder", "file", "stdout"]


@dataclass(frozen=True)
class OutputTarget:
    """Where outputs go: beside each input, into a folder, into one file, or to stdout."""

    kind: TargetKind
    fmt: ImageFormat
    path: Path | None = None


@dataclass
class BatchPlan:
    """The jobs of a batch, the inputs that failed before any conversion, and stdin's bytes."""

    jobs: list[Job]
    errors: list[SidrawError]
    target: OutputTarget
    stdin_data: bytes | None = None
    # Inputs found, for the "exactly one input" checks of file and stdout targets.
    found: list[InputFile] = field(default_factory=list)


def gather_items(inputs: list[str] | None, files_from: str | None) -> list[str]:
    """The input items: the arguments, then the lines of ``--files-from`` (``-``: stdin)."""
    items = list(inputs or [])
    if files_from is not None:
        if files_from == STDIN and STDIN in items:
            raise UsageError("stdin cannot hold both a raw file and the file list")
        items += _read_file_list(files_from)
    if not items:
        raise UsageError("no input given")
    if items.count(STDIN) > 1:
        raise UsageError("'-' (stdin) can be given once")
    return items


def _read_file_list(source: str) -> list[str]:
    try:
        text = sys.stdin.read() if source == STDIN else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"cannot read the file list {source}: {reason}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def output_target(out: str | None, fmt: ImageFormat | None) -> OutputTarget:
    """What ``--out`` names (``fmt``: the ``--format`` given, None when not given).

    Raises:
        UsageError: an output file whose extension is not ``fmt`` or not one sidraw writes.
    """
    if out is None:
        return OutputTarget("beside", fmt or "tiff")
    if out == STDIN:
        return OutputTarget("stdout", fmt or "tiff")
    path = Path(out)
    ext = path.suffix.lower()
    if path.is_dir():
        return OutputTarget("folder", fmt or "tiff", path)
    if ext in FILE_FORMATS:
        implied = FILE_FORMATS[ext]
        if fmt is not None and fmt != implied:
            raise UsageError(
                f"--out {out} is a {implied.upper()} file name but --format is {fmt}: "
                "drop --format or change the extension"
            )
        return OutputTarget("file", implied, path)
    if path.exists():
        raise UsageError(
            f"--out {out} is an existing file, not a folder: give a folder, or an output file "
            "name ending in .tif, .png or .dng"
        )
    if ext in _OTHER_IMAGES:
        raise UsageError(f"--out {out}: sidraw writes TIFF (.tif), PNG (.png) or DNG (.dng) files")
    return OutputTarget("folder", fmt or "tiff", path)


def check_name_template(template: str) -> None:
    """Refuse a ``--name`` template with unknown fields, naming the fields that exist."""
    known = ", ".join(f"{{{f}}}" for f in NAME_FIELDS)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"bad --name template {template!r} ({exc}); fields: {known}") from None
    unknown = [f for f in fields if f not in NAME_FIELDS]
    if unknown:
        raise UsageError(
            f"bad --name template {template!r}: unknown field {{{unknown[0]}}}; "
            f"the fields are {known}"
        )


def plan_batch(
    items: list[str],
    *,
    recursive: bool,
    target: OutputTarget,
    name: str = DEFAULT_NAME,
) -> BatchPlan:
    """Expand the items and name every output.

    Raises:
        UsageError: a file or stdout target without exactly one input, a bad ``--name``.
    """
    check_name_template(name)
    stdin_data = None
    if STDIN in items:
        items = [i for i in items if i != STDIN]
        stdin_data = sys.stdin.buffer.read()
    found, errors = collect_inputs(items, recursive)
    if stdin_data is not None:
        found.insert(0, InputFile(Path(STDIN), Path("stdin")))
    _check_single_input(target, len(found) + len(errors), name)
    if target.kind == "file":
        plan = _plan_file(found, target)
    else:
        out_dir = target.path if target.kind == "folder" else None
        try:
            plan = plan_jobs(found, out_dir=out_dir, fmt=target.fmt, name=name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return BatchPlan(plan.jobs, errors + plan.errors, target, stdin_data, found)


def _check_single_input(target: OutputTarget, count: int, name: str) -> None:
    if target.kind == "stdout" and count != 1:
        raise UsageError("--out - needs exactly one input file")
    if target.kind == "file":
        if count != 1:
            raise UsageError(
                f"--out {target.path} names one output file, so it takes exactly one input "
                f"({count} given): give a folder as --out for several"
            )
        if name != DEFAULT_NAME:
            raise UsageError("--name names files in an output folder; --out already names one")


def _plan_file(found: list[InputFile], target: OutputTarget) -> Plan:
    """The one job of a file target (none when the input was not found)."""
    assert target.path is not None
    plan = Plan()
    for inp in found:
        dst = target.path
        if _same_file(dst, inp.path):
            plan.errors.append(OutputError("output name would overwrite an input file", dst))
        else:
            plan.jobs.append(Job(inp.path, dst))
    return plan


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False
