"""Output-side faults: unwritable folder, full disk, read-only or folder-shaped output names.

Each fault gives a one-line error naming the output, leaves no partial or temporary file behind,
and the remaining inputs are still converted. Faults are injected with monkeypatch (tests run as
root, which file modes do not stop).
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import tifffile
from typer.testing import CliRunner

import sidraw
from sidraw import output
from sidraw.cli import app
from sidraw.sample import write_sample


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """``in/x/a.dng`` and ``in/y/b.dng`` (converted with -r into ``out/x`` and ``out/y``)."""
    for sub, name in (("x", "a.dng"), ("y", "b.dng")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        write_sample(tmp_path / "in" / sub / name, width=160, height=96, seed=len(name + sub))
    return tmp_path / "in"


def convert(inputs: Path, out: Path, models: Path, *extra: str) -> object:
    args = ["convert", str(inputs), "-r", "-o", str(out), "--model", str(models), "--ratio", "20"]
    return CliRunner().invoke(app, [*args, *extra])


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{output.TMP_PREFIX}*"))


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("✗")]


def test_output_folder_not_writable(
    tmp_path: Path, inputs: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_mkstemp = output.tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir"))).name == "x":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(output.tempfile, "mkstemp", mkstemp)
    res = convert(inputs, out, tiny_models)
    assert res.exit_code == 1, res.output
    expected = f"✗ {out / 'x' / 'a.tif'}: cannot write here: permission denied"
    assert error_lines(res.output) == [expected]
    assert list((out / "x").iterdir()) == []
    tifffile.imread(out / "y" / "b.tif")
    assert "1 converted, 0 skipped, 1 failed" in res.output


class _FullDiskFile(io.FileIO):
    """A named, seekable file that takes 1000 bytes, then fails like a full disk."""

    room = 1000

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) > self.room:
            super().write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return super().write(data)


@pytest.mark.parametrize("where", ["write", "fsync", "link"])
def test_disk_full(
    tmp_path: Path, inputs: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ENOSPC while writing, flushing or linking the first output: the second is still written."""
    out = tmp_path / "out"
    failed: list[str] = []

    def first_output(fd: int) -> bool:
        name = os.readlink(f"/proc/self/fd/{fd}")
        first = not failed and Path(name).name.startswith(output.TMP_PREFIX)
        if first:
            failed.append(name)
        return first

    def fail(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        real_open = open

        def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
            temporary = Path(str(file)).name.startswith(output.TMP_PREFIX)
            if "w" in mode and temporary and not failed:
                failed.append(str(file))
                return _FullDiskFile(str(file), "wb")
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(output, "open", fake_open, raising=False)
    elif where == "fsync":
        real_fsync = os.fsync
        monkeypatch.setattr(
            output.os, "fsync", lambda fd: fail() if first_output(fd) else real_fsync(fd)
        )
    else:
        real_link = os.link

        def link(src: object, dst: object, **kwargs: object) -> None:
            if not failed:
                failed.append(str(dst))
                fail()
            real_link(src, dst, **kwargs)

        monkeypatch.setattr(output.os, "link", link)
    res = convert(inputs, out, tiny_models)
    assert failed, "the fault was not injected"
    assert res.exit_code == 1, res.output
    assert error_lines(res.output) == [f"✗ {out / 'x' / 'a.tif'}: cannot write: disk full"]
    assert not (out / "x" / "a.tif").exists()
    assert leftovers(out) == []
    tifffile.imread(out / "y" / "b.tif")


def test_read_only_output_is_kept_even_with_overwrite(
    tmp_path: Path, inputs: Path, tiny_models: Path
) -> None:
    """Decision: --overwrite does not replace a read-only output; it is an error for that file."""
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    kept = out / "x" / "a.tif"
    kept.write_bytes(b"protected by its owner")
    kept.chmod(0o444)
    res = convert(inputs, out, tiny_models)
    assert res.exit_code == 0 and "1 converted, 1 skipped, 0 failed" in res.output, res.output
    res = convert(inputs, out, tiny_models, "--overwrite")
    assert res.exit_code == 1, res.output
    assert error_lines(res.output) == [
        f"✗ {kept}: exists and is read-only (make it writable to replace it)"
    ]
    assert kept.read_bytes() == b"protected by its owner"
    assert leftovers(out) == []
    tifffile.imread(out / "y" / "b.tif")
    kept.chmod(0o644)  # writable again: now it is replaced
    assert convert(inputs, out, tiny_models, "--overwrite").exit_code == 0
    tifffile.imread(kept)


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_name_taken_by_a_folder(
    tmp_path: Path, inputs: Path, tiny_models: Path, overwrite: bool
) -> None:
    out = tmp_path / "out"
    folder = out / "x" / "a.tif"
    folder.mkdir(parents=True)
    (folder / "inside.txt").write_text("untouched")
    res = convert(inputs, out, tiny_models, *(["--overwrite"] if overwrite else []))
    assert res.exit_code == 1, res.output  # an error, not "skipped"
    assert error_lines(res.output) == [f"✗ {folder}: a folder of that name exists"]
    assert [p.name for p in folder.iterdir()] == ["inside.txt"]
    assert leftovers(out) == []
    tifffile.imread(out / "y" / "b.tif")


def test_out_is_a_file(tmp_path: Path, inputs: Path, tiny_models: Path) -> None:
    """An existing file as --out is neither a folder nor an output name: refused up front."""
    out = tmp_path / "out"
    out.write_bytes(b"a file, not a folder")
    res = convert(inputs, out, tiny_models)
    assert res.exit_code == 2, res.output
    assert "is an existing file, not a folder" in res.output
    assert out.read_bytes() == b"a file, not a folder"


def test_unusable_output_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """convert_file checks its output name before decoding and running the network."""
    src = tmp_path / "a.dng"
    write_sample(src, width=160, height=96)
    dst = tmp_path / "a.tif"
    dst.write_bytes(b"old")

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the input was decoded")

    monkeypatch.setattr(sidraw.pipeline, "open_raw", no_decode)
    with pytest.raises(sidraw.OutputError, match="already exists"):
        sidraw.convert_file(src, dst)
    dst.chmod(0o444)
    with pytest.raises(sidraw.OutputError, match="read-only"):
        sidraw.convert_file(src, dst, sidraw.ConvertOptions(overwrite=True))
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(sidraw.OutputError, match="a folder of that name exists"):
        sidraw.convert_file(src, tmp_path / "d.tif", sidraw.ConvertOptions(overwrite=True))
