"""``sidraw train --pairs``: fine-tuning on real-style pairs lowers their loss and exports a model
folder that ``sidraw convert --model DIR`` runs (plain and noise-conditioned models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pair_tree import write_pair_tree
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from sidraw.cli import app  # noqa: E402
from sidraw.model import load_card  # noqa: E402
from sidraw.pairs import load_pairs  # noqa: E402
from sidraw.train.loop import TrainConfig  # noqa: E402
from sidraw.train.real_pairs import (  # noqa: E402
    FrameCache,
    PairSource,
    PairTuneConfig,
    augment,
    few_shot_parameters,
    fine_tune,
    split_held_out,
)
from sidraw.train.unet import UNet, UNetConfig  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune_pairs")
    write_pair_tree(root)
    return root


def _schedule(steps: int) -> TrainConfig:
    return TrainConfig(patch=32, batch=4, steps=steps, lr=3e-4, threads=1, seed=0)


def test_crops_come_from_the_disk_cache(tree: Path, tmp_path: Path) -> None:
    pairs = load_pairs(tree).pairs
    source = PairSource(pairs, FrameCache(tmp_path / "cache"), 32)
    x, y, n = source.crop(0, 3, 5)
    assert x.shape == y.shape == (32, 32, 4) and n.shape == (2,)
    assert x.min() >= -1 and x.max() <= 1 and y.min() >= 0 and y.max() <= 1
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2  # the short and its long, decoded once
    assert np.load(cached[0], mmap_mode="r").dtype == np.uint16
    # Brightened short and long agree on average (the same scene, ratio from EXIF).
    assert abs(float(x.clip(0, 1).mean() - y.mean())) < 0.02
    xa, xb = augment(x, x.copy(), "RGGB", np.random.default_rng(3))  # one op on both crops
    assert np.array_equal(xa, xb) and not np.array_equal(xa, x)
    assert np.array_equal(np.sort(xa, axis=None), np.sort(x, axis=None))
    assert augment(x, y, "GGRGGB" * 6, np.random.default_rng(3))[0] is x  # X-Trans: as it is


def test_held_out_split_keeps_scenes_apart(tree: Path) -> None:
    pairs = load_pairs(tree).pairs
    train, held = split_held_out(pairs, 0.2)
    assert len(train) == len(held) == 3
    assert not {p.long for p in train} & {p.long for p in held}


def test_few_steps_lower_the_loss_and_convert_runs_the_result(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    res = CliRunner().invoke(app, [
        "train", "--pairs", str(tree / "list.txt"), "--out", str(out), "--patch", "32",
        "--batch", "4", "--steps", "30", "--threads", "1", "--eval-every", "10",
        "--name", "my-camera",
    ])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "my-camera.json").read_text())
    ft = card["fine_tuning"]
    assert ft["train_l1_after"] < ft["l1_before"]["train_l1"] * 0.95
    assert ft["best_l1"] < ft["l1_before"]["held_out_l1"]
    assert len(ft["pairs"]) == 3 and len(ft["held_out_pairs"]) == 3
    assert ft["pairs"][0]["short"].endswith("10001_00_0.1s.dng")
    assert "variants" not in card and load_card(out / "my-camera.json").name == "my-camera"
    res = CliRunner().invoke(app, [
        "convert", str(tree / "short" / "10002_01_0.04s.dng"), "--model", str(out), "--out",
        str(tmp_path / "bright"), "--ratio", "250", "--json",
    ])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["model"] == "my-camera"


def _noise_model(folder: Path) -> Path:
    """A small random noise-conditioned residual U-Net exported with a card."""
    from sidraw.train.export import export_onnx, sha256_file

    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=4, width=8, max_mult=4, residual=True, noise_map=True))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nm.onnx"
    export_onnx(model, path)
    card = {
        "name": "nm", "version": "0", "file": path.name, "sha256": sha256_file(path),
        "cfa": "bayer", "channels": ["R", "G", "G", "B"], "downsample": 16,
        "input_name": "input", "output_name": "output", "noise_input": "noise", "overlap": 16,
        "architecture": {"width": 8, "max_mult": 4, "residual": True, "noise_map": True},
    }
    (folder / "nm.json").write_text(json.dumps(card))
    return path


def test_noise_conditioned_model_few_shot(tree: Path, tmp_path: Path) -> None:
    init = _noise_model(tmp_path / "init")
    pairs = load_pairs(tree).pairs
    tune = PairTuneConfig(name="nm-tuned", init=str(init), few_shot=True, eval_every=5)
    trainer = fine_tune(pairs, tmp_path / "out", _schedule(10), tune)
    assert trainer.cfg.noise_map and trainer.trainable < 0.5 * sum(
        p.numel() for p in trainer.model.parameters()
    )
    names = set(few_shot_parameters(trainer.model))
    assert "head.weight" in names and "enc.0.0.weight" in names and "enc.1.0.weight" not in names
    card = load_card(tmp_path / "out" / "nm-tuned.json")
    assert card.noise_input == "noise"
    # The tuned noise-conditioned model through convert and eval --pairs (noise of the short fit).
    res = CliRunner().invoke(app, [
        "eval", "--pairs", str(tree / "pairs.csv"), "--model", str(tmp_path / "out"),
        "--out", str(tmp_path / "ev"), "--crops", "0", "--threads", "1", "--json",
    ])
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model"] == "nm-tuned"
    assert all(r["noise"]["k_dn_per_electron"] > 0 for r in summary["pairs"])
    assert {r["noise"]["source"] for r in summary["pairs"]} == {"fit"}
    # With a camera profile of the pairs' camera and ISO, the model is told the profile's noise.
    profile = _profile(tmp_path / "cam.json")
    res = CliRunner().invoke(app, [
        "eval", "--pairs", str(tree / "pairs.csv"), "--model", str(tmp_path / "out"),
        "--out", str(tmp_path / "ev2"), "--crops", "0", "--threads", "1", "--json",
        "--profile", str(profile),
    ])
    rows = json.loads(res.stdout.strip().splitlines()[-1])["pairs"]
    assert {r["noise"]["source"] for r in rows} == {"profile ISO 6400"}
    assert rows[0]["noise"]["k_dn_per_electron"] == pytest.approx(2.0)


def _profile(path: Path) -> Path:
    from sidraw.calibrate import CameraProfile, IsoNoise, save_profile

    noise = IsoNoise(k_dn_per_electron=2.0, read_dn=6.0, row_dn=0.0, black_offset_dn=0.0,
                     dark_frames=2, flat_pairs=1)
    save_profile(CameraProfile("Sony ILCE-7SM2", 512, 16383, {"6400": noise}), path)
    return path


def test_profile_noise_in_crops(tree: Path, tmp_path: Path) -> None:
    from sidraw.calibrate import load_profile
    from sidraw.noise_estimate import noise_vector

    pairs = load_pairs(tree).pairs
    cache = FrameCache(tmp_path / "cache")
    fitted = PairSource(pairs, cache, 32).crop(0, 0, 0)[2]
    profiled = PairSource(pairs, cache, 32, load_profile(_profile(tmp_path / "p.json")))
    got = profiled.crop(0, 0, 0)[2]
    from sidraw.noise_estimate import NoiseEstimate

    want = noise_vector(NoiseEstimate(2.0 / 15871, 6.0 / 15871, 0), pairs[0].ratio)[0]
    assert got == pytest.approx(want, rel=1e-4)
    assert not np.allclose(got, fitted, rtol=1e-3)


def test_synthetic_mix(tree: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    (data / "clean" / "Mine").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["dataset\tfile"]
    for i in range(2):
        img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(data / "clean" / "Mine" / f"p{i}.png")
        rows.append(f"Mine\tp{i}.png")
    (data / "clean" / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    base = _schedule(4)
    base.data = str(data)
    tune = PairTuneConfig(synthetic_mix=0.5, eval_every=2,
                          profile=str(_profile(tmp_path / "cam.json")))
    trainer = fine_tune(load_pairs(tree).pairs, tmp_path / "mix", base, tune)
    x, y, n = next(trainer.batches(1))
    assert x.shape == y.shape == (4, 4, 32, 32) and n.shape == (4, 2)
    assert len(trainer._profile_noise()) == 1 and trainer._profile_noise()[0].k == 2.0
    assert json.loads((tmp_path / "mix" / "sidraw-tuned.json").read_text())[
        "fine_tuning"]["synthetic_mix"] == 0.5


def test_xtrans_pairs(tmp_path: Path) -> None:
    from pair_tree import scene_mosaic, write_raw

    clean = scene_mosaic(0, 216, 216, "xtrans")
    long, short = tmp_path / "long" / "1_00_10s.dng", tmp_path / "short" / "1_00_0.04s.dng"
    write_raw(long, clean, 1.0, 1, pattern="xtrans", model="X-T2")
    write_raw(short, clean, 250.0, 2, pattern="xtrans", model="X-T2")
    pairs = load_pairs(tmp_path).pairs
    assert len(pairs) == 1 and len(pairs[0].cfa) == 36 and pairs[0].ratio == pytest.approx(250)
    source = PairSource(pairs, FrameCache(tmp_path / "cache"), 32)
    x, y, _ = source.random_crop(np.random.default_rng(0))
    assert x.shape == y.shape == (9, 32, 32)
    trainer = fine_tune(pairs, tmp_path / "out", _schedule(2), PairTuneConfig(eval_every=1))
    assert trainer.cfg.cfa == "xtrans"
    assert load_card(tmp_path / "out" / "sidraw-tuned.json").cfa == "xtrans"
