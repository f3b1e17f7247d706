"""Interruptions: Ctrl-C, SIGTERM, SIGKILL or a crash never leave a truncated output, and a re-run
picks up where the batch stopped.

The signal tests run ``python -m sidraw convert`` in a real subprocess and interrupt it as soon as
the first output appears; the atomic-write tests interrupt ``write_atomic`` at every step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sidraw import output
from sidraw.batch import Job, run_jobs, terminate_as_interrupt
from sidraw.errors import OutputError
from sidraw.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
N_FILES = 8
W, H = 480, 320


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(N_FILES):
        write_sample(folder / f"f{k}.dng", width=W, height=H, seed=k)
    return folder


def start(folder: Path, out: Path, models: Path) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-m", "sidraw", "convert", str(folder), "-o", str(out), "--model",
         str(models), "--ratio", "20", "--threads", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background jobs inherit SIGINT ignored, and Python then installs no Ctrl-C
        # handler: give the child the default disposition a terminal user's process has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_first_output(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*.tif")):
        if proc.poll() is not None:
            pytest.fail(f"sidraw ended before its first output: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no output appeared")
        time.sleep(0.01)


def check_outputs(out: Path) -> list[str]:
    """Every file under a final name is a complete TIFF; returns their names."""
    names = sorted(p.name for p in out.glob("*.tif"))
    for name in names:
        img = tifffile.imread(out / name)
        assert img.shape == (H, W, 3) and img.dtype == np.uint16
    return names


def temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(f"{output.TMP_PREFIX}*{output.TMP_SUFFIX}"))


def rerun_completes(batch: Path, out: Path, models: Path, already: int) -> None:
    proc = start(batch, out, models)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"{N_FILES - already} converted, {already} skipped, 0 failed" in stderr
    assert len(check_outputs(out)) == N_FILES
    assert temporaries(out) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_rerun_resumes(
    tmp_path: Path, batch: Path, tiny_models: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "out"
    proc = start(batch, out, tiny_models)
    wait_for_first_output(proc, out)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr)  # SIGTERM is handled like Ctrl-C
    assert "Traceback" not in stderr
    done = check_outputs(out)
    assert 1 <= len(done) < N_FILES, "the batch was not interrupted"
    assert temporaries(out) == []
    rerun_completes(batch, out, tiny_models, already=len(done))


def test_sigkill_then_rerun_cleans_up(tmp_path: Path, batch: Path, tiny_models: Path) -> None:
    out = tmp_path / "out"
    proc = start(batch, out, tiny_models)
    wait_for_first_output(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = check_outputs(out)
    assert 1 <= len(done) < N_FILES
    # Whatever temporary the kill left is old by the time someone re-runs the batch.
    old = time.time() - 2 * output.STALE_TMP_SECONDS
    for tmp in temporaries(out):
        os.utime(tmp, (old, old))
    stale = out / f"{output.TMP_PREFIX}killed{output.TMP_SUFFIX}"
    stale.write_bytes(b"half an image")
    os.utime(stale, (old, old))
    # A fresh one may belong to another sidraw writing into the same folder right now.
    fresh = out / f"{output.TMP_PREFIX}busy{output.TMP_SUFFIX}"
    fresh.write_bytes(b"being written")
    unrelated = out / ".sidraw-notes.txt"
    unrelated.write_text("not ours")
    os.utime(unrelated, (old, old))
    proc = start(batch, out, tiny_models)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert len(check_outputs(out)) == N_FILES
    assert temporaries(out) == [fresh]
    assert unrelated.exists()


# --- write_atomic interrupted at every step ---------------------------------------------------

# The steps of write_atomic; the final rename is a hard link (new name) or a replace (overwrite).
STEPS = [
    (step, overwrite)
    for overwrite in (False, True)
    for step in ("write", "fsync", "chmod", "replace" if overwrite else "link", "fsync_dir")
]


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize(("step", "overwrite"), STEPS)
def test_write_atomic_interrupted_at_any_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, fault: type, overwrite: bool
) -> None:
    final = tmp_path / "out.tif"
    old = b"old complete file"
    if overwrite:
        final.write_bytes(old)
    new = os.urandom(100_000)
    real = {name: getattr(os, name) for name in ("fsync", "chmod", "link", "replace", "open")}
    hit = []

    def boom() -> None:
        hit.append(step)
        raise fault(errno.EIO, "injected") if fault is OSError else fault()

    def writer(f: object) -> None:
        f.write(new[:50_000])  # type: ignore[attr-defined]
        if step == "write":
            boom()
        f.write(new[50_000:])  # type: ignore[attr-defined]

    def patched(name: str):
        def call(*args: object, **kwargs: object) -> object:
            if name == "fsync" and step == "fsync_dir" and hit == ["dir"]:
                boom()
            if name == "open" and step == "fsync_dir" and Path(str(args[0])) == tmp_path:
                hit.append("dir")
            elif name == step:
                boom()
            return real[name](*args, **kwargs)

        return call

    for name in real:
        monkeypatch.setattr(output.os, name, patched(name))
    if fault is OSError and step != "fsync_dir":  # a failing directory fsync is not an error
        with pytest.raises(OutputError):
            output.write_atomic(final, writer, overwrite=overwrite)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            output.write_atomic(final, writer, overwrite=overwrite)
    monkeypatch.undo()
    assert step in hit
    assert temporaries(tmp_path) == []
    # The final name holds the old file, the complete new one, or nothing: never a partial file.
    content = final.read_bytes() if final.exists() else None
    assert content in ((old if overwrite else None), new)


# --- SIGTERM becomes KeyboardInterrupt while a batch runs -------------------------------------


def test_terminate_as_interrupt_installs_and_restores() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert before == signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is mine  # someone else's handler: left alone
    finally:
        signal.signal(signal.SIGTERM, before)


def test_run_jobs_unwinds_on_sigterm(tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{k}.dng", tmp_path / "out" / f"{k}.tif") for k in range(3)]
    seen, cleaned = [], []

    def convert(job: Job) -> None:
        seen.append(job)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(job)  # finally blocks run: temporaries get removed

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, convert)
    assert seen == cleaned == jobs[:1]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_interrupt_still_stops_the_batch(tmp_path: Path, sig: signal.Signals) -> None:
    """Python only prints a KeyboardInterrupt raised inside a finaliser; the batch must stop at
    the next file all the same."""
    jobs = [Job(tmp_path / f"{k}.dng", tmp_path / "out" / f"{k}.tif") for k in range(3)]
    seen = []

    def convert(job: Job) -> None:
        seen.append(job)
        with contextlib.suppress(KeyboardInterrupt):  # what a finaliser does to it
            os.kill(os.getpid(), sig)
            time.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, convert)
    assert seen == jobs[:1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_deferred_interrupt_waits_for_the_end_of_the_step() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt() as interrupt:
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # not interrupted
            done.append("step")
        done.append("after")  # not reached: the deferred signal is raised when the step ends
    assert done == ["step"]
