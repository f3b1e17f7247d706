"""Failing files leak nothing: no threads, no file descriptors, no temporary files."""

from __future__ import annotations

import errno
import gc
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sidraw
from sidraw import output
from sidraw.cli import app
from sidraw.model import ModelCache
from sidraw.sample import write_sample


def failing_inputs(folder: Path) -> list[Path]:
    """Files that fail at every stage: path checks, LibRaw, checks after decoding, the model."""
    folder.mkdir()
    good = folder / "good.dng"
    write_sample(good, width=160, height=96)
    data = good.read_bytes()
    files = {
        "empty.dng": b"",
        "noise.arw": np.random.default_rng(0).bytes(20_000),
        "cut.dng": data[: len(data) // 2],
        "zeros.dng": data[: len(data) // 2] + bytes(len(data) - len(data) // 2),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    (folder / "dir.dng").mkdir()
    write_sample(folder / "xtrans.raf", width=192, height=96, pattern="xtrans")
    return [folder / n for n in [*files, "dir.dng", "xtrans.raf", "missing.dng"]]


def resources() -> tuple[int, int, int, tuple[int, int]]:
    """Python threads, native threads (onnxruntime, OpenMP), open fds, what fd 2 is."""
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    tasks = len(os.listdir("/proc/self/task"))
    st = os.fstat(2)  # LibRaw's messages are caught by redirecting fd 2: it must come back
    return threading.active_count(), tasks, fds, (st.st_dev, st.st_ino)


def test_failing_batches_leak_nothing(
    tmp_path: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    bad = failing_inputs(tmp_path / "in")
    good = tmp_path / "in" / "good.dng"
    out = tmp_path / "out"
    # The output of good.dng hits a full disk: it fails after decoding and inference.
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(output.TMP_PREFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(output.os, "fsync", fsync)
    args = ["convert", *map(str, [*bad, good]), "-o", str(out), "--model", str(tiny_models)]
    runner = CliRunner()

    def batch() -> None:
        res = runner.invoke(app, [*args, "--ratio", "20"])
        assert res.exit_code == 1, res.output
        assert f"0 converted, 0 skipped, {len(bad) + 1} failed" in res.output, res.output

    batch()  # first run: one-time initialisation (onnxruntime, LibRaw, imports)
    before = resources()
    for _ in range(3):
        batch()
    assert resources() == before
    assert list(out.iterdir()) == []
    assert list(private_tmp.iterdir()) == []

    # The library call, with one model cache shared by every file.
    cache = ModelCache(tiny_models, "cpu", 1)
    for src in [*bad, good]:
        with pytest.raises(sidraw.SidrawError):
            sidraw.convert_file(src, out / f"{src.stem}.tif", models=cache)
    before = resources()
    for _ in range(3):
        for src in [*bad, good]:
            with pytest.raises(sidraw.SidrawError):
                sidraw.convert_file(src, out / f"{src.stem}.tif", models=cache)
    assert resources() == before
    assert list(out.iterdir()) == []
    assert list(private_tmp.iterdir()) == []
