"""Helpers of the ``sidraw serve`` tests: a server on a test client, raw files, polling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidraw.sample import write_sample
from sidraw.serve.config import ServeConfig

CLIENT = "testclient-0001"
# Small frames: a conversion with the tiny test model takes well under a second.
SIZE = {"width": 320, "height": 224}


def raw_bytes(folder: Path, name: str = "dark.dng", **kwargs: Any) -> bytes:
    """A generated dark DNG's bytes (the sample generator at a small size)."""
    path = folder / name
    write_sample(path, realistic=True, **{**SIZE, **kwargs})
    return path.read_bytes()


def serve_config(work: Path, model: Path | None, **changes: Any) -> ServeConfig:
    """A config for tests: a work folder of the test's, one thread, a fast clean-up."""
    base = ServeConfig(work_dir=work, model=model, device="cpu", threads=1, sweep_seconds=0.1)
    return replace(base, **changes)


@contextmanager
def running(config: ServeConfig, **kwargs: Any) -> Iterator[Any]:
    """A started application (its lifespan run) on Starlette's test client."""
    from starlette.testclient import TestClient

    from sidraw.serve.app import create_app

    with TestClient(create_app(config, **kwargs), base_url="http://127.0.0.1") as client:
        yield client


def upload(client: Any, *files: tuple[str, bytes], **fields: str) -> Any:
    """POST /api/jobs with ``files`` (name, bytes) and form ``fields``."""
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/jobs", files=parts, data={"client": CLIENT, **fields})


def wait_until(client: Any, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    """Poll a job until its state is one of ``states``; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job.get("state") in states:
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.05)


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (none when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
