"""The job queue: one conversion at a time in a worker thread, clients, and the clean-up.

A job is one uploaded file. Its states::

    queued -> running -> done | failed | cancelled
    queued -> cancelled                      (its client left, or DELETE)
    (upload) -> failed                       (no raw file: it never waits in the queue)

Jobs run in upload order, one at a time, in one thread (the network already uses every core;
two conversions at once would only double the memory). The thread holds the lock only to change
a job's state, never while converting, so the event loop answers at once.

A *client* is whoever uploaded a job: the page sends the id it made up, a script gets one from
its first ``POST /api/jobs``. Every request about a client's jobs marks it as seen; a client not
seen for ``idle_seconds`` has gone (its page was closed, its script died): its queued jobs are
cancelled and its running job stops at the next tile. The clean-up (:meth:`JobQueue.sweep`, run
every ``sweep_seconds``) does that, and deletes a finished job's files ``download_grace`` seconds
after its download or ``keep_minutes`` after it finished, whichever comes first; the job itself
is then forgotten. An upload's source file is deleted as soon as its conversion ends.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import SidrawError
from ..model import ModelCache
from .config import ServeConfig
from .conversion import Cancelled, Converted, Settings, content_problem, convert_job
from .names import result_name
from .uploads import UploadedFile

log = logging.getLogger("sidraw.serve")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})

Convert = Callable[..., Converted]


class QueueFull(Exception):
    """More jobs than ``max_jobs`` would be waiting or running."""


@dataclass
class Job:
    """One uploaded file and what became of it (times from :func:`time.monotonic`, seconds)."""

    id: str
    name: str
    client: str
    folder: Path
    source: Path | None
    settings: Settings
    created: float
    state: JobState = "queued"
    error: str | None = None
    progress: float = 0.0
    finished: float | None = None
    downloaded: float | None = None
    stop: str | None = None  # why a running job is being stopped
    readers: int = 0  # responses sending its files now: the clean-up waits for them
    discard: bool = False  # its client deleted it: it goes as soon as no one reads it
    converted: Converted | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def download_name(self) -> str:
        """The result's file name for people: ``night.ARW`` -> ``night.tif``."""
        return result_name(self.name, self.settings.fmt)


class JobQueue:
    """Jobs, their worker thread and their clients, for one server.

    Args:
        config: the server's settings (limits, times, model).
        root: the folder jobs' folders are in.
        convert: what converts a job (tests give a slower or failing one).
        clock: seconds, monotonic.
    """

    def __init__(
        self,
        config: ServeConfig,
        root: Path,
        convert: Convert = convert_job,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.root = root
        self._convert = convert
        self._clock = clock
        self._models = ModelCache(config.model, config.device, config.threads)  # type: ignore[arg-type]
        self._jobs: dict[str, Job] = {}  # in upload order: the queue's order
        self._seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        # A daemon thread: a conversion that is still rendering never keeps the process alive.
        self._thread = threading.Thread(target=self._work, name="sidraw-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (the running job is cancelled at its next tile) and delete every
        job's files."""
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                if job.state == "running":
                    job.stop = "cancelled: the server is stopping"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            for job in self._jobs.values():
                _remove(job.folder)
            self._jobs.clear()

    # -- what the routes call ------------------------------------------------------------------

    def add(self, files: list[UploadedFile], settings: Settings, client: str) -> list[Job]:
        """Jobs for the files of one upload; a file that is no raw file fails at once.

        Raises:
            QueueFull: the files would make more than ``max_jobs`` waiting or running jobs (the
                caller discards the upload).
        """
        now = self._clock()
        with self._cond:
            active = sum(j.state in ("queued", "running") for j in self._jobs.values())
            if active + len(files) > self.config.max_jobs:
                raise QueueFull
            jobs = [self._new_job(f, settings, client, now) for f in files]
            self._seen[client] = now
            self._cond.notify_all()
        return jobs

    def _new_job(self, f: UploadedFile, settings: Settings, client: str, now: float) -> Job:
        job = Job(f.id, f.name, client, f.path.parent, f.path, settings, created=now)
        problem = content_problem(f.head, f.size)
        if problem is not None:
            self._end(job, "failed", problem)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        """A job, marking its client as seen."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                self._seen[job.client] = self._clock()
            return job

    def of_client(self, client: str) -> list[Job]:
        """A client's jobs in upload order, marking it as seen."""
        with self._cond:
            self._seen[client] = self._clock()
            return [j for j in self._jobs.values() if j.client == client]

    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job, or delete a finished one's files (False: unknown)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job.state == "running":
                job.stop = "cancelled by its client"
            elif job.state == "queued":
                self._end(job, "cancelled", "cancelled by its client")
            else:
                job.discard = True
                self._sweep_job(job, self._clock())
            return True

    def checkout(self, jobs: list[Job]) -> list[Job]:
        """Of ``jobs``, those with a result, kept from the clean-up until :meth:`checkin`."""
        with self._cond:
            held = [j for j in jobs if j.id in self._jobs and _has_result(j)]
            for job in held:
                job.readers += 1
            return held

    def checkin(self, jobs: list[Job]) -> None:
        """The files of ``jobs`` (from :meth:`checkout`) are no longer being read."""
        with self._cond:
            for job in jobs:
                job.readers -= 1

    def downloaded(self, jobs: list[Job]) -> None:
        """Results were downloaded: they go ``download_grace`` seconds from now."""
        now = self._clock()
        with self._cond:
            for job in jobs:
                job.downloaded = job.downloaded or now

    def describe(self, job: Job) -> dict[str, Any]:
        """A job as the API shows it (see the README's JSON API)."""
        with self._cond:
            return self._describe(job)

    def _describe(self, job: Job) -> dict[str, Any]:
        done = job.state == "done" and job.converted is not None
        base = f"/api/jobs/{job.id}"
        return {
            "id": job.id,
            "name": job.name,
            "state": job.state,
            "position": self._position(job),
            "progress": round(job.progress, 3),
            "settings": job.settings.to_dict(),
            "error": job.error,
            **job.record,
            "result_name": job.download_name if done else None,
            "result": f"{base}/result" if done else None,
            "preview": f"{base}/preview" if done and job.converted.preview else None,  # type: ignore[union-attr]
            "expires_in": self._expires_in(job),
        }

    def _position(self, job: Job) -> int | None:
        """1 for the job that runs next, 2 after it, ...; None unless queued."""
        if job.state != "queued":
            return None
        queued = (j for j in self._jobs.values() if j.state == "queued")
        return next(n for n, j in enumerate(queued, 1) if j is job)

    def _expires_in(self, job: Job) -> float | None:
        """Seconds until a finished job's files are deleted."""
        if job.finished is None:
            return None
        if job.discard:
            return 0.0
        left = job.finished + 60 * self.config.keep_minutes
        if job.downloaded is not None:
            left = min(left, job.downloaded + self.config.download_grace)
        return round(max(0.0, left - self._clock()), 1)

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._next()) is not None:
            self._run(job)

    def _next(self) -> Job | None:
        """The next queued job, now running (None when stopping); waits for one."""
        with self._cond:
            while not self._stopping:
                job = next((j for j in self._jobs.values() if j.state == "queued"), None)
                if job is not None:
                    job.state = "running"
                    return job
                self._cond.wait()
            return None

    def _run(self, job: Job) -> None:
        assert job.source is not None
        try:
            converted = self._convert(
                job.source,
                job.settings,
                self._models,
                stopped=lambda: job.stop is not None,
                progress=lambda fraction: setattr(job, "progress", fraction),
            )
        except Cancelled:
            self._finish(job, "cancelled", job.stop)
        except SidrawError as exc:
            self._finish(job, "failed", exc.reason)
        except Exception as exc:  # a bug must fail its job, never the queue
            log.exception("converting %s failed", job.name)
            self._finish(job, "failed", f"internal error ({type(exc).__name__}: {exc})")
        else:
            self._finish(job, "done", None, converted)

    def _finish(
        self, job: Job, state: JobState, error: str | None, converted: Converted | None = None
    ) -> None:
        with self._cond:
            if converted is not None:
                res = converted.result
                job.converted, job.progress = converted, 1.0
                job.record = {"ratio": round(res.decision.ratio, 4),
                              "ratio_mode": res.decision.mode,
                              "ratio_why": res.decision.describe(),
                              "seconds": round(res.seconds, 3), "model": res.model}  # fmt: skip
            self._end(job, state, error)

    def _end(self, job: Job, state: JobState, error: str | None) -> None:
        """Settle a job (the lock is held): its upload goes, and all its files unless done."""
        job.state, job.error, job.finished = state, error, self._clock()
        if job.source is not None:
            job.source.unlink(missing_ok=True)
            job.source = None
        if state != "done":
            _remove(job.folder)

    # -- clean-up ------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Cancel the jobs of clients that have gone; delete what has expired."""
        now = self._clock()
        with self._cond:
            for job in list(self._jobs.values()):
                self._sweep_job(job, now)
            clients = {j.client for j in self._jobs.values()}
            for client in [c for c in self._seen if c not in clients]:
                del self._seen[client]

    def _sweep_job(self, job: Job, now: float) -> None:
        seen = self._seen.get(job.client, job.created)
        gone = now - seen > self.config.idle_seconds
        if job.state == "queued" and gone:
            self._end(job, "cancelled", _left_message(self.config.idle_seconds))
        elif job.state == "running" and gone and job.stop is None:
            job.stop = _left_message(self.config.idle_seconds)
        elif job.state in FINAL and job.readers == 0 and self._expires_in(job) == 0:
            self._forget(job)

    def _forget(self, job: Job) -> None:
        _remove(job.folder)
        self._jobs.pop(job.id, None)


def _has_result(job: Job) -> bool:
    return job.state == "done" and job.converted is not None and job.converted.output.is_file()


def _left_message(idle: float) -> str:
    return f"cancelled: its client stopped asking for it ({idle:g} s without a request)"


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
