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
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claims import Claim, cleanup_stale_claims, try_claim
from .errors import InputError, OutputError, SidrawError
from .output import (
    EXTENSIONS,
    STALE_TMP_SECONDS,
    ImageFormat,
    cleanup_temporaries,
    describe_os_error,
)
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


#: Why a job was skipped: its output existed when the batch reached it, another process holds
#: its claim (:mod:`sidraw.claims`), or its output was written by another process meanwhile.
SKIP_EXISTS = "exists"
SKIP_ELSEWHERE = "in progress elsewhere"
SKIP_APPEARED = "appeared meanwhile"


@dataclass
class Outcome:
    """Result of one job: ``status`` is ``"ok"``, ``"skipped"`` or ``"failed"``.

    ``reason`` says why a job was skipped (:data:`SKIP_EXISTS`, :data:`SKIP_ELSEWHERE`,
    :data:`SKIP_APPEARED`); None otherwise. A skip is never a failure.
    """

    job: Job
    status: str
    result: object | None = None
    error: SidrawError | None = None
    reason: str | None = None


def attempt(job: Job, stage: Callable[[Any], object], arg: object) -> Outcome:
    """Run one stage of a job; a :class:`SidrawError` or ``MemoryError`` is its failure."""
    try:
        return Outcome(job, "ok", result=stage(arg))
    except SidrawError as exc:
        return Outcome(job, "failed", error=exc)
    except MemoryError:
        return Outcome(job, "failed", error=SidrawError("out of memory", job.src))


def _written_since(dst: Path, overwrite: bool, since: float) -> bool:
    """Whether ``dst`` is an output this batch must keep: any existing file, or with
    ``overwrite`` one written after ``since`` (seconds since the epoch: another run of the
    same batch wrote it)."""
    try:
        st = dst.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (not overwrite or st.st_mtime >= since)


def begin_job(
    job: Job, *, overwrite: bool, since: float, claims: bool = True, batch: str = ""
) -> tuple[Claim | None, Outcome | None]:
    """Everything before a job's conversion: checks, its folder, its claim.

    Returns:
        (the claim to release when the job ends, None) when the job is to be converted (no
        claim without ``claims``), or (None, the job's outcome) when it is skipped or failed.
    """
    if job.dst.is_dir():
        error = OutputError("a folder of that name exists", job.dst)
        return None, Outcome(job, "failed", error=error)
    if not overwrite and job.dst.exists():
        return None, Outcome(job, "skipped", reason=SKIP_EXISTS)
    folder = job.dst.parent
    if folder != Path():
        try:
            _make_folder(folder)
        except SidrawError as exc:
            return None, Outcome(job, "failed", error=exc)
    if not claims:
        return None, None
    try:
        claim = try_claim(job.dst, batch)
    except OSError as exc:
        error = OutputError(f"cannot claim the output: {describe_os_error(exc)}", job.dst)
        return None, Outcome(job, "failed", error=error)
    if claim is None:
        return None, Outcome(job, "skipped", reason=SKIP_ELSEWHERE)
    if _written_since(job.dst, overwrite, since):  # finished by another run since we looked
        claim.release()
        return None, Outcome(job, "skipped", reason=SKIP_APPEARED)
    return claim, None


def settle(outcome: Outcome, *, overwrite: bool, since: float) -> Outcome:
    """A failure to write an output that another process wrote meanwhile is a skip."""
    if (
        outcome.status == "failed"
        and isinstance(outcome.error, OutputError)
        and not overwrite
        and _written_since(outcome.job.dst, overwrite, since)
    ):
        return Outcome(outcome.job, "skipped", reason=SKIP_APPEARED)
    return outcome


def run_one(
    job: Job,
    convert: Callable[[Job], object],
    *,
    overwrite: bool = False,
    since: float | None = None,
    claims: bool = True,
    batch: str = "",
) -> Outcome:
    """One whole job, claimed: checks, claim, ``convert(job)``, release (what a cluster task
    runs). ``since``: when the batch started (seconds since the epoch; default now)."""
    since = time.time() if since is None else since
    claim, outcome = begin_job(job, overwrite=overwrite, since=since, claims=claims, batch=batch)
    if outcome is not None:
        return outcome
    try:
        return settle(attempt(job, convert, job), overwrite=overwrite, since=since)
    finally:
        if claim is not None:
            claim.release()


def run_jobs(
    jobs: list[Job],
    convert: Callable[[Job], object],
    *,
    finish: Callable[[Any], object] | None = None,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    claims: bool = True,
) -> list[Outcome]:
    """Run every job; a failing file is recorded and the batch goes on.

    Existing outputs are skipped (not an error) unless ``overwrite``: a re-run of an interrupted
    batch picks up where it stopped. Temporary files that a killed run left in an output folder
    (older than :data:`~sidraw.output.STALE_TMP_SECONDS`) are removed when the batch reaches that
    folder, and so are stale claims (:func:`~sidraw.claims.cleanup_stale_claims`). While the
    batch runs, SIGTERM and SIGHUP stop it like Ctrl-C
    (:func:`terminate_as_interrupt`): ``KeyboardInterrupt`` is raised, no partial output is left.

    With ``claims`` (the default), each output is claimed (:mod:`sidraw.claims`) before its
    conversion and released after it, so several processes can run the same batch: a job whose
    claim another live process holds is skipped (:data:`SKIP_ELSEWHERE`), and one whose output
    another process wrote meanwhile too (:data:`SKIP_APPEARED`; with ``overwrite``: an output
    written after this batch started).

    With ``finish``, each job runs in two stages: ``convert(job)`` in the calling thread returns
    an intermediate that ``finish`` turns into the result in one worker thread, so that the next
    job's ``convert`` (decode and inference) overlaps the previous job's ``finish`` (render and
    write). At most one job is in each stage; outcomes are reported in job order, from the
    calling thread. An intermediate that is never finished is closed (its ``close()`` method).
    On interrupt, the job being finished is completed (its output is whole) and reported first.
    """
    outcomes: list[Outcome] = []
    cleaned: set[Path] = set()
    held: dict[Job, Claim | None] = {}  # jobs being converted, and their claims
    since = time.time()

    def emit(outcome: Outcome) -> None:
        if outcome.job in held:
            claim = held.pop(outcome.job)
            if claim is not None:
                claim.release()
            outcome = settle(outcome, overwrite=overwrite, since=since)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pool = ThreadPoolExecutor(1, thread_name_prefix="sidraw-finish") if finish else None
    pending: tuple[Job, Future[Outcome]] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is not None:
            _, future = pending
            pending = None
            emit(future.result())

    try:
        with terminate_as_interrupt() as interrupt:
            for job in jobs:
                interrupt.check()
                folder = job.dst.parent
                if folder not in cleaned:
                    cleaned.add(folder)
                    cleanup_temporaries(folder, min_age=STALE_TMP_SECONDS)
                    cleanup_stale_claims(folder)
                with interrupt.deferred():
                    claim, early = begin_job(
                        job, overwrite=overwrite, since=since, claims=claims
                    )
                    if early is None:
                        held[job] = claim
                if early is not None:
                    collect()
                    emit(early)
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
            interrupt.check()
    except BaseException:
        # Interrupted: let the file being written complete (its output is whole), report it.
        if pending is not None:
            with suppress(BaseException):  # the first interruption is the one raised
                collect()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        for claim in held.values():  # interrupted: the files being converted are not written
            if claim is not None:
                claim.release()
    return outcomes


def _close(intermediate: object) -> None:
    close = getattr(intermediate, "close", None)
    if callable(close):
        close()


@dataclass
class Interrupt:
    """The name of the signal that stopped a batch, or None.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal
    arrives; inside a finaliser (``__del__``, a weakref callback) the exception is only printed
    and the batch would go on. The batch loop calls :meth:`check` between files, so a signal is
    never lost.
    """

    received: str | None = None
    deferring: bool = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` when a signal has been received."""
        if self.received is not None:
            raise KeyboardInterrupt(self.received)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal back until the block ends (then raise it), for steps that must not
        stop half-way: a claim created but not yet written or not yet recorded for release
        would outlive the batch and make a re-run skip its file."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        self.check()


@contextmanager
def terminate_as_interrupt() -> Iterator[Interrupt]:
    """Make SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, like Ctrl-C.

    Their default action kills the process without unwinding, which would leave temporary files
    behind; as ``KeyboardInterrupt`` they run every ``finally`` (the CLI exits with 130). Further
    signals of the same kind are ignored while the interrupted batch cleans up; a second Ctrl-C
    still raises, as usual. Every one of these signals is also recorded in the :class:`Interrupt`
    yielded, which can hold them back (:meth:`Interrupt.deferred`). Handlers that are not the
    default are left alone; the old handlers are restored on exit. Outside the main thread
    (where Python cannot set handlers) this only yields.
    """
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return

    def handler(signum: int, frame: object) -> None:
        interrupt.received = signal.Signals(signum).name
        if signum != signal.SIGINT:
            signal.signal(signum, signal.SIG_IGN)
        if not interrupt.deferring:
            raise KeyboardInterrupt(interrupt.received)

    saved = {}
    for name, default in (
        ("SIGINT", signal.default_int_handler), ("SIGTERM", signal.SIG_DFL),
        ("SIGHUP", signal.SIG_DFL),
    ):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == default:
            saved[sig] = signal.signal(sig, handler)
    try:
        yield interrupt
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _make_folder(folder: Path) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the output folder ({exc.strerror or exc})"
        raise OutputError(reason, folder) from None
