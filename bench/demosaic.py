#!/usr/bin/env python3
"""Which LibRaw demosaic should render sidraw's denoised mosaic: accuracy against ground truth,
and full-frame cost.

    python bench/demosaic.py [--images 24] [--xtrans-images 4] [--no-timing] [--no-accuracy]
                             [--out bench/results/demosaic.json]

Everything runs on ONE CPU thread (OpenMP, OpenBLAS and onnxruntime's intra-op pool).

**Cases.** The validation cases of :mod:`sidraw.train.evaluate` (same photos, crops, seeds, noise
and sets: A7S2 x100 / x250 / x300 and "other cameras x100"; Bayer up to 512x512 photosites,
X-Trans 612x912).

**Ground truth.** ``evaluate.py`` renders the clean *mosaic* with the same demosaic as its
reference, so it cannot judge demosaicing. Here the reference comes from the clean *full* linear
camera RGB image of each case (``unprocess`` of the case's crop with the case's camera, exactly as
``make_pair`` computes it before mosaicking; checked bit-exact against the pair's clean mosaic).
It is written as a Bayer RGGB DNG of 2H x 2W photosites in which each 2x2 block holds (R, G, G,
B) of one ground-truth pixel, with the case's colour metadata (black and white level, colour
matrix, as-shot neutral; the same :class:`sidraw.dng.DngMetadata` as evaluate's ``Renderer``),
and rendered by :func:`sidraw.render.render` with ``half_size=True``: LibRaw's own colour pipeline
at H x W, with no demosaic. X-Trans cases get the same Bayer 2x DNG with their own colours.

**Methods.** For every algorithm, (a) the clean mosaic and (b) the bundled network's output on
the noisy input (``weights/sidraw-*.onnx`` run as evaluate's ``OnnxModel``) are rendered through
evaluate's DNG template with :func:`sidraw.render.render_params` but LibRaw's ``user_qual`` set
to the algorithm. PSNR and SSIM (evaluate's functions) of the 16-bit sRGB output against the
ground truth, over the interior (``--border`` pixels cut on each side, so that every algorithm's
border handling is left out; full-image PSNR is stored too). On X-Trans, LibRaw maps PPG to
1-pass Markesteijn and AHD (also DCB, DHT, AAHD) to 3-pass Markesteijn.

**Sanity checks of the reference**, stored under ``sanity``: the recomputed linear image mosaics
to the pair's clean mosaic bit for bit; the default setting of each CFA renders exactly as
evaluate's ``Renderer``; the ground truth blurred (Gaussian, sigma 2 px), mosaicked and
rendered with the default setting matches its own half-size reference (mean and lowest PSNR:
only the demosaic's residual error on smooth detail remains); the mean PSNR of every clean
render against the reference shifted by -1..1 pixels in each axis (the unshifted one must win);
the mean signed difference per sRGB channel (the colour pipelines agree).

**Timing** (last, after the accuracy part): ``RawPy.postprocess`` with sidraw's settings and each
algorithm on the full benchmark frames (``~/.cache/sidraw-bench/samples``, written by
``bench/run.py``), reps times, minimum; the load average is recorded before and after.
"""

# ruff: noqa: E402  (thread limits must be in the environment before numpy and LibRaw load)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rawpy
from scipy.ndimage import gaussian_filter

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # measure the checkout's sidraw, not an installed copy

from sidraw.color import encoding_for
from sidraw.dng import DngMetadata, write_dng
from sidraw.mosaic import denormalise_packed, pack, unpack
from sidraw.render import load_mosaic, render, render_params
from sidraw.train import data as data_mod
from sidraw.train.evaluate import (
    SETS,
    Case,
    OnnxModel,
    Renderer,
    case_crop,
    case_pair,
    eval_cases,
    psnr,
    ssim,
)
from sidraw.train.pairs import Pair
from sidraw.train.unprocess import BAYER_PATTERN, mosaic, unprocess

DA = rawpy.DemosaicAlgorithm
#: Candidates per CFA: (label, LibRaw algorithm). The first is sidraw's current setting.
ALGORITHMS: dict[str, list[tuple[str, rawpy.DemosaicAlgorithm]]] = {
    "bayer": [
        (name, DA[name])
        for name in ("AHD", "PPG", "LINEAR", "DCB", "VNG", "AAHD", "DHT")
        if DA[name].isSupported
    ],
    "xtrans": [
        ("PPG (Markesteijn 1-pass)", DA.PPG),
        ("AHD (Markesteijn 3-pass)", DA.AHD),
        ("LINEAR", DA.LINEAR),
        ("VNG", DA.VNG),
    ],
}
MODELS = {
    "bayer": ROOT / "weights" / "sidraw-bayer.onnx",
    "xtrans": ROOT / "weights" / "sidraw-xtrans.onnx",
}
SAMPLES = {
    "bayer": "bayer-12mp-4240x2832-938999cf06.dng",
    "xtrans": "xtrans-24mp-6000x4000-938999cf06.dng",
}
SHIFTS = (-1, 0, 1)
#: Gaussian blur (pixels) of the ground truth for the pipeline check: with detail this smooth the
#: demosaic has next to nothing to get wrong, so the render must match its reference closely.
BLUR_SIGMA = 2.0


def params_for(algorithm: rawpy.DemosaicAlgorithm | None) -> rawpy.Params:
    """sidraw's render parameters (sRGB) with LibRaw's demosaic replaced (None: sidraw's own)."""
    params = render_params(encoding_for("srgb"))
    if algorithm is not None:
        params.user_qual = algorithm.value
    return params


def render_packed(
    renderer: Renderer, packed: np.ndarray, algorithm: rawpy.DemosaicAlgorithm | None
) -> np.ndarray:
    """A packed 0..1 mosaic through the case's DNG template: (H, W, 3) float64 sRGB 0..1.

    The same steps as evaluate's ``Renderer.__call__`` with the demosaic replaced.
    """
    dn = denormalise_packed(packed, renderer.layout, renderer.black, renderer.white)
    load_mosaic(renderer.raw, unpack(dn, renderer.layout, renderer.shape))
    img = renderer.raw.postprocess(params_for(algorithm))
    return img.astype(np.float64) / 65535.0


def ground_truth_linear(photo: data_mod.Photo, case: Case, pair: Pair) -> np.ndarray:
    """The clean full linear camera RGB of a case, (H, W, 3) float32 0..1, as ``make_pair``
    computes it (``case_pair`` passes ``exposure=1.0``) before mosaicking."""
    lin = unprocess(case_crop(photo, case), pair.camera) * np.float32(1.0)
    if not np.array_equal(mosaic(lin, pair.pattern), pair.clean_mosaic):
        raise RuntimeError(f"{case.id}: recomputed linear image does not match the pair")
    return lin


def reference(lin: np.ndarray, pair: Pair, tmpdir: Path) -> np.ndarray:
    """Ground truth through LibRaw's colour pipeline without demosaic: (H, W, 3) float64 0..1.

    A 2H x 2W RGGB DNG whose 2x2 blocks are (R, G, G, B) of one pixel, with the case's colour
    metadata, rendered at half size.
    """
    nz = pair.noise
    black, white = np.float32(nz.black), np.float32(nz.white)
    dn = np.clip(lin * (white - black) + black, 0, white)
    dn = np.rint(dn).astype(np.uint16)
    h, w, _ = lin.shape
    big = np.empty((2 * h, 2 * w), np.uint16)
    big[0::2, 0::2] = dn[..., 0]
    big[0::2, 1::2] = dn[..., 1]
    big[1::2, 0::2] = dn[..., 1]
    big[1::2, 1::2] = dn[..., 2]
    meta = DngMetadata(
        pattern=BAYER_PATTERN,
        black=float(nz.black),
        white=nz.white,
        color_matrix=pair.camera.xyz2cam,
        as_shot_neutral=pair.camera.as_shot_neutral,
    )
    path = tmpdir / "reference.dng"
    write_dng(path, big, meta)
    with rawpy.imread(str(path)) as raw:
        img = render(raw, half_size=True)
    if img.shape[:2] != (h, w):
        raise RuntimeError(f"half-size reference is {img.shape[:2]}, expected {(h, w)}")
    return img.astype(np.float64) / 65535.0


def interior(img: np.ndarray, border: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """``img`` without ``border`` pixels on each side, the window moved by (dy, dx)."""
    h, w = img.shape[:2]
    return img[border + dy : h - border + dy, border + dx : w - border + dx]


@dataclass
class Scores:
    """Metrics of one rendering against the reference."""

    psnr: float
    ssim: float
    psnr_full: float

    def as_dict(self) -> dict[str, float]:
        return {"psnr": self.psnr, "ssim": self.ssim, "psnr_full": self.psnr_full}


def score(img: np.ndarray, ref: np.ndarray, border: int, with_ssim: bool) -> Scores:
    a, b = interior(img, border), interior(ref, border)
    return Scores(psnr(a, b), ssim(a, b) if with_ssim else float("nan"), psnr(img, ref))


def accuracy(
    cfa: str, max_images: int, border: int, with_ssim: bool, log: Any = print
) -> dict[str, Any]:
    """Per-case scores of every algorithm (clean and denoised) and the sanity checks."""
    root = data_mod.data_root(None)
    _, val_e = data_mod.split(data_mod.manifest(root))
    photos = {p.key: p for p in data_mod.load_photos(root, val_e)}
    cases = eval_cases(list(photos.values()), cfa, max_images)
    algos = ALGORITHMS[cfa]
    model = OnnxModel(MODELS[cfa], threads=1)
    per_case: dict[str, Any] = {}
    shift_psnr: dict[str, list[list[list[float]]]] = {label: [] for label, _ in algos}
    colour_diff: dict[str, list[list[float]]] = {label: [] for label, _ in algos}
    default_matches: list[bool] = []
    blurred_psnr: list[float] = []
    t0 = time.perf_counter()
    render_s = {label: 0.0 for label, _ in algos}
    with tempfile.TemporaryDirectory() as td:
        for i, case in enumerate(cases):
            pair = case_pair(photos[case.key], case)
            lin = ground_truth_linear(photos[case.key], case, pair)
            ref = reference(lin, pair, Path(td))
            denoised = model(pair.noisy)
            renderer = Renderer(pair, Path(td))
            row: dict[str, Any] = {}
            try:
                blurred = np.stack(
                    [gaussian_filter(lin[..., c], BLUR_SIGMA) for c in range(3)], axis=-1
                ).astype(np.float32)
                blurred_psnr.append(
                    psnr(
                        interior(
                            render_packed(
                                renderer, pack(mosaic(blurred, pair.pattern), renderer.layout), None
                            ),
                            border,
                        ),
                        interior(reference(blurred, pair, Path(td)), border),
                    )
                )
                default_matches.append(
                    bool(
                        np.array_equal(
                            render_packed(renderer, pair.clean, None), renderer(pair.clean)
                        )
                    )
                )
                for label, algo in algos:
                    tr = time.perf_counter()
                    clean_img = render_packed(renderer, pair.clean, algo)
                    den_img = render_packed(renderer, denoised, algo)
                    render_s[label] += time.perf_counter() - tr
                    row[label] = {
                        "clean": score(clean_img, ref, border, with_ssim).as_dict(),
                        "denoised": score(den_img, ref, border, with_ssim).as_dict(),
                    }
                    a = interior(clean_img, border)
                    shift_psnr[label].append(
                        [[psnr(a, interior(ref, border, dy, dx)) for dx in SHIFTS] for dy in SHIFTS]
                    )
                    colour_diff[label].append(
                        [float(v) for v in (a - interior(ref, border)).mean(axis=(0, 1))]
                    )
            finally:
                renderer.close()
            per_case[case.id] = {"set": case.set.name, "scores": row}
            if (i + 1) % 8 == 0 or i + 1 == len(cases):
                log(f"{cfa}: {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s")
    megapixels = sum(c.crop[0] * c.crop[1] for c in cases) / 1e6
    return {
        "images": sorted({c.key for c in cases}),
        "cases": len(cases),
        "algorithms": {label: algo.name for label, algo in algos},
        "per_case": per_case,
        "summary": summarise(cases, per_case, [label for label, _ in algos]),
        "render_s_per_mp": {k: round(v / (2 * megapixels), 4) for k, v in render_s.items()},
        "sanity": {
            "linear_image_matches_pair": True,  # ground_truth_linear raises otherwise
            "default_setting_matches_evaluate_renderer": all(default_matches),
            "blurred_gt_default_setting_psnr": {
                "sigma": BLUR_SIGMA,
                "mean": round(float(np.mean(blurred_psnr)), 3),
                "min": round(float(np.min(blurred_psnr)), 3),
            },
            "clean_psnr_vs_shift_dy_dx": {
                label: {
                    f"{dy:+d},{dx:+d}": round(float(np.mean([v[iy][ix] for v in vals])), 3)
                    for iy, dy in enumerate(SHIFTS)
                    for ix, dx in enumerate(SHIFTS)
                }
                for label, vals in shift_psnr.items()
            },
            "clean_mean_diff_rgb": {
                label: [round(float(x), 5) for x in np.mean(vals, axis=0)]
                for label, vals in colour_diff.items()
            },
        },
    }


def summarise(cases: list[Case], per_case: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Mean scores per set (and over all cases) and algorithm."""
    groups: dict[str, list[str]] = {s.name: [c.id for c in cases if c.set == s] for s in SETS}
    groups["all"] = [c.id for c in cases]
    out: dict[str, Any] = {}
    for name, ids in groups.items():
        if not ids:
            continue
        entry: dict[str, Any] = {"cases": len(ids)}
        for label in labels:
            entry[label] = {
                kind: {
                    m: round(
                        float(np.mean([per_case[i]["scores"][label][kind][m] for i in ids])), 4
                    )
                    for m in ("psnr", "ssim", "psnr_full")
                }
                for kind in ("clean", "denoised")
            }
            # Paired with the current setting (labels[0]) case by case: mean PSNR difference, its
            # standard error, and the share of cases where this algorithm scores higher.
            vs: dict[str, dict[str, float]] = {}
            for kind in ("clean", "denoised"):
                d = np.array(
                    [
                        per_case[i]["scores"][label][kind]["psnr"]
                        - per_case[i]["scores"][labels[0]][kind]["psnr"]
                        for i in ids
                    ]
                )
                sem = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
                vs[kind] = {
                    "psnr_diff": round(float(d.mean()), 4),
                    "sem": round(sem, 4),
                    "wins": round(float(np.mean(d > 0)), 3),
                }
            entry[label]["vs_current"] = vs
        out[name] = entry
    return out


def timing(cfa: str, reps: int, cache: Path) -> dict[str, Any]:
    """Seconds of ``postprocess`` (demosaic, colour, 16-bit output) of a full benchmark frame."""
    path = cache / "samples" / SAMPLES[cfa]
    if not path.exists():
        return {"error": f"{path} missing (run bench/run.py once to write it)"}
    out: dict[str, Any] = {"file": path.name, "load_before": os.getloadavg()}
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with rawpy.imread(str(path)) as raw:
        out["megapixels"] = round(raw.raw_image_visible.size / 1e6, 2)
        for _ in range(reps):  # interleaved: every algorithm once, then again
            for label, algo in ALGORITHMS[cfa]:
                params = params_for(algo)
                t, c = time.perf_counter(), time.process_time()
                img = raw.postprocess(params)
                seconds.setdefault(label, []).append(time.perf_counter() - t)
                cpu.setdefault(label, []).append(time.process_time() - c)
                del img
    out["seconds"] = {k: [round(x, 3) for x in v] for k, v in seconds.items()}
    out["min_s"] = {k: round(min(v), 3) for k, v in seconds.items()}
    # CPU seconds / wall seconds over all repetitions: about 1 when LibRaw ran on one thread.
    out["cpu_per_wall"] = {k: round(sum(cpu[k]) / sum(v), 2) for k, v in seconds.items()}
    out["load_after"] = os.getloadavg()
    return out


def print_tables(result: dict[str, Any]) -> None:
    for cfa, acc in result.get("accuracy", {}).items():
        print(f"\n## {cfa}: mean sRGB PSNR (dB) / SSIM against the ground truth, interior")
        print(
            "| set | algorithm | clean PSNR | clean SSIM | denoised PSNR | denoised SSIM |"
            " denoised vs current (dB, +-SE, wins) |"
        )
        print("|---|---|---|---|---|---|---|")
        for set_name, entry in acc["summary"].items():
            for label in acc["algorithms"]:
                c, d = entry[label]["clean"], entry[label]["denoised"]
                v = entry[label]["vs_current"]["denoised"]
                print(
                    f"| {set_name} | {label} | {c['psnr']:.2f} | {c['ssim']:.4f} | "
                    f"{d['psnr']:.2f} | {d['ssim']:.4f} | {v['psnr_diff']:+.3f} "
                    f"+-{v['sem']:.3f}, {v['wins']:.0%} |"
                )
        print("sanity:", json.dumps(acc["sanity"], indent=1))
    for cfa, t in result.get("timing", {}).items():
        print(f"\n## {cfa} full-frame postprocess, 1 thread: {json.dumps(t)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24, help="Bayer validation photos")
    ap.add_argument("--xtrans-images", type=int, default=4, help="X-Trans validation photos")
    ap.add_argument("--border", type=int, default=16, help="pixels left out on each side")
    ap.add_argument("--no-ssim", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "sidraw-bench"))
    ap.add_argument("--out", default=str(BENCH / "results" / "demosaic.json"))
    a = ap.parse_args(argv)
    result: dict[str, Any] = {
        "threads": 1,
        "libraw": ".".join(map(str, rawpy.libraw_version)),
        "rawpy": rawpy.__version__,
        "border": a.border,
    }
    if not a.no_accuracy:
        result["accuracy"] = {
            cfa: accuracy(cfa, n, a.border, not a.no_ssim)
            for cfa, n in (("bayer", a.images), ("xtrans", a.xtrans_images))
            if n > 0
        }
    if not a.no_timing:  # last, so the accuracy part never overlaps the timed runs
        result["timing"] = {cfa: timing(cfa, a.reps, Path(a.cache)) for cfa in ("bayer", "xtrans")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_tables(result)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
