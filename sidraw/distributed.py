"""Batches on a Dask cluster: ``--scheduler ADDRESS``, and ``--workers N`` as a ``LocalCluster``.

One task per file. Each task is the whole claimed job of a local batch
(:func:`sidraw.batch.run_one`): the same checks, claim (:mod:`sidraw.claims`), atomic output and
per-file errors, run on a worker. The files must be on a filesystem every worker sees under the
same path (paths are sent absolute). Outcomes are reported as tasks finish, not in input order.

- The model is loaded once per worker process (:func:`worker_models`), not once per file; its
  onnxruntime session has ``--threads`` threads, by default the worker machine's physical cores
  divided by the tasks it runs at once (its Dask threads).
- A worker that dies mid-file has that file retried on another worker by Dask: the retry takes
  over the claim the dead attempt left (a claim of the same batch is stale by definition).
- Ctrl-C (or SIGTERM, SIGHUP) sets the batch's stop event: tasks that have not started return
  at once as cancelled, tasks that are running finish (their outputs are whole); the client
  waits for them, then exits with 130. A second Ctrl-C stops waiting (a ``LocalCluster``'s
  workers are then killed: their temporary files are removed by the next run, see
  :data:`sidraw.output.STALE_TMP_SECONDS`).

``--workers N`` starts a ``LocalCluster`` of N single-thread worker processes and runs the
batch through the same :func:`run_cluster`, so there is one distributed path. Dask is an
optional dependency (``pip install "sidraw[dask]"``); nothing here imports it at module import.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .batch import Job, Outcome, run_one, terminate_as_interrupt
from .claims import cleanup_stale_claims
from .errors import ClusterError, SidrawError
from .model import ModelCache, physical_cores
from .output import STALE_TMP_SECONDS, cleanup_temporaries
from .pipeline import ConvertOptions, ConvertResult, convert_file

#: The outcome status of a task that the stop event cancelled before it started.
CANCELLED = "cancelled"

#: Seconds a LocalCluster gets to start its workers.
START_TIMEOUT = 120.0


def require_dask() -> None:
    """Raise :class:`ClusterError` when ``dask.distributed`` is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(
            'needs Dask: pip install "sidraw[dask]" (dask and distributed)'
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    """How workers load their models (``--model``, ``--device``, ``--threads``, ``--precision``).

    ``threads`` None: the worker's physical cores divided by its Dask threads.
    """

    model: str | None = None
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"


class _WorkerModels(ModelCache):
    """A :class:`ModelCache` shared by a worker's threads; counts the networks it loaded."""

    def __init__(self, spec: ModelSpec, threads: int | None) -> None:
        super().__init__(spec.model, spec.device, threads, spec.precision)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, cfa: str) -> Any:
        with self._lock:
            if cfa not in self._networks:
                self.loads += 1
            return super().get(cfa)


_CACHES: dict[ModelSpec, _WorkerModels] = {}
_CACHES_LOCK = threading.Lock()


def _worker_threads() -> int:
    """Tasks this process runs at once: its Dask worker's threads (1 outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def worker_models(spec: ModelSpec) -> ModelCache:
    """The model cache of this worker process for ``spec``: models load once per worker."""
    with _CACHES_LOCK:
        if spec not in _CACHES:
            threads = spec.threads or max(1, physical_cores() // _worker_threads())
            _CACHES[spec] = _WorkerModels(spec, threads)
        return _CACHES[spec]


def model_loads() -> int:
    """How many networks this process loaded for cluster tasks (for tests and benchmarks)."""
    with _CACHES_LOCK:
        return sum(cache.loads for cache in _CACHES.values())


@dataclass(frozen=True)
class TaskSpec:
    """What every task of one batch shares."""

    options: ConvertOptions
    models: ModelSpec
    since: float  # when the batch started, seconds since the epoch
    batch: str  # the batch's id: its claims, its stop event
    stop_event: str


def convert_task(job: Job, spec: TaskSpec) -> Outcome:
    """A cluster task: one claimed job, as in a local batch (or cancelled, when stopped)."""
    from distributed import Event

    if Event(spec.stop_event).is_set():
        return Outcome(job, CANCELLED)
    models = worker_models(spec.models)

    def convert(j: Job) -> ConvertResult:
        return convert_file(j.src, j.dst, spec.options, models=models)

    return run_one(
        job, convert, overwrite=spec.options.overwrite, since=spec.since, batch=spec.batch
    )


def _absolute(job: Job) -> Job:
    return Job(Path(os.path.abspath(job.src)), Path(os.path.abspath(job.dst)))


def _as_given(outcome: Outcome, job: Job) -> Outcome:
    """An outcome from a worker, with the paths as the user gave them (as a local batch has)."""
    names = {
        os.path.abspath(job.src): os.fspath(job.src),
        os.path.abspath(job.dst): os.fspath(job.dst),
    }
    result = outcome.result
    if isinstance(result, ConvertResult):
        result = replace(
            result,
            input=names.get(result.input, result.input),
            output=names.get(result.output, result.output) if result.output else result.output,
        )
    error = outcome.error
    if error is not None and error.path in names:
        error = type(error)(error.reason, names[error.path])
    return Outcome(job, outcome.status, result=result, error=error, reason=outcome.reason)


def _task_failure(job: Job, exc: BaseException) -> Outcome:
    """A task that raised (a bug, or a worker that died too often) fails its file."""
    if isinstance(exc, SidrawError):
        return Outcome(job, "failed", error=exc)
    reason = f"cluster task failed ({type(exc).__name__}: {exc})".replace("\n", " ")
    return Outcome(job, "failed", error=SidrawError(reason, job.src))


def _prepare_folders(jobs: list[Job]) -> None:
    """What a local batch does when it reaches a folder: debris of killed runs is removed."""
    for folder in sorted({job.dst.parent for job in jobs}):
        cleanup_temporaries(folder, min_age=STALE_TMP_SECONDS)
        cleanup_stale_claims(folder)


def run_cluster(
    jobs: list[Job],
    client: Any,
    options: ConvertOptions,
    models: ModelSpec,
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run a batch as one task per job on a Dask ``client``; outcomes as tasks finish.

    Per-file errors, skips and outputs are those of :func:`sidraw.batch.run_jobs`. A task that
    raises something other than a :class:`SidrawError` fails its file, not the batch.

    Raises:
        KeyboardInterrupt: Ctrl-C, SIGTERM or SIGHUP; pending tasks were cancelled and the
            running ones finished (see the module's text) before it is raised.
    """
    from distributed import Event, as_completed

    batch = secrets.token_hex(8)
    spec = TaskSpec(options, models, time.time(), batch, f"sidraw-stop-{batch}")
    stop = Event(spec.stop_event, client=client)
    _prepare_folders(jobs)
    outcomes: list[Outcome] = []
    futures = {}
    for k, job in enumerate(jobs):
        key = f"sidraw-{batch}-{k}"
        futures[client.submit(convert_task, _absolute(job), spec, key=key, pure=False)] = job
    emitted: set[Any] = set()

    def emit(future: Any) -> None:
        emitted.add(future)
        job = futures[future]
        try:
            outcome = _as_given(future.result(), job)
        except Exception as exc:  # a task's exception, re-raised here by Dask
            outcome = _task_failure(job, exc)
        if outcome.status == CANCELLED:
            return
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        with terminate_as_interrupt():
            for future in as_completed(list(futures)):
                emit(future)
    except KeyboardInterrupt:
        stop.set()
        with terminate_as_interrupt():
            # Pending tasks now return at once; running ones finish and are reported.
            for future in as_completed([f for f in futures if f not in emitted]):
                emit(future)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
    return outcomes


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while worker processes start, so that they inherit it ignored: a terminal's
    Ctrl-C reaches the whole process group, and only the client is to act on it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def local_client(workers: int) -> Iterator[Any]:
    """A ``LocalCluster`` of ``workers`` single-thread worker processes and its client."""
    require_dask()
    from distributed import Client, LocalCluster

    try:
        with _sigint_ignored():
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=50,
                scheduler_port=0,
                host="127.0.0.1",
            )
    except Exception as exc:
        raise ClusterError(f"cannot start {workers} local workers ({exc})") from None
    try:
        with Client(cluster, timeout=START_TIMEOUT) as client:
            yield client
    finally:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)


@contextlib.contextmanager
def remote_client(address: str) -> Iterator[Any]:
    """A client of the running Dask scheduler at ``address`` (``tcp://host:8786``); it waits
    for the scheduler as Dask's ``distributed.comm.timeouts.connect`` says (30 s by default)."""
    require_dask()
    from distributed import Client

    try:
        client = Client(address)
    except Exception as exc:
        raise ClusterError(f"cannot reach the Dask scheduler {address} ({exc})") from None
    with client:
        yield client
