"""Batches: expanding files, folders and globs into inputs, naming outputs, converting each.

Output names: ``{stem}`` + the format's extension, in ``--out`` (keeping the relative folder layout
of a recursive folder input) or next to the input. When two inputs would get the same output name
(``a.ARW`` and ``a.DNG``), both outputs get the input's extension in their name (``a_ARW.tif`` and
``a_DNG.tif``) so neither overwrites the other. An output that would land on an input file is
refused.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError, SidrawError
from .output import EXTENSIONS, STALE_TMP_SECONDS, ImageFormat, cleanup_temporaries
from .raw import RAW_EXTENSIONS

DEFAULT_NAME = "{stem}"


@dataclass(frozen=True)
class InputFile:
    """One input: ``path`` and its ``relative`` path below the folder it was found in."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class Job:
    """One conversion to do: ``src`` -> ``dst``."""

    src: Path
    dst: Path


@dataclass
class Plan:
    """Jobs to run and the inputs that failed before any conversion (with their errors)."""

    jobs: list[Job] = field(default_factory=list)
    errors: list[SidrawError] = field(default_factory=list)


def _resolved(path: Path) -> Path:
    """``path.resolve()``, or the absolute path for a symlink loop (an error later, not here)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: symlink loop before Python 3.13
        return Path(os.path.abspath(path))


def is_raw_name(path: Path) -> bool:
    return path.suffix.lower() in RAW_EXTENSIONS


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    pattern = "**/*" if recursive else "*"
    for p in sorted(folder.glob(pattern)):
        if is_raw_name(p) and not p.name.startswith("."):
            yield p


def collect_inputs(
    items: Iterable[str], recursive: bool = False
) -> tuple[list[InputFile], list[SidrawError]]:
    """Expand command-line items into input files.

    Args:
        items: files (any extension), folders (raw extensions, case-insensitive) and glob patterns.
        recursive: descend into sub-folders of folder items.

    Returns:
        (inputs in a stable order without duplicates, errors for items that matched nothing).
    """
    found: list[InputFile] = []
    errors: list[SidrawError] = []
    seen: set[Path] = set()

    def add(path: Path, relative: Path) -> None:
        key = _resolved(path)
        if key not in seen:
            seen.add(key)
            found.append(InputFile(path, relative))

    for item in items:
        p = Path(item)
        if p.is_dir() and not is_raw_name(p):
            matches = list(_walk(p, recursive))
            if not matches:
                errors.append(InputError("no raw files in this folder", p))
            for m in matches:
                add(m, m.relative_to(p))
        elif p.exists() or p.is_symlink():
            add(p, Path(p.name))
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if not m.is_dir()]
            if not files:
                errors.append(InputError("no file matches this pattern", item))
            for m in files:
                add(m, Path(m.name))
        else:
            errors.append(InputError("file not found", p))
    return found, errors


def output_name(template: str, src: Path, disambiguate: bool = False) -> str:
    """Expand a name template (``{stem}``, ``{ext}``) for one input, without extension."""
    fields = {"stem": src.stem, "ext": src.suffix.lstrip("."), "name": src.name}
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad --name template {template!r}: {exc}") from None
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"--name template {template!r} gives an invalid file name {name!r}")
    if disambiguate and fields["ext"]:
        name = f"{name}_{fields['ext']}"
    return name


def plan_jobs(
    inputs: list[InputFile],
    *,
    out_dir: Path | None,
    fmt: ImageFormat,
    name: str = DEFAULT_NAME,
) -> Plan:
    """Name the output of every input, refusing outputs that would overwrite an input.

    Args:
        inputs: from :func:`collect_inputs`.
        out_dir: output folder (None: next to each input).
        fmt: output format (sets the extension).
        name: output name template.
    """
    ext = EXTENSIONS[fmt]

    def target(inp: InputFile, disambiguate: bool) -> Path:
        folder = (out_dir / inp.relative.parent) if out_dir is not None else inp.path.parent
        return folder / (output_name(name, Path(inp.relative.name), disambiguate) + ext)

    first = [target(i, False) for i in inputs]
    groups: dict[Path, list[int]] = defaultdict(list)
    for k, dst in enumerate(first):
        groups[_resolved(dst)].append(k)
    input_paths = {_resolved(i.path) for i in inputs}
    plan = Plan()
    for k, inp in enumerate(inputs):
        dst = first[k]
        if len(groups[_resolved(dst)]) > 1:
            dst = target(inp, True)
        if _resolved(dst) in input_paths or _resolved(dst) == _resolved(inp.path):
            plan.errors.append(OutputError("output name would overwrite an input file", dst))
            continue
        plan.jobs.append(Job(inp.path, dst))
    final = defaultdict(list)
    for job in plan.jobs:
        final[_resolved(job.dst)].append(job)
    for dst, jobs in final.items():
        if len(jobs) > 1:
            for job in jobs:
                plan.errors.append(OutputError(f"two inputs would write {dst.name}", job.src))
            plan.jobs = [j for j in plan.jobs if j not in jobs]
    return plan


@dataclass
class Outcome:
    """Result of one job: ``status`` is ``"ok"``, ``"skipped"`` or ``"failed"``."""

    job: Job
    status: str
    result: object | None = None
    error: SidrawError | None = None


def run_jobs(
    jobs: list[Job],
    convert: Callable[[Job], object],
    *,
    finish: Callable[[Any], object] | None = None,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every job; a failing file is recorded and the batch goes on.

    Existing outputs are skipped (not an error) unless ``overwrite``: a re-run of an interrupted
    batch picks up where it stopped. Temporary files that a killed run left in an output folder
    (older than :data:`~sidraw.output.STALE_TMP_SECONDS`) are removed when the batch reaches that
    folder. While the batch runs, SIGTERM and SIGHUP stop it like Ctrl-C
    (:func:`terminate_as_interrupt`): ``KeyboardInterrupt`` is raised, no partial output is left.

    With ``finish``, each job runs in two stages: ``convert(job)`` in the calling thread returns
    an intermediate that ``finish`` turns into the result in one worker thread, so that the next
    job's ``convert`` (decode and inference) overlaps the previous job's ``finish`` (render and
    write). At most one job is in each stage; outcomes are reported in job order, from the
    calling thread. An intermediate that is never finished is closed (its ``close()`` method).
    On interrupt, the job being finished is completed (its output is whole) and reported first.
    """
    outcomes: list[Outcome] = []
    cleaned: set[Path] = set()

    def emit(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def attempt(job: Job, stage: Callable[[Any], object], arg: object) -> Outcome:
        try:
            return Outcome(job, "ok", result=stage(arg))
        except SidrawError as exc:
            return Outcome(job, "failed", error=exc)
        except MemoryError:
            return Outcome(job, "failed", error=SidrawError("out of memory", job.src))

    pool = ThreadPoolExecutor(1, thread_name_prefix="sidraw-finish") if finish else None
    pending: tuple[Job, Future[Outcome]] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is not None:
            _, future = pending
            pending = None
            emit(future.result())

    try:
        with terminate_as_interrupt():
            for job in jobs:
                folder = job.dst.parent
                if folder not in cleaned:
                    cleaned.add(folder)
                    cleanup_temporaries(folder, min_age=STALE_TMP_SECONDS)
                if job.dst.is_dir():
                    error = OutputError("a folder of that name exists", job.dst)
                    outcome = Outcome(job, "failed", error=error)
                elif not overwrite and job.dst.exists():
                    outcome = Outcome(job, "skipped")
                else:
                    if folder != Path():
                        try:
                            _make_folder(folder)
                        except SidrawError as exc:
                            collect()
                            emit(Outcome(job, "failed", error=exc))
                            continue
                    outcome = attempt(job, convert, job)
                    if pool is not None and finish is not None and outcome.status == "ok":
                        try:
                            collect()
                        except BaseException:
                            _close(outcome.result)
                            raise
                        pending = (job, pool.submit(attempt, job, finish, outcome.result))
                        continue
                collect()
                emit(outcome)
            collect()
    except BaseException:
        # Interrupted: let the file being written complete (its output is whole), report it.
        if pending is not None:
            with suppress(BaseException):  # the first interruption is the one raised
                collect()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return outcomes


def _close(intermediate: object) -> None:
    close = getattr(intermediate, "close", None)
    if callable(close):
        close()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, like Ctrl-C.

    Their default action kills the process without unwinding, which would leave temporary files
    behind; as ``KeyboardInterrupt`` they run every ``finally`` (the CLI exits with 130). Further
    signals of the same kind are ignored while the interrupted batch cleans up. Handlers that are
    not the default are left alone; the old handlers are restored on exit. Outside the main
    thread (where Python cannot set handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _make_folder(folder: Path) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the output folder ({exc.strerror or exc})"
        raise OutputError(reason, folder) from None
