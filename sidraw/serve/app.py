"""The routes of ``sidraw serve``: the page, its assets and the JSON API (see the README).

=======  ===========================  ======================================================
GET      ``/``                        the page (``static/index.html``)
GET      ``/static/...``              its script and style sheet
GET      ``/api/config``              version, limits and choices, for the page and scripts
POST     ``/api/jobs``                upload raw files (multipart), one job each -> 202
GET      ``/api/jobs?client=ID``      a client's jobs
GET      ``/api/jobs/{id}``           one job
DELETE   ``/api/jobs/{id}``           cancel it, or delete its result
GET      ``/api/jobs/{id}/result``    the result file
GET      ``/api/jobs/{id}/preview``   the before/after JPEG (as ``sidraw compare`` draws it)
GET      ``/api/results.zip?ids=...`` a zip of the results of finished jobs
=======  ===========================  ======================================================

Errors are JSON objects ``{"error": "one line"}`` with a 4xx/5xx status. :func:`create_app`
builds one application per config; everything it holds lives in that application.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..cli_options import ColorSpaceChoice, Format, UsageError
from .archive import write_zip
from .config import ServeConfig
from .conversion import convert_job, parse_settings
from .jobs import Convert, Job, JobQueue, QueueFull
from .names import content_disposition
from .security import Guard, allowed_hosts
from .uploads import Limits, UploadError, receive_upload

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {".tif": "image/tiff", ".png": "image/png", ".dng": "image/x-adobe-dng"}
# Client ids are made up by the page (or by the server, for a script): short and plain.
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def error(status: int, message: str) -> JSONResponse:
    """The API's error answer."""
    return JSONResponse({"error": message}, status_code=status)


class _Api:
    """The routes' state: the config, the work folder and the queue (made at startup)."""

    def __init__(self, config: ServeConfig, convert: Convert) -> None:
        self.config = config
        self.convert = convert
        self.work = Path()
        self._queue: JobQueue | None = None

    @property
    def queue(self) -> JobQueue:
        assert self._queue is not None, "the application has not started (lifespan)"
        return self._queue

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Start the worker and the clean-up; at shutdown stop them and delete every file."""
        own = self.config.work_dir is None
        self.work = Path(tempfile.mkdtemp(prefix="sidraw-serve-")) if own else self.config.work_dir  # type: ignore[assignment]
        self._queue = JobQueue(self.config, self.work / "jobs", self.convert)
        self.queue.start()
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await anyio.to_thread.run_sync(self.queue.stop)
            for folder in [self.work] if own else [self.work / "jobs", self.work / "zips"]:
                shutil.rmtree(folder, ignore_errors=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            await anyio.to_thread.run_sync(self._sweep)

    def _sweep(self) -> None:
        self.queue.sweep()
        # Zips are deleted once sent; one left by a crash goes after --keep.
        cutoff = time.time() - 60 * self.config.keep_minutes
        for stale in (self.work / "zips").glob("*.zip"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    # -- the page and its facts ----------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def settings(self, request: Request) -> Response:
        c = self.config
        return JSONResponse({
            "version": __version__,
            "max_upload": c.max_upload,
            "max_request": c.max_request,
            "max_files": c.max_files,
            "keep_minutes": c.keep_minutes,
            "idle_seconds": c.idle_seconds,
            "formats": [f.value for f in Format],
            "color_spaces": [s.value for s in ColorSpaceChoice],
        })  # fmt: skip

    # -- jobs ----------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        limits = Limits(self.config.max_upload, self.config.max_request, self.config.max_files)
        try:
            upload = await receive_upload(
                request.stream(),
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                self.queue.root,
                limits,
            )
        except UploadError as exc:
            return error(exc.status, exc.message)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the upload is gone already
        client = _client_id(upload.fields.get("client") or request.headers.get("x-sidraw-client"))
        try:
            jobs = self.queue.add(upload.files, parse_settings(upload.fields), client)
        except UsageError as exc:
            upload.discard()
            return error(400, str(exc))
        except QueueFull:
            upload.discard()
            return error(503, f"the queue is full ({self.config.max_jobs} jobs): try later")
        described = [self.queue.describe(j) for j in jobs]
        return JSONResponse({"client": client, "jobs": described}, status_code=202)

    async def list_jobs(self, request: Request) -> Response:
        client = request.query_params.get("client", "")
        if not _CLIENT_ID.fullmatch(client):
            return error(400, "give ?client=ID (the client id POST /api/jobs answered)")
        jobs = self.queue.of_client(client)
        return JSONResponse({"client": client, "jobs": [self.queue.describe(j) for j in jobs]})

    def _job(self, request: Request) -> Job | Response:
        job = self.queue.get(request.path_params["id"])
        if job is None:
            minutes = f"{self.config.keep_minutes:g}"
            return error(404, f"no such job (results are deleted after their download or "
                              f"{minutes} minutes after they are ready)")  # fmt: skip
        return job

    async def one(self, request: Request) -> Response:
        job = self._job(request)
        return job if isinstance(job, Response) else JSONResponse(self.queue.describe(job))

    async def delete(self, request: Request) -> Response:
        job = self._job(request)
        if isinstance(job, Response):
            return job
        self.queue.cancel(job.id)
        return JSONResponse(self.queue.describe(job))

    def _held(self, request: Request) -> tuple[Job, Callable[[], None]] | Response:
        """The job of the URL with its result, kept from the clean-up until released."""
        job = self._job(request)
        if isinstance(job, Response):
            return job
        held = self.queue.checkout([job])
        if not held:
            why = f": {job.error}" if job.error else ""
            return error(409, f"{job.name} has no result ({job.state}{why})")
        return job, lambda: self.queue.checkin(held)

    async def result(self, request: Request) -> Response:
        held = self._held(request)
        if isinstance(held, Response):
            return held
        job, release = held
        output = job.converted.output  # type: ignore[union-attr]
        return HeldFile(
            output,
            release,
            media_type=MEDIA_TYPES.get(output.suffix, "application/octet-stream"),
            headers={"content-disposition": content_disposition(job.download_name)},
            background=BackgroundTask(self.queue.downloaded, [job]),  # once sent whole
        )

    async def preview(self, request: Request) -> Response:
        held = self._held(request)
        if isinstance(held, Response):
            return held
        job, release = held
        preview = job.converted.preview  # type: ignore[union-attr]
        if preview is None:
            release()
            return error(404, f"{job.name} has no preview")
        return HeldFile(preview, release, media_type="image/jpeg")

    async def archive(self, request: Request) -> Response:
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        held = self.queue.checkout([j for j in map(self.queue.get, ids) if j is not None])
        if not held:
            return error(404, "none of these jobs has a result (give ?ids=ID,ID,...)")
        entries = [(j.converted.output, j.download_name) for j in held]  # type: ignore[union-attr]
        try:
            path = await anyio.to_thread.run_sync(write_zip, entries, self.work / "zips")
        finally:
            self.queue.checkin(held)
        tasks = BackgroundTasks()
        tasks.add_task(self.queue.downloaded, held)
        return HeldFile(
            path,
            lambda: path.unlink(missing_ok=True),
            media_type="application/zip",
            background=tasks,
            headers={"content-disposition": content_disposition("sidraw.zip")},
        )

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.page),
            Mount("/static", StaticFiles(packages=[("sidraw.serve", "static")])),
            Route("/api/config", self.settings),
            Route("/api/jobs", self.create, methods=["POST"]),
            Route("/api/jobs", self.list_jobs, methods=["GET"]),
            Route("/api/results.zip", self.archive),
            Route("/api/jobs/{id}", self.one, methods=["GET"]),
            Route("/api/jobs/{id}", self.delete, methods=["DELETE"]),
            Route("/api/jobs/{id}/result", self.result),
            Route("/api/jobs/{id}/preview", self.preview),
        ]


class HeldFile(FileResponse):
    """A file response that calls ``release`` once it is sent or cut off (the clean-up must not
    delete a file while it is being sent, and a download cut off runs no background task)."""

    def __init__(self, path: Path, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _client_id(given: str | None) -> str:
    """The client's own id when it gave a plain one, else a new one."""
    return given if given and _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex


def create_app(config: ServeConfig, convert: Convert = convert_job) -> Starlette:
    """The application of one server.

    Args:
        config: its settings; a config that listens beyond loopback should carry a token
            (:meth:`ServeConfig.with_token`).
        convert: what converts a job (:func:`sidraw.serve.conversion.convert_job`; tests may
            slow it down).
    """
    api = _Api(config, convert)
    hosts = allowed_hosts(config.host, config.loopback)
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(Guard, token=config.token),
    ]
    return Starlette(routes=api.routes(), middleware=middleware, lifespan=api.lifespan)
