#!/usr/bin/env python3
"""sidraw speed and memory benchmark (see bench/README.md).

    python bench/run.py [--quick] [--reps 3] [--out bench/results/latest.json] [--model PATH]

Every case runs in a fresh subprocess; wall time and peak RSS are measured per process. Prints a
table and the target checks, and writes everything as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flops import conv_flops
from harness import Measurement, measure, summary
from peers import Peer, setup_darktable, setup_rawtherapee

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # benchmark the checkout's sidraw, not an installed copy

import sidraw  # noqa: E402
from sidraw.model import ModelCard, ModelError, card_for, physical_cores  # noqa: E402
from sidraw.mosaic import layout_from_letters  # noqa: E402
from sidraw.sample import pattern_letters, write_sample  # noqa: E402

RATIO = 100.0
#: Files in the batch cases (links to the same frame).
BATCH_FILES = 3
STAGES = ("decode", "pack", "inference", "render", "write")
TARGET_E2E_OVER_NETWORK = 1.4
TARGET_NETWORK_OVER_FLOOR = 1.5
TARGET_RSS_MB = 1500.0  # 1.5 GB, for the 24 MP X-Trans frame


@dataclass(frozen=True)
class Frame:
    """A synthetic dark raw to benchmark on."""

    key: str
    label: str
    pattern: str
    width: int
    height: int
    camera: str

    @property
    def cfa(self) -> str:
        return "xtrans" if self.pattern == "xtrans" else "bayer"

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


FULL_FRAMES = (
    Frame("bayer-12mp", "Bayer 12 MP", "RGGB", 4240, 2832, "ILCE-7SM2"),
    Frame("xtrans-24mp", "X-Trans 24 MP", "xtrans", 6000, 4000, "X-T2"),
)
QUICK_FRAMES = (
    Frame("bayer-quick", "Bayer 1 MP", "RGGB", 1200, 800, "ILCE-7SM2"),
    Frame("xtrans-quick", "X-Trans 1 MP", "xtrans", 1200, 798, "X-T2"),
)


@dataclass
class Case:
    """One thing timed on one frame.

    Attributes:
        key: name in the JSON.
        label: row label.
        kind: ``"sidraw"``, ``"reference"`` (the network alone) or ``"peer"``.
        command: what runs in the subprocess.
        output: the file each run must produce (deleted before each run), or None.
        timing: ``"wall"`` (the whole process) or ``"report"`` (the ``seconds`` the child measured).
        files: files the command converts; times are shown per file (wall time / files).
        runs: the successful runs.
        error: why the case stopped, if it failed.
    """

    key: str
    label: str
    kind: str
    command: list[str]
    output: Path | None = None
    timing: str = "wall"
    files: int = 1
    runs: list[Measurement] = field(default_factory=list)
    error: str = ""

    def value(self, m: Measurement) -> float:
        seconds = m.wall_s if self.timing == "wall" else float(m.report()["seconds"])
        return seconds / self.files

    def values(self) -> list[float]:
        return [self.value(m) for m in self.runs]

    def min(self) -> float | None:
        return min(self.values()) if self.runs else None

    def peak_rss_mb(self) -> float | None:
        return max(m.peak_rss_mb for m in self.runs) if self.runs else None

    def to_dict(self) -> dict[str, Any]:
        s = summary(self.values())
        return {
            "label": self.label,
            "kind": self.kind,
            "timing": self.timing,
            "command": self.command,
            "error": self.error,
            "min_s": s["min"],
            "median_s": s["median"],
            "values_s": s["values"],
            "wall_s": [round(m.wall_s, 4) for m in self.runs],
            "peak_rss_mb": self.peak_rss_mb(),
            "peak_rss_mb_runs": [round(m.peak_rss_mb, 1) for m in self.runs],
            "reports": [m.report() for m in self.runs],
        }


@dataclass
class ModelChoice:
    """The model used for one CFA kind: ``spec`` is what ``--model`` gets ("" = bundled)."""

    cfa: str
    spec: str
    source: str
    card: ModelCard


def log(msg: str = "") -> None:
    print(msg, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _source_digest() -> str:
    """Short hash of the sample generator, so cached samples follow changes to it."""
    h = hashlib.sha256()
    for name in ("sample.py", "dng.py"):
        h.update((ROOT / "sidraw" / name).read_bytes())
    return h.hexdigest()[:10]


def make_sample(frame: Frame, folder: Path) -> Path:
    """The frame's DNG, generated once into the cache folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{frame.key}-{frame.width}x{frame.height}-{_source_digest()}.dng"
    if not path.is_file():
        log(f"  generating {path.name} ({frame.megapixels:.1f} MP {frame.pattern}) ...")
        tmp = path.with_suffix(".tmp")
        write_sample(
            tmp,
            pattern=frame.pattern,
            width=frame.width,
            height=frame.height,
            ratio=RATIO,
            model=frame.camera,
        )
        tmp.replace(path)
    return path


def build_test_models(folder: Path) -> Path:
    """Random-weight U-Nets of width 24 (tests/unet_onnx.py) for both CFA kinds."""
    spec = importlib.util.spec_from_file_location("unet_onnx", ROOT / "tests" / "unet_onnx.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/unet_onnx.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for cfa in ("bayer", "xtrans"):
        module.write_model(folder, cfa, width=24, name=f"bench-random-{cfa}-w24")
    return folder


def choose_models(
    given: str | None, cfas: set[str], cache: Path, notes: list[str]
) -> dict[str, ModelChoice]:
    """The model per CFA kind: ``--model``, else the bundled ones, else random test U-Nets."""
    chosen: dict[str, ModelChoice] = {}
    missing = []
    if given and Path(given).exists():
        given = str(Path(given).resolve())  # the cases run with the checkout as working folder
    for cfa in sorted(cfas):
        try:
            if given:
                chosen[cfa] = ModelChoice(cfa, given, "given", card_for(cfa, given))
            else:
                chosen[cfa] = ModelChoice(cfa, "", "bundled", card_for(cfa))
        except ModelError as exc:
            if given:
                notes.append(f"no {cfa} model in --model {given}: {exc}; its frame is skipped")
            else:
                missing.append(cfa)
    if missing:
        folder = build_test_models(cache / "random-models")
        for cfa in missing:
            card_path = folder / f"bench-random-{cfa}-w24.json"
            chosen[cfa] = ModelChoice(cfa, str(card_path), "random-test", card_for(cfa, card_path))
        banner = "!" * 78
        msg = (
            f"NO BUNDLED {'/'.join(m.upper() for m in missing)} MODEL in weights/: using "
            "RANDOM-WEIGHT test U-Nets of width 24 (tests/unet_onnx.py). Speed and memory are "
            "indicative only; rerun when weights/ holds the real models."
        )
        log(f"{banner}\n{msg}\n{banner}")
        notes.append(msg)
    return chosen


def packed_tiles(frame: Frame, tile: int) -> tuple[int, int, int]:
    """(tiles, packed height, packed width) of the non-overlapping tile grid over the frame."""
    h, w, _ = layout_from_letters(pattern_letters(frame.pattern)).packed_shape(
        (frame.height, frame.width)
    )
    return math.ceil(h / tile) * math.ceil(w / tile), h, w


def sidraw_cases(
    frame: Frame, src: Path, model: ModelChoice, out: Path, args: argparse.Namespace
) -> list[Case]:
    py = sys.executable
    worker = str(BENCH / "worker.py")
    tuning = ["--threads", str(args.threads)] if args.threads else []
    tuning += ["--precision", args.precision] if args.precision else []
    model_opt = ["--model", model.spec] if model.spec else []
    # sidraw's own cases only: the network-alone case runs the whole network on its grid. The
    # CLI runs overlapping tiles when given an overlap.
    tiling = ["--overlap", str(model.card.overlap)] if args.tiling == "tiles" else []
    worker_tiling = ["--tiling", args.tiling]
    e2e_dir = out / f"{frame.key}-e2e"
    e2e_dir.mkdir(parents=True, exist_ok=True)
    common = [
        *["--src", str(src), "--cfa", frame.cfa, "--ratio", str(RATIO), "--device", args.device],
        *model_opt,
        *tuning,
    ]
    # A batch of BATCH_FILES links to the frame: per-file time with files overlapping (default)
    # and one at a time (--serial).
    batch_in = out / f"{frame.key}-batch-in"
    batch_in.mkdir(parents=True, exist_ok=True)
    for k in range(BATCH_FILES):
        link = batch_in / f"{src.stem}-{k}{src.suffix}"
        if not link.exists():
            try:
                os.link(src, link)
            except OSError:
                shutil.copyfile(src, link)
    batch_cases = []
    for key, label, extra in (
        ("batch", f"sidraw convert, batch of {BATCH_FILES}, per file", []),
        ("batch_serial", "... the same with --serial, per file", ["--serial"]),
    ):
        batch_out = out / f"{frame.key}-{key}"
        batch_cases.append(
            Case(
                key,
                label,
                "sidraw",
                [py, "-m", "sidraw", "convert", str(batch_in), "--out", str(batch_out),
                 "--overwrite", "--ratio", str(RATIO), "--device", args.device, "-q",
                 *model_opt, *tuning, *tiling, *extra],
                output=batch_out / f"{src.stem}-{BATCH_FILES - 1}.tif",
                files=BATCH_FILES,
            )
        )
    return [
        Case(
            "e2e",
            "sidraw convert (end to end)",
            "sidraw",
            [
                py,
                "-m",
                "sidraw",
                "convert",
                str(src),
                "--out",
                str(e2e_dir),
                "--overwrite",
                "--ratio",
                str(RATIO),
                "--device",
                args.device,
                *model_opt,
                *tuning,
                *tiling,
            ],
            output=e2e_dir / f"{src.stem}.tif",
        ),
        Case(
            "stages",
            "convert_file (in process)",
            "sidraw",
            [
                py,
                worker,
                "stages",
                *common,
                "--dst",
                str(out / f"{frame.key}-stages.tif"),
                "--tile",
                str(args.tile),
                *worker_tiling,
            ],
            output=out / f"{frame.key}-stages.tif",
            timing="report",
        ),
        Case(
            "network",
            "network alone, tile grid",
            "reference",
            [py, worker, "network", *common, "--tile", str(args.tile)],
            timing="report",
        ),
        *(
            [Case("network_staged", "network alone, staged", "reference",
                  [py, worker, "staged-network", *common], timing="report")]
            if model.card.staged_level else []
        ),
        *batch_cases,
    ]


def peer_cases(
    frame: Frame, src: Path, out: Path, cache: Path, notes: list[str], peers_on: bool
) -> list[Case]:
    cases = [
        Case(
            "rawpy",
            "rawpy postprocess (no NR)",
            "peer",
            [
                sys.executable,
                str(BENCH / "worker.py"),
                "rawpy",
                "--src",
                str(src),
                "--dst",
                str(out / f"{frame.key}-rawpy.tif"),
            ],
            output=out / f"{frame.key}-rawpy.tif",
        )
    ]
    if not peers_on:
        return cases
    found: list[Peer] = []
    for name, setup in (
        ("rawtherapee", lambda: setup_rawtherapee(cache / "peers", src, RATIO)),
        ("darktable", lambda: setup_darktable(cache / "peers", src)),
    ):
        log(f"  setting up {name} ...")
        peer, note = setup()
        notes.append(f"{frame.key}: {name}: {note}")
        log(f"    {'ok' if peer else 'SKIPPED'}: {note}")
        if peer is not None:
            found.append(peer)
    for peer in found:
        dst = out / f"{frame.key}-{peer.key}.tif"
        cases.append(Case(peer.key, peer.label, "peer", peer.command(src, dst), output=dst))
    return cases


def run_cases(frame: Frame, cases: list[Case], reps: int, timeout: float) -> None:
    """All repetitions, interleaved (case 1, 2, ..., then again) so drift hits all alike."""
    env = child_env()
    for rep in range(reps):
        for case in cases:
            if case.error:
                continue
            if case.output is not None:
                case.output.unlink(missing_ok=True)
            m = measure(case.command, env=env, cwd=str(ROOT), timeout=timeout)
            problem = m.error()
            if not problem and case.output is not None and not case.output.is_file():
                problem = f"no output file {case.output.name}"
            if not problem and case.timing == "report" and "seconds" not in m.report():
                problem = "the child printed no report"
            if problem:
                case.error = problem
                log(f"  {frame.key:13} {case.label:30} FAILED: {problem}")
                continue
            case.runs.append(m)
            log(
                f"  {frame.key:13} {case.label:30} rep {rep + 1}/{reps}: "
                f"{case.value(m):8.3f} s  {m.peak_rss_mb:7.0f} MB"
            )


class ConvThroughput:
    """The device's 3x3 convolution throughput per precision, measured once each, on demand."""

    def __init__(
        self, threads: int, reps: int, timeout: float, notes: list[str], device: str = "cpu"
    ) -> None:
        self.threads, self.reps, self.timeout, self.notes = threads, reps, timeout, notes
        self.device = device
        self.results: dict[str, dict[str, Any]] = {}

    def get(self, precision: str) -> dict[str, Any]:
        if precision not in self.results:
            log(f"conv throughput ({precision}, 3x3, 64->64 channels, 512x512) ...")
            cmd = [
                sys.executable,
                str(BENCH / "worker.py"),
                "conv",
                "--threads",
                str(self.threads),
                "--reps",
                str(self.reps),
                "--precision",
                precision,
                "--device",
                self.device,
            ]
            m = measure(cmd, env=child_env(), cwd=str(ROOT), timeout=self.timeout)
            result = m.report() if m.ok else {"error": m.error()}
            if "gflops_per_s" in result:
                log(f"  {result['gflops_per_s']:.1f} GFLOP/s with {result['threads']} threads")
            else:
                log(f"  FAILED: {result.get('error')}")
                self.notes.append(f"conv throughput ({precision}) failed: {result.get('error')}")
            self.results[precision] = result
        return self.results[precision]


def frame_result(
    frame: Frame,
    model: ModelChoice,
    cases: list[Case],
    convs: ConvThroughput,
    tile: int,
) -> dict[str, Any]:
    by_key = {c.key: c for c in cases}
    tiles, h, w = packed_tiles(frame, tile)
    network = by_key.get("network")
    precision = "fp32"
    if network is not None and network.runs:
        precision = str(network.runs[0].report().get("precision", "fp32"))
    result: dict[str, Any] = {
        "frame": {
            "label": frame.label,
            "pattern": frame.pattern,
            "width": frame.width,
            "height": frame.height,
            "camera": frame.camera,
            "packed": [h, w],
            "grid_tiles": tiles,
            "tile": tile,
        },
        "model": {
            "source": model.source,
            "name": model.card.name,
            "onnx": str(model.card.path),
            "overlap": model.card.overlap,
            "precision": precision,
        },
        "cases": {c.key: c.to_dict() for c in cases},
    }
    stages = by_key.get("stages")
    if stages is not None and stages.runs:
        reports = [m.report() for m in stages.runs]
        result["stages"] = {
            k: summary([float(r["timings"].get(k, 0.0)) for r in reports]) for k in STAGES
        }
        rss = [r.get("rss_mb", {}) for r in reports]
        result["stage_rss_mb"] = {
            k: max((x[k] for x in rss if x.get(k) is not None), default=None)
            for k in ("through_inference", "after_inference")
        }
        result["tiling"] = tiling_overhead(h, w, tile, model.card, reports[0].get("tiles"))
    e2e, inproc = by_key["e2e"].min(), by_key["stages"].min() if stages else None
    if e2e is not None and inproc is not None:
        result["startup_s"] = e2e - inproc  # interpreter start, imports, model load, CLI
    try:
        result.update(network_floor(model, precision, convs, tile, tiles))
    except (ImportError, ValueError, OSError) as exc:
        result["flops"] = {"error": str(exc)}
    return result


def network_floor(
    model: ModelChoice, precision: str, convs: ConvThroughput, tile: int, tiles: int
) -> dict[str, Any]:
    """The network's convolution FLOPs on the frame's ``tiles`` tiles and the time this device's
    3x3 throughput needs for them: ``{"flops": ..., "floor_s": ..., "floor_precision": ...}``.
    Counted on the file that runs: an INT8 variant's float layers at the float32 throughput."""
    card = model.card
    variant = card.variants.get(precision) if precision == "int8" else None
    path = card.path.parent / str(variant["file"]) if variant else card.path
    counted = conv_flops(path, len(card.channels), tile)
    out: dict[str, Any] = {
        "flops": {
            "per_tile": counted["flops"],
            "per_frame": counted["flops"] * tiles,
            "gflop_per_frame": counted["flops"] * tiles / 1e9,
            "int8_share": counted["int8_flops"] / counted["flops"] if counted["flops"] else 0.0,
            "conv_nodes": counted["conv"],
            "conv_transpose_nodes": counted["conv_transpose"],
        }
    }
    int8, total = counted["int8_flops"], counted["flops"]
    split = {"int8": int8, "fp32": total - int8} if precision == "int8" else {precision: total}
    parts = {p: f for p, f in split.items() if f}
    rates = {p: convs.get(p).get("gflops_per_s") for p in parts}
    if parts and all(rates.values()):
        out["floor_s"] = sum(f * tiles / (rates[p] * 1e9) for p, f in parts.items())
        out["floor_precision"] = "+".join(parts)
    return out


def tiling_overhead(
    h: int, w: int, tile: int, card: ModelCard, tiles_run: int | None
) -> dict[str, Any]:
    """Pixels that sidraw's overlapping tiles feed the network, against the non-overlapping grid.

    Mirrors :func:`sidraw.tiling.run_tiled`'s plan (reflect margin of half the overlap);
    ``matches`` says whether the tile count agrees with what convert_file reported.
    """
    try:
        from sidraw.tiling import plan_axis

        margin = -(-(card.overlap // 2) // card.downsample) * card.downsample
        py = plan_axis(h, tile, card.overlap, card.downsample, margin)
        px = plan_axis(w, tile, card.overlap, card.downsample, margin)
    except (ImportError, ValueError, TypeError) as exc:
        return {"error": str(exc)}
    n = len(py.origins) * len(px.origins)
    pixels = n * py.size * px.size
    grid = math.ceil(h / tile) * math.ceil(w / tile) * tile * tile
    result: dict[str, Any] = {
        "tiles": n,
        "tile_shape": [py.size, px.size],
        "overlap": card.overlap,
        "margin": margin,
        "pixels_over_grid": pixels / grid,
        "pixels_over_frame": pixels / (h * w),
        "matches": tiles_run is None or tiles_run == n,
    }
    staged = staged_plan(h, w, card.staged_tile or tile, card)
    if staged is not None and tiles_run is not None and tiles_run != n:
        result["staged"] = staged
        result["matches"] = tiles_run == staged["steps"]
    return result


def staged_plan(h: int, w: int, tile: int, card: ModelCard) -> dict[str, Any] | None:
    """What staged inference (:mod:`sidraw.staged`) runs on the frame, as convert plans it (no
    margin): its full-resolution windows (read area over the frame's, each pass), its deep tiles
    and its progress steps."""
    if not card.staged_level:
        return None
    from sidraw.staged import deep_overlap_for, plan_stages

    scale = 2**card.staged_level
    plan = plan_stages(
        (h, w), tile=tile, context=card.staged_context, scale=scale, margin=0,
        deep_overlap=deep_overlap_for(card.overlap, scale, card.downsample),
        multiple=card.downsample,
    )
    area = sum(y.read_hi - y.read_lo for y in plan.rows) * sum(
        x.read_hi - x.read_lo for x in plan.cols
    )
    return {
        "windows": len(plan.rows) * len(plan.cols),
        "window_area_over_frame": area / (h * w),
        "deep_tiles": plan.deep_tiles,
        "steps": plan.steps,
    }


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec`` (e.g. ``"9.3f"``), or a dash of the same width."""
    if value is None:
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value, spec)


def _row(
    label: str,
    frame: str,
    lo: float | None,
    med: float | None,
    rss: float | None,
    fastest: float | None,
) -> None:
    ratio = lo / fastest if lo is not None and fastest else None
    log(
        f"{label:38} {frame:13} {_fmt(lo, '9.3f')} {_fmt(med, '9.3f')} "
        f"{_fmt(rss, '8.0f')} {_fmt(ratio, '7.2f')}"
    )


def print_table(frames: list[Frame], results: dict[str, dict[str, Any]]) -> None:
    header = f"{'case':38} {'frame':13} {'min s':>9} {'median s':>9} {'peak MB':>8} {'x peer':>7}"
    log(header)
    log("-" * len(header))
    for frame in frames:
        r = results.get(frame.key)
        if r is None:
            continue
        cases = r["cases"]
        peer_mins = [c["min_s"] for c in cases.values() if c["kind"] == "peer" and c["min_s"]]
        fastest = min(peer_mins) if peer_mins else None
        for key, c in cases.items():
            label = c["label"]
            if key == "network" and c["reports"]:
                n = c["reports"][0]["tiles"]
                label = f"network alone, {n} tile{'s' * (n != 1)} of {r['frame']['tile']}px" + (
                    f" {r['model']['precision']}" if r["model"]["precision"] != "fp32" else ""
                )
            if c["error"] and not c["values_s"]:
                log(f"{label:38} {frame.key:13} failed: {c['error'][:60]}")
                continue
            _row(label, frame.key, c["min_s"], c["median_s"], c["peak_rss_mb"], fastest)
            if key == "stages" and "stages" in r:
                for stage in STAGES:
                    s = r["stages"][stage]
                    _row("  " + stage, frame.key, s["min"], s["median"], None, None)
                rss = r.get("stage_rss_mb", {})
                _row(
                    "  RSS to end of inference",
                    frame.key,
                    None,
                    None,
                    rss.get("through_inference"),
                    None,
                )
                _row(
                    "  RSS after inference", frame.key, None, None, rss.get("after_inference"), None
                )
            if key == "network" and "floor_s" in r:
                gf = r["flops"]["gflop_per_frame"]
                _row(
                    f"network floor ({gf:.0f} GFLOP {r['floor_precision']})",
                    frame.key,
                    r["floor_s"],
                    None,
                    None,
                    None,
                )
        log("")


def print_details(frames: list[Frame], results: dict[str, dict[str, Any]]) -> None:
    """Where the end-to-end time goes beyond the network: tiling overlap and process start-up."""
    for frame in frames:
        r = results.get(frame.key)
        if r is None:
            continue
        t = r.get("tiling", {})
        parts = []
        if "staged" in t:
            st = t["staged"]
            parts.append(
                f"sidraw runs staged: {st['windows']} full-resolution window(s) reading "
                f"{st['window_area_over_frame']:.2f}x the frame's pixels in each of 2 passes, "
                f"{st['deep_tiles']} deep tile(s)"
                + ("" if t["matches"] else " (step count differs from convert_file's!)")
            )
        elif "tiles" in t:
            a, b = t["tile_shape"]
            parts.append(
                f"sidraw feeds the network {t['tiles']} tile(s) of {a}x{b} "
                f"(overlap {t['overlap']}, margin {t['margin']}) = "
                f"{t['pixels_over_grid']:.2f}x the pixels of the {r['frame']['grid_tiles']}-tile "
                f"grid, {t['pixels_over_frame']:.2f}x the frame's"
                + ("" if t["matches"] else " (tile count differs from convert_file's!)")
            )
        if "startup_s" in r:
            parts.append(f"process start-up + imports + model load ~ {r['startup_s']:.2f} s")
        net = r["cases"].get("network", {})
        if net.get("reports"):
            parts.append(
                f"network {net['reports'][0]['per_tile_s']:.3f} s per {r['frame']['tile']}px tile"
            )
        if parts:
            log(f"{frame.key}: " + "; ".join(parts))


def evaluate_targets(
    frames: list[Frame], results: dict[str, dict[str, Any]], quick: bool
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, frame: str, ok: bool | None, text: str) -> None:
        checks.append({"target": name, "frame": frame, "pass": ok, "detail": text})

    for frame in frames:
        r = results.get(frame.key)
        if r is None:
            continue
        cases = r["cases"]
        e2e = cases.get("e2e", {}).get("min_s")
        net = cases.get("network", {}).get("min_s")
        floor = r.get("floor_s")
        rt = cases.get("rawtherapee", {}).get("min_s")
        for name, time_s in (("e2e", e2e), ("batch per file", cases.get("batch", {}).get("min_s"))):
            if time_s and net:
                v = time_s / net
                text = f"{time_s:.2f} s / {net:.2f} s = {v:.2f}"
                add(f"{name}/network <= 1.4", frame.key, v <= TARGET_E2E_OVER_NETWORK, text)
            elif name == "e2e":  # the batch case is optional
                add("e2e/network <= 1.4", frame.key, None, "not measured")
        if net and floor:
            v = net / floor
            add(
                "network/floor <= 1.5",
                frame.key,
                v <= TARGET_NETWORK_OVER_FLOOR,
                f"{net:.2f} s / {floor:.2f} s = {v:.2f}",
            )
        else:
            add("network/floor <= 1.5", frame.key, None, "not measured")
        if e2e and rt:
            add(
                "faster than rawtherapee NR",
                frame.key,
                e2e < rt,
                f"sidraw {e2e:.2f} s vs rawtherapee {rt:.2f} s (x{e2e / rt:.2f})",
            )
        else:
            add(
                "faster than rawtherapee NR",
                frame.key,
                None,
                "rawtherapee not measured" if e2e else "sidraw not measured",
            )
        if frame.cfa == "xtrans":
            for key, what in (("e2e", ""), ("batch", ", batch")):
                rss = cases.get(key, {}).get("peak_rss_mb")
                name = f"peak RSS X-Trans < 1.5 GB{what}" + (" (quick frame!)" if quick else "")
                if rss:
                    add(name, frame.key, rss < TARGET_RSS_MB, f"{rss:.0f} MB")
                elif key == "e2e":
                    add(name, frame.key, None, "not measured")
    return checks


def print_targets(checks: list[dict[str, Any]]) -> None:
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[c["pass"]]
        log(f"  {verdict}  {c['target']:42} {c['frame']:13} {c['detail']}")


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((line.strip() for line in lines if any(ch.isdigit() for ch in line)), None)


def environment(threads: int) -> dict[str, Any]:
    import numpy
    import onnxruntime
    import rawpy

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        onnx_version: str | None = __import__("onnx").__version__
    except ImportError:
        onnx_version = None
    git = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "machine": {
            "cpu": cpu,
            "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "physical_cores": physical_cores(),
            "load_avg_start": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(),
        },
        "software": {
            "python": platform.python_version(),
            "sidraw": sidraw.__version__,
            "git": git,
            "git_dirty": bool(dirty),
            "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx_version,
            "rawpy": rawpy.__version__,
            "libraw": ".".join(str(v) for v in rawpy.libraw_version),
            "rawtherapee": _version(["rawtherapee-cli", "-v"])
            if shutil.which("rawtherapee-cli")
            else None,
            "darktable": _version(["darktable-cli", "--version"])
            if shutil.which("darktable-cli")
            else None,
        },
        "threads": threads,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark sidraw's speed and memory against its network and other raw "
        "developers, on synthetic full-frame dark raws."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small frames and 1 repetition: checks that everything runs",
    )
    parser.add_argument("--reps", type=int, help="repetitions per case (default 3, quick: 1)")
    parser.add_argument(
        "--out", type=Path, help="JSON result file (default: bench/results/<time>[-quick].json)"
    )
    parser.add_argument(
        "--model",
        help="model card, ONNX file or folder of cards "
        "(default: the bundled models; random test U-Nets if there are none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads for sidraw (default: sidraw's, physical cores)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "fp16"],
        help="sidraw --precision for every sidraw case (default: sidraw's own, auto)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="sidraw --device for every sidraw case and the convolution throughput (default cpu)",
    )
    parser.add_argument(
        "--tile", type=int, default=0, help="tile size in packed pixels (0: the model card's)"
    )
    parser.add_argument(
        "--tiling",
        choices=["auto", "tiles"],
        default="auto",
        help="sidraw's tiling in its own cases: auto (staged where the model allows) or tiles "
        "(overlapping tiles, as --overlap with the card's overlap)",
    )
    parser.add_argument(
        "--frames",
        nargs="+",
        choices=["bayer", "xtrans"],
        default=["bayer", "xtrans"],
        help="which frames to run",
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip rawtherapee and darktable (rawpy still runs)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sidraw-bench",
        help="folder for samples, models and peer profiles",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the converted images")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    frames = [f for f in (QUICK_FRAMES if args.quick else FULL_FRAMES) if f.cfa in args.frames]
    threads = args.threads or physical_cores()
    env = environment(threads)
    env["device"] = args.device
    notes: list[str] = []
    m = env["machine"]
    log(
        f"sidraw {env['software']['sidraw']} ({env['software']['git']}) benchmark, "
        f"{'QUICK, ' if args.quick else ''}{args.reps} rep(s)"
    )
    log(
        f"CPU: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['physical_cores']} physical cores, "
        f"onnxruntime threads {threads}"
    )
    load = m["load_avg_start"][0]
    if load > 0.25 * m["usable_cpus"]:
        msg = (
            f"the machine is busy (load average {load:.2f} on {m['usable_cpus']} CPUs): "
            "timings are not representative"
        )
        log(f"WARNING: {msg}")
        notes.append(msg)
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    models = choose_models(args.model, {f.cfa for f in frames}, args.cache, notes)
    out = Path(tempfile.mkdtemp(prefix="outputs-", dir=args.cache))

    convs = ConvThroughput(threads, 2 if args.quick else 5, args.timeout, notes, args.device)
    convs.get("fp32")

    results: dict[str, dict[str, Any]] = {}
    try:
        for frame in frames:
            model = models.get(frame.cfa)
            if model is None:
                continue
            log(
                f"\n{frame.label} ({frame.key}, {frame.width}x{frame.height}), "
                f"model {model.card.name} ({model.source})"
            )
            src = make_sample(frame, args.cache / "samples")
            cases = sidraw_cases(frame, src, model, out, args)
            cases += peer_cases(frame, src, out, args.cache, notes, not args.no_peers)
            run_cases(frame, cases, args.reps, args.timeout)
            results[frame.key] = frame_result(
                frame, model, cases, convs, args.tile or model.card.tile
            )
            results[frame.key]["sample"] = str(src)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    log("")
    print_table(frames, results)
    print_details(frames, results)
    checks = evaluate_targets(frames, results, args.quick)
    log("targets (min times; e2e = `sidraw convert` process wall time):")
    print_targets(checks)
    for note in notes:
        log(f"note: {note}")

    env["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    report = {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "quick": args.quick,
        "reps": args.reps,
        "ratio": RATIO,
        **env,
        "models": {
            cfa: {"source": c.source, "name": c.card.name, "onnx": str(c.card.path)}
            for cfa, c in models.items()
        },
        "conv": convs.results,
        "frames": results,
        "targets": checks,
        "notes": notes,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = args.out or BENCH / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"\nwrote {path}")
    broken = [
        f"{key}/{case}"
        for key, r in results.items()
        for case, c in r["cases"].items()
        if c["kind"] != "peer" and c["error"]
    ]
    if broken:
        log(f"sidraw cases that failed: {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
