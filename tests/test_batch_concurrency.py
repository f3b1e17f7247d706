"""Several sidraw processes on one folder share the work through claims (issue 15, part 1).

Unit tests of :mod:`sidraw.claims` first (exclusive creation, staleness, take-over), then
:func:`sidraw.batch.run_jobs` with claims held by someone else, then real ``python -m sidraw
convert`` processes started together on one folder: every output is written once and complete,
no temporary or claim file is left, and each process exits 0 unless a file failed in it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sidraw import claims
from sidraw.batch import SKIP_APPEARED, SKIP_ELSEWHERE, Job, run_jobs
from sidraw.output import TMP_PREFIX, write_atomic
from sidraw.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
W, H = 480, 320
SLOW = (1200, 800)  # the first files are larger, so that processes meet on them


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_claim(dst: Path, *, pid: int, host: str | None = None, age: float = 0.0) -> Path:
    info = claims.ClaimInfo(host or socket.gethostname(), pid, time.time() - age, "someone")
    path = claims.lock_path(dst)
    path.write_text(info.to_json())
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def leftovers(folder: Path) -> list[Path]:
    """Temporary and claim files: none may stay behind."""
    return sorted(folder.rglob(f"{TMP_PREFIX}*"))


# --- claims -----------------------------------------------------------------------------------


def test_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    dst = tmp_path / "a.tif"
    first = claims.try_claim(dst)
    assert first is not None
    info = json.loads(claims.lock_path(dst).read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert abs(info["started"] - time.time()) < 60
    assert claims.try_claim(dst) is None  # a live process (this one) holds it
    first.release()
    assert not claims.lock_path(dst).exists()
    with claims.try_claim(dst) as again:
        assert again is not None
    assert leftovers(tmp_path) == []


def test_long_output_names_get_a_short_claim(tmp_path: Path) -> None:
    dst = tmp_path / ("x" * 250 + ".tif")
    assert len(claims.lock_path(dst).name) < 255
    with claims.try_claim(dst) as claim:
        assert claim is not None and claims.try_claim(dst) is None
    assert leftovers(tmp_path) == []


def test_stale_claims_are_taken_over(tmp_path: Path) -> None:
    dead = write_claim(tmp_path / "dead.tif", pid=dead_pid())
    old = write_claim(
        tmp_path / "old.tif", pid=1, host="elsewhere", age=claims.CLAIM_STALE_SECONDS + 5
    )
    for dst in (tmp_path / "dead.tif", tmp_path / "old.tif"):
        claim = claims.try_claim(dst)
        assert claim is not None, dst
        assert json.loads(claims.lock_path(dst).read_text())["pid"] == os.getpid()
        claim.release()
    assert not dead.exists() and not old.exists()
    assert leftovers(tmp_path) == []


def test_live_claims_are_respected(tmp_path: Path) -> None:
    other_host = write_claim(tmp_path / "a.tif", pid=1, host="elsewhere", age=60)
    alive = write_claim(tmp_path / "b.tif", pid=os.getppid())
    claims.lock_path(tmp_path / "c.tif").write_text("")  # being written this very moment
    for name in ("a.tif", "b.tif", "c.tif"):
        assert claims.try_claim(tmp_path / name) is None, name
    assert other_host.exists() and alive.exists()


def test_empty_claim_goes_stale_and_same_batch_is_taken_over(tmp_path: Path) -> None:
    empty = claims.lock_path(tmp_path / "a.tif")
    empty.write_text("")
    past = time.time() - claims.CLAIM_EMPTY_SECONDS - 5
    os.utime(empty, (past, past))
    claim = claims.try_claim(tmp_path / "a.tif")
    assert claim is not None
    claim.release()
    # A cluster task retried after its worker died finds its own batch's claim.
    held = claims.try_claim(tmp_path / "b.tif", batch="batch-1")
    assert held is not None
    assert claims.try_claim(tmp_path / "b.tif", batch="batch-2") is None
    retry = claims.try_claim(tmp_path / "b.tif", batch="batch-1")
    assert retry is not None and retry.info.token != held.info.token
    held.release()  # no longer ours: leaves the retry's claim alone
    assert claims.lock_path(tmp_path / "b.tif").exists()
    retry.release()
    assert leftovers(tmp_path) == []


def test_racing_take_overs_leave_one_owner(tmp_path: Path) -> None:
    dst = tmp_path / "a.tif"
    write_claim(dst, pid=dead_pid())
    seen = claims.read_claim(claims.lock_path(dst))
    winner = claims.try_claim(dst)
    assert winner is not None
    # A second process that judged the same dead claim stale moves the winner's claim aside:
    # it notices and puts it back.
    assert claims._take_over(claims.lock_path(dst), seen) is False
    assert claims.read_claim(claims.lock_path(dst)) == winner.info
    winner.release()
    assert leftovers(tmp_path) == []


# --- run_jobs with claims ---------------------------------------------------------------------


def fake_convert(job: Job) -> str:
    write_atomic(job.dst, b"image of " + job.src.name.encode())
    return "done"


def test_run_jobs_skips_what_another_process_holds_or_wrote(tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{k}.dng", tmp_path / "out" / f"{k}.tif") for k in range(3)]
    (tmp_path / "out").mkdir()
    elsewhere = claims.try_claim(jobs[0].dst)  # stands for a live process converting it

    def convert(job: Job) -> str:
        if job is jobs[1]:  # another process finishes this output while we convert it
            jobs[1].dst.write_bytes(b"theirs")
        return fake_convert(job)

    outcomes = run_jobs(jobs, convert)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("skipped", SKIP_ELSEWHERE),
        ("skipped", SKIP_APPEARED),
        ("ok", None),
    ]
    assert jobs[1].dst.read_bytes() == b"theirs"
    assert elsewhere is not None
    elsewhere.release()
    assert leftovers(tmp_path) == []


def test_overwrite_keeps_what_another_run_of_the_batch_wrote(tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{k}.dng", tmp_path / f"{k}.tif") for k in range(3)]
    old = time.time() - 3600
    for job in jobs:
        job.dst.write_bytes(b"last week's")
        os.utime(job.dst, (old, old))

    def convert(job: Job) -> str:
        if job is jobs[0]:  # meanwhile another run with --overwrite rewrites the next output
            jobs[1].dst.write_bytes(b"theirs, just now")
        write_atomic(job.dst, b"ours", overwrite=True)
        return "done"

    outcomes = run_jobs(jobs, convert, overwrite=True)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("ok", None),
        ("skipped", SKIP_APPEARED),
        ("ok", None),
    ]
    assert [j.dst.read_bytes() for j in jobs] == [b"ours", b"theirs, just now", b"ours"]


def test_run_jobs_pipelined_releases_every_claim(tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{k}.dng", tmp_path / f"{k}.tif") for k in range(4)]
    seen_locks = []

    def prepare(job: Job) -> Job:
        seen_locks.append(claims.lock_path(job.dst).exists())
        return job

    outcomes = run_jobs(jobs, prepare, finish=fake_convert)
    assert [o.status for o in outcomes] == ["ok"] * 4
    assert all(seen_locks)  # each job is claimed while it is converted
    assert leftovers(tmp_path) == []


# --- concurrent CLI processes -----------------------------------------------------------------


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for k in range(7):
        w, h = SLOW if k < 2 else (W, H)
        write_sample(folder / f"f{k}.dng", width=w, height=h, seed=k)
    (folder / "f3_broken.dng").write_bytes(b"II*\x00 not a raw file at all" * 50)
    return folder


def start(folder: Path, out: Path, models: Path, *extra: str) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sidraw", "convert", str(folder), "-o", str(out), "--model",
         str(models), "--ratio", "20", "--threads", "1", "--json", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def check_outputs(shoot: Path, out: Path) -> None:
    good = sorted(p.stem for p in shoot.glob("*.dng") if "broken" not in p.name)
    assert sorted(p.stem for p in out.glob("*.tif")) == good
    for p in out.glob("*.tif"):
        img = tifffile.imread(p)
        assert img.dtype == np.uint16 and img.shape[2] == 3
    assert leftovers(out) == []


@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_processes_share_one_folder(
    tmp_path: Path, shoot: Path, tiny_models: Path, runs: int
) -> None:
    out = tmp_path / "out"
    procs = [start(shoot, out, tiny_models) for _ in range(runs)]
    results = [p.communicate(timeout=600) for p in procs]
    n_files = len(list(shoot.glob("*.dng")))
    converted = []
    broken_failed = 0
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        records = [json.loads(line) for line in stdout.splitlines()]
        assert len(records) == n_files, stderr
        failed = [r for r in records if r["status"] == "failed"]
        assert all("broken" in r["input"] for r in failed), stderr
        broken_failed += len(failed)
        assert proc.returncode == (1 if failed else 0), stderr
        assert "Traceback" not in stderr
        converted += [Path(r["input"]).stem for r in records if r["status"] == "ok"]
        skips = {r.get("reason") for r in records if r["status"] == "skipped"}
        assert skips <= {"exists", SKIP_ELSEWHERE, SKIP_APPEARED}
    assert broken_failed >= 1
    assert sorted(converted) == sorted(p.stem for p in out.glob("*.tif"))  # each written once
    check_outputs(shoot, out)


def test_claims_of_live_and_dead_processes_at_the_cli(
    tmp_path: Path, shoot: Path, tiny_models: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    live = write_claim(out / "f0.tif", pid=os.getpid())
    write_claim(out / "f1.tif", pid=dead_pid())  # a killed run's claim
    proc = start(shoot, out, tiny_models)
    stdout, stderr = proc.communicate(timeout=600)
    records = {Path(r["input"]).stem: r for r in map(json.loads, stdout.splitlines())}
    assert records["f0"]["status"] == "skipped" and records["f0"]["reason"] == SKIP_ELSEWHERE
    assert f"f0.dng: skipped, {out / 'f0.tif'} in progress elsewhere" in stderr
    assert records["f1"]["status"] == "ok"  # taken over
    assert proc.returncode == 1 and records["f3_broken"]["status"] == "failed"
    assert leftovers(out) == [live]
    live.unlink()
    again = start(shoot, out, tiny_models)
    stdout, stderr = again.communicate(timeout=600)
    assert "6 skipped" in stderr and "1 converted" in stderr
    check_outputs(shoot, out)


def test_killed_run_is_taken_over(tmp_path: Path, shoot: Path, tiny_models: Path) -> None:
    out = tmp_path / "out"
    proc = start(shoot, out, tiny_models)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.tif")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    # Whatever it held stays behind with its dead pid; a new run takes it over at once.
    again = start(shoot, out, tiny_models)
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 1, stderr  # the broken file only
    assert "in progress elsewhere" not in stderr
    assert [p for p in leftovers(out) if p.suffix == ".lock"] == []
    good = sorted(p.stem for p in shoot.glob("*.dng") if "broken" not in p.name)
    assert sorted(p.stem for p in out.glob("*.tif")) == good


def test_ctrl_c_leaves_no_claim(tmp_path: Path, shoot: Path, tiny_models: Path) -> None:
    out = tmp_path / "out"
    proc = start(shoot, out, tiny_models)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.tif")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert leftovers(out) == []  # neither a temporary file nor a claim
