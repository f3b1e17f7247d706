"""``sidraw eval --pairs``: naive and the model on real-style pairs, scored against the long."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pair_tree import write_pair_tree
from typer.testing import CliRunner

pytest.importorskip("scipy")
pytest.importorskip("PIL")

from sidraw.cli import app
from sidraw.mosaic import normalise_packed, pack
from sidraw.pair_eval import bucket_of, evaluate_pairs, score_pair
from sidraw.pairs import load_pairs
from sidraw.pipeline import ConvertOptions, convert_file
from sidraw.raw import read_info


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_pairs")
    write_pair_tree(root)
    return root


def _packed(path: Path) -> np.ndarray:
    info, mosaic = read_info(path)
    return normalise_packed(pack(mosaic, info.layout), info.layout, info.black, info.white)


def _hand_psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.clip(a, 0, 1).astype(np.float64), np.clip(b, 0, 1).astype(np.float64)
    return 10 * math.log10(1 / np.mean((a - b) ** 2))


def test_buckets() -> None:
    assert [bucket_of(r) for r in (100, 95, 250, 290, 300, 1.3)] == [
        "x100", "x100", "x250", "x300", "x300", "x1.3"
    ]


def test_numbers_reproduce_a_hand_computed_psnr(tree: Path, tmp_path: Path) -> None:
    pair = load_pairs(tree).pairs[1]  # x250
    row = score_pair(pair, _network())
    long = _packed(pair.long)
    naive = _packed(pair.short) * pair.ratio
    assert row["naive"]["raw_psnr"] == pytest.approx(_hand_psnr(naive, long), abs=1e-3)
    # The model's numbers are those of the mosaic `sidraw convert --ratio R --format dng` writes.
    out = tmp_path / "clean.dng"
    convert_file(pair.short, out, ConvertOptions(ratio=pair.ratio, fmt="dng"), device="cpu")
    assert row["model"]["raw_psnr"] == pytest.approx(_hand_psnr(_packed(out), long), abs=1e-3)
    assert 0 < row["model"]["srgb_ssim"] <= 1 and row["model"]["srgb_psnr"] > 5


def _network():
    from sidraw.model import ModelCache

    return ModelCache(None, "cpu", 1).get("bayer")


def test_eval_pairs_cli_json_table_and_crops(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "--pairs", str(tree / "pairs.csv"), "--out", str(out), "--crops", "2",
            "--threads", "1", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # the broken and the mismatched pair are refused
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(summary["pairs"]) == 6 and len(summary["refused"]) == 2
    assert list(summary["buckets"]) == ["x100", "x250", "x300", "all"]
    for entry in summary["buckets"].values():
        assert {"naive", "model", "model_minus_naive_srgb", "below_naive"} <= set(entry)
    assert len(list((out / "crops").glob("*.jpg"))) == 2
    assert (out / "pairs_eval.md").read_text().startswith("| ratio | pairs |")
    # The table form, naive only, on the folder form of the same tree.
    res = CliRunner().invoke(app, ["eval", "--pairs", str(tree), "--out", str(out / "n"),
                                   "--naive-only", "--crops", "0"])
    assert "| x300 | 2 |" in res.stdout and "naive only" in res.stdout


def test_no_usable_pairs(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("short,long\n")
    res = CliRunner().invoke(app, ["eval", "--pairs", str(tmp_path / "e.csv")])
    assert res.exit_code == 1 and "no usable pairs" in res.output


def test_memory_one_pair_at_a_time(tree: Path) -> None:
    # evaluate_pairs keeps only per-pair numbers: the summary holds no arrays.
    summary = evaluate_pairs(load_pairs(tree / "list.txt"), use_model=False, crops=0, log=str)
    assert json.dumps(summary)


def test_bm3d_with_the_fitted_noise(tree: Path) -> None:
    pytest.importorskip("bm3d")
    pytest.importorskip("torch")  # sidraw.train.evaluate, whose inverse transform it shares
    pair = load_pairs(tree).pairs[2]  # x300
    row = score_pair(pair, None, with_bm3d=True)
    assert row["bm3d"]["raw_psnr"] > row["naive"]["raw_psnr"] + 3
    assert row["bm3d"]["srgb_ssim"] > row["naive"]["srgb_ssim"]
