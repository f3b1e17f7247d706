"""Few-shot fine-tuning on generated short/long pairs: naive, the bundled model and the tuned ones.

Writes a SID-layout tree of generated DNG pairs (tests/pair_tree.py): a few scenes to tune on
(one of them held out by ``sidraw train --pairs`` for its early stop) and other scenes, never seen,
to score on with ``sidraw eval --pairs``. Runs on one thread in a couple of minutes::

    python bench/few_shot_pairs.py --out runs/few_shot
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pair_tree import write_pair_tree

from sidraw.pair_eval import evaluate_pairs
from sidraw.pairs import load_pairs
from sidraw.train.loop import TrainConfig
from sidraw.train.real_pairs import PairTuneConfig, fine_tune


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/few_shot")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 384), help="photosites W H")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    out = Path(a.out)
    w, h = a.size
    tune_root, test_root = out / "tune", out / "test"
    if not (tune_root / "list.txt").exists():
        write_pair_tree(tune_root, width=w, height=h, scenes=(10001, 10002, 10003),
                        first_seed=0, broken=False, mismatched=False)
        write_pair_tree(test_root, width=w, height=h, scenes=(30001, 30002, 30003),
                        first_seed=50, broken=False, mismatched=False)
    tune_pairs = load_pairs(tune_root / "list.txt").pairs
    test_pairs = load_pairs(test_root / "list.txt")
    results: dict[str, dict] = {}
    s = evaluate_pairs(test_pairs, threads=a.threads, crops=0, with_bm3d=True,
                       log=lambda m: None)
    results["naive"] = {k: v["naive"] for k, v in s["buckets"].items()}
    results["BM3D (fitted noise)"] = {k: v["bm3d"] for k, v in s["buckets"].items()}
    results["bundled"] = {k: v["model"] for k, v in s["buckets"].items()}
    for label, few in (("tuned, few-shot", True), ("tuned, all layers", False)):
        folder = out / ("few_shot" if few else "all_layers")
        base = TrainConfig(patch=64, batch=4, steps=a.steps, lr=1e-3 if few else 3e-4,
                           threads=a.threads, seed=0)
        t0 = time.perf_counter()
        trainer = fine_tune(tune_pairs, folder, base,
                            PairTuneConfig(name=folder.name, few_shot=few, eval_every=25))
        seconds = time.perf_counter() - t0
        s = evaluate_pairs(test_pairs, model=folder, threads=a.threads, crops=0,
                           log=lambda m: None)
        results[label] = {k: v["model"] for k, v in s["buckets"].items()}
        results[label]["_info"] = {"steps": trainer.step, "seconds": round(seconds),
                                   "trained_parameters": trainer.trainable}
    (out / "few_shot.json").write_text(json.dumps(results, indent=1))
    print(table(results, len(tune_pairs), len(test_pairs.pairs)))


def table(results: dict[str, dict], n_tune: int, n_test: int) -> str:
    buckets = [b for b in results["naive"] if not b.startswith("_")]
    lines = [f"{n_tune} tuning pairs, {n_test} unseen test pairs; sRGB PSNR / SSIM / raw PSNR",
             "", "| method | " + " | ".join(buckets) + " |",
             "|---|" + "---|" * len(buckets)]
    for label, r in results.items():
        info = r.get("_info")
        name = label + (f" ({info['steps']} steps, {info['seconds']} s, "
                        f"{info['trained_parameters']:,} params)" if info else "")
        cells = [f"{r[b]['srgb_psnr']:.2f} / {r[b]['srgb_ssim']:.3f} / {r[b]['raw_psnr']:.2f}"
                 for b in buckets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
