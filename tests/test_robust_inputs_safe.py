"""Inputs are never modified, moved or overwritten, whatever the output folder and names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sidraw.batch import InputFile, plan_jobs
from sidraw.cli import app
from sidraw.sample import write_sample


def dng(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sample(path, width=160, height=96, seed=seed)
    return path


def convert(*args: object) -> object:
    return CliRunner().invoke(app, ["convert", *map(str, args), "--ratio", "20"])


def snapshot(folder: Path) -> dict[str, tuple[str, int, int, int]]:
    """name -> (sha256, mtime_ns, inode, mode) of every file below ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(folder))] = (digest, st.st_mtime_ns, st.st_ino, st.st_mode)
    return out


def test_output_landing_on_an_input_is_refused(tmp_path: Path, tiny_models: Path) -> None:
    # A raw file named .tif: its output name (beside it) is the input itself.
    shot = dng(tmp_path / "in" / "shot.tif")
    other = dng(tmp_path / "in" / "other.dng", seed=1)
    before = snapshot(tmp_path / "in")
    res = convert(shot, other, "--model", tiny_models)
    assert res.exit_code == 1, res.output
    assert f"✗ {shot}: output name would overwrite an input file" in res.output
    assert (tmp_path / "in" / "other.tif").exists()
    after = snapshot(tmp_path / "in")
    assert {k: after[k] for k in before} == before
    # An output name that is a symlink to an input: refused, even with --overwrite.
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.tif").symlink_to(other)
    res = convert(other, "--out", out, "--overwrite", "--model", tiny_models)
    assert res.exit_code == 1 and "would overwrite an input file" in res.output, res.output
    assert (out / "other.tif").is_symlink()
    assert snapshot(tmp_path / "in") == after


def test_out_may_be_the_input_folder(tmp_path: Path, tiny_models: Path) -> None:
    folder = tmp_path / "shoot"
    dng(folder / "a.dng")
    dng(folder / "b.ARW", seed=1)
    before = snapshot(folder)
    res = convert(folder, "--out", folder, "--model", tiny_models)
    assert res.exit_code == 0, res.output
    after = snapshot(folder)
    assert sorted(after) == ["a.dng", "a.tif", "b.ARW", "b.tif"]
    assert {k: after[k] for k in before} == before
    # An input that would collide (a raw named .tif, given explicitly) is refused; the rest runs.
    odd = dng(folder / "c.tif", seed=2)
    before = snapshot(folder)["c.tif"]
    res = convert(folder / "a.dng", odd, "--out", folder, "--overwrite", "--model", tiny_models)
    assert res.exit_code == 1 and f"✗ {odd}: output name would overwrite" in res.output
    assert "1 converted" in res.output
    assert snapshot(folder)["c.tif"] == before


def test_same_stem_inputs_never_overwrite_each_other(tmp_path: Path, tiny_models: Path) -> None:
    dng(tmp_path / "in" / "a.ARW", seed=1)
    dng(tmp_path / "in" / "a.DNG", seed=2)
    out = tmp_path / "out"
    res = convert(tmp_path / "in", "--out", out, "--model", tiny_models)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a_ARW.tif", "a_DNG.tif"]
    arw, dng_ = tifffile.imread(out / "a_ARW.tif"), tifffile.imread(out / "a_DNG.tif")
    assert (arw != dng_).any()  # two different pictures, neither overwrote the other


def test_batch_leaves_inputs_byte_and_time_identical(tmp_path: Path, tiny_models: Path) -> None:
    folder = tmp_path / "shoot"
    for k, name in enumerate(["a.dng", "b.dng", "sub/c.dng", "x.ARW", "x.DNG"]):
        dng(folder / name, seed=k)
    (folder / "broken.nef").write_bytes(b"not a raw" * 100)
    (folder / "notes.txt").write_text("not an input")
    before = snapshot(folder)
    for extra in ([], ["--overwrite"], ["--format", "png"]):
        convert(folder, "-r", "--out", folder, "--model", tiny_models, *extra)
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    new = sorted(set(after) - set(before))
    assert new == sorted(
        f"{n}.{ext}" for n in ["a", "b", "sub/c", "x_ARW", "x_DNG"] for ext in ("png", "tif")
    )


# Names from a tiny alphabet collide a lot: stems a, b, a_ARW, ... with raw and .tif extensions.
_stems = st.sampled_from(["a", "b", "a_ARW", "a_dng", "A"])
_exts = st.sampled_from([".ARW", ".arw", ".dng", ".DNG", ".tif", ".TIF", ".nef"])
_dirs = st.sampled_from(["", "d1/", "d2/"])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    names=st.lists(st.tuples(_dirs, _stems, _exts), min_size=1, max_size=8, unique=True),
    out=st.sampled_from([None, "", "d1", "o"]),
    name=st.sampled_from(["{stem}", "{name}", "{stem}_x"]),
)
def test_plan_never_targets_an_input_nor_shares_an_output(
    tmp_path_factory: pytest.TempPathFactory,
    names: list[tuple[str, str, str]],
    out: str | None,
    name: str,
) -> None:
    root = tmp_path_factory.mktemp("plan")
    inputs = []
    for folder, stem, ext in names:
        path = root / folder / f"{stem}{ext}"
        inputs.append(InputFile(path, Path(path.name)))
    out_dir = None if out is None else root / out
    plan = plan_jobs(inputs, out_dir=out_dir, fmt="tiff", name=name)
    sources = {i.path.resolve() for i in inputs}
    targets = [j.dst.resolve() for j in plan.jobs]
    assert len(set(targets)) == len(targets)
    assert not sources & set(targets)
    # Every input is either planned or reported once, never silently dropped.
    assert len(plan.jobs) + len(plan.errors) == len(inputs)
