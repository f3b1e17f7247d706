"""Batches on a Dask cluster (issue 15, parts 2 and 3): ``--workers N`` is a ``LocalCluster``
on the same path as ``--scheduler``; outputs, errors, exit codes and Ctrl-C are as in a local
batch; a worker killed mid-file loses nothing; models load once per worker.

Skipped without ``distributed`` (``pip install "sidraw[dask]"``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed")

from sidraw import claims
from sidraw.batch import Job, collect_inputs, plan_jobs
from sidraw.distributed import ModelSpec, local_client, model_loads, run_cluster
from sidraw.output import TMP_PREFIX
from sidraw.pipeline import ConvertOptions
from sidraw.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
W, H = 480, 320


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for k in range(6):
        w, h = (1200, 800) if k % 3 == 0 else (W, H)
        write_sample(folder / f"f{k}.dng", width=w, height=h, seed=k)
    (folder / "f2_broken.dng").write_bytes(b"II*\x00 not a raw file at all" * 50)
    return folder


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TMP_PREFIX}*"))


def run_cli(shoot: Path, out: Path, models: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**environment(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}
    return subprocess.run(
        [sys.executable, "-m", "sidraw", "convert", str(shoot), "-o", str(out), "--model",
         str(models), "--ratio", "20", "--threads", "1", "--json", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


def records(stdout: str) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in map(json.loads, stdout.splitlines())}


def test_workers_match_the_serial_run(tmp_path: Path, shoot: Path, tiny_models: Path) -> None:
    serial = run_cli(shoot, tmp_path / "serial", tiny_models, "--serial")
    cluster = run_cli(shoot, tmp_path / "cluster", tiny_models, "--workers", "2")
    assert serial.returncode == cluster.returncode == 1, cluster.stderr
    assert "6 converted, 0 skipped, 1 failed" in cluster.stderr
    ser, clu = records(serial.stdout), records(cluster.stdout)
    assert ser.keys() == clu.keys()
    for name, rec in ser.items():
        other = clu[name]
        for key in ("input", "status", "error", "ratio", "model_sha256"):
            assert rec.get(key) == other.get(key), (name, key)
        if rec["output"]:
            assert Path(other["output"]) == tmp_path / "cluster" / Path(rec["output"]).name
    assert clu["f2_broken.dng"]["status"] == "failed"
    a, b = pixels(tmp_path / "serial"), pixels(tmp_path / "cluster")
    assert a.keys() == b.keys() and len(a) == 6
    for name in a:
        assert np.array_equal(a[name], b[name]), name  # bit-identical pixels
    assert leftovers(tmp_path / "cluster") == []
    again = run_cli(shoot, tmp_path / "cluster", tiny_models, "--workers", "2")
    assert "0 converted, 6 skipped, 1 failed" in again.stderr  # resumes as a local batch


def test_cluster_usage_errors(tmp_path: Path, shoot: Path, tiny_models: Path) -> None:
    both = run_cli(shoot, tmp_path / "o", tiny_models, "--workers", "2", "--scheduler", "x:1")
    assert both.returncode == 2 and "not both" in both.stderr
    zero = run_cli(shoot, tmp_path / "o", tiny_models, "--workers", "0")
    assert zero.returncode == 2 and "--workers must be at least 1" in zero.stderr
    unreachable = run_cli(shoot, tmp_path / "o", tiny_models, "--scheduler", "tcp://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach the Dask scheduler" in unreachable.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.fixture(scope="module")
def client():
    with local_client(2) as c:
        yield c


def jobs_for(shoot: Path, out: Path) -> list[Job]:
    inputs, errors = collect_inputs([str(shoot)])
    assert not errors
    return plan_jobs(inputs, out_dir=out, fmt="tiff").jobs


def test_model_loads_once_per_worker(client, tmp_path: Path, shoot: Path, tiny_models) -> None:
    jobs = jobs_for(shoot, tmp_path / "out")
    spec = ModelSpec(str(tiny_models), "cpu", 1)
    outcomes = run_cluster(jobs, client, ConvertOptions(ratio=20), spec)
    assert sorted(o.status for o in outcomes) == ["failed"] + ["ok"] * 6
    failed = next(o for o in outcomes if o.status == "failed")
    assert failed.error is not None and failed.error.path == str(shoot / "f2_broken.dng")
    loads = client.run(model_loads)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()), loads
    assert leftovers(tmp_path / "out") == []


def test_worker_killed_mid_file_loses_nothing(
    client, tmp_path: Path, shoot: Path, tiny_models: Path
) -> None:
    for k in range(6, 12):  # more, larger files: the kill lands mid-file
        write_sample(shoot / f"f{k}.dng", width=1200, height=800, seed=k)
    out = tmp_path / "out"
    jobs = jobs_for(shoot, out)
    spec = ModelSpec(str(tiny_models), "cpu", 1)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["outcomes"] = run_cluster(jobs, client, ConvertOptions(ratio=20), spec)
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for lock in out.glob(f"{TMP_PREFIX}*.lock") if out.is_dir() else []:
            info = claims.read_claim(lock) if lock.exists() else None
            if info is not None and info.pid != os.getpid():
                os.kill(info.pid, signal.SIGKILL)  # the worker converting this file
                killed = lock.name
                break
        time.sleep(0.002)
    thread.join(timeout=600)
    assert killed is not None, "no worker was caught converting"
    assert "error" not in result, result
    outcomes = result["outcomes"]
    assert isinstance(outcomes, list)
    statuses = {o.job.src.name: o.status for o in outcomes}
    assert statuses.pop("f2_broken.dng") == "failed"
    assert set(statuses.values()) <= {"ok", "skipped"}, statuses  # the killed file: retried
    assert len(statuses) == 12
    for p in out.glob("*.tif"):
        assert tifffile.imread(p).dtype == np.uint16
    assert len(list(out.glob("*.tif"))) == 12
    # No claim is left; the killed worker's temporary file, if any, is removed by a later run.
    assert [p for p in leftovers(out) if p.suffix == ".lock"] == []


@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_ctrl_c_during_a_cluster_batch(
    tmp_path: Path, shoot: Path, tiny_models: Path, group: bool
) -> None:
    for k in range(6, 12):
        write_sample(shoot / f"f{k}.dng", width=W, height=H, seed=k)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidraw", "convert", str(shoot), "-o", str(out), "--model",
         str(tiny_models), "--ratio", "20", "--threads", "1", "--workers", "2"],
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=group,
        preexec_fn=None if group else lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("*.tif")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if group:  # what a terminal's Ctrl-C does: the signal reaches every process of the group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = list(out.glob("*.tif"))
    assert 1 <= len(done) < 12, "the batch was not interrupted"
    for p in done:
        assert tifffile.imread(p).dtype == np.uint16
    assert leftovers(out) == []  # no temporary, no claim: running files finished
    again = run_cli(shoot, out, tiny_models, "--workers", "2")
    assert again.returncode == 1 and f"{12 - len(done)} converted" in again.stderr
    assert len(list(out.glob("*.tif"))) == 12


def test_scheduler_address_runs_the_batch_there(
    client, tmp_path: Path, shoot: Path, tiny_models: Path
) -> None:
    """``--scheduler`` on a running cluster (this module's, as a remote one would be)."""
    out = tmp_path / "out"
    before = client.run(model_loads)
    res = run_cli(shoot, out, tiny_models, "--scheduler", client.scheduler.address)
    assert res.returncode == 1, res.stderr
    assert "6 converted, 0 skipped, 1 failed" in res.stderr
    assert records(res.stdout)["f2_broken.dng"]["status"] == "failed"
    assert len(pixels(out)) == 6 and leftovers(out) == []
    after = client.run(model_loads)
    assert all(after[w] - before.get(w, 0) <= 1 for w in after), (before, after)  # once a worker
