#!/usr/bin/env python3
"""Batch throughput: files per minute in process, with ``--workers 1`` and ``--workers 2`` (see
bench/README.md, "Throughput").

    python bench/throughput.py [--files 8] [--width 4240 --height 2832] [--workers 1 2]
                               [--model PATH] [--out bench/results/throughput.json]

Each case is one ``python -m sidraw convert FOLDER -o OUT --ratio 100 --json`` process on a
folder of ``--files`` synthetic dark DNGs (different seeds). Reported per case: wall time, files
per minute, CPU seconds per file (the process and every worker process it waited for), and the
bytes read and written per file. Then the model load time in one process, and what the numbers
say about more machines: each worker converts a file every ``wall x workers / files`` seconds
after its model loads, so N machines of W workers reach about N x W times one worker's rate
until the shared filesystem's bandwidth (bytes per file / bandwidth) is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: A shared filesystem's bandwidth for the projection: 1 Gbit/s Ethernet, in bytes per second.
NETWORK_BYTES_S = 125e6


def make_frames(folder: Path, count: int, width: int, height: int) -> int:
    """Write ``count`` dark DNGs; returns the bytes they hold."""
    from sidraw.sample import write_sample

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        write_sample(folder / f"frame{k:03d}.dng", width=width, height=height, seed=k)
    return sum(p.stat().st_size for p in folder.glob("*.dng"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(frames: Path, out: Path, args: argparse.Namespace, workers: int | None) -> dict:
    """One batch in a fresh process: wall and CPU seconds, files per minute, bytes written."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sidraw", "convert", str(frames), "-o", str(out),
           "--ratio", "100", "--json", "--device", "cpu"]  # fmt: skip
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    ok = [r for r in records if r["status"] == "ok"]
    if proc.returncode != 0 or len(ok) != args.files:
        raise SystemExit(f"case {workers} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    written = sum(p.stat().st_size for p in out.glob("*.tif"))
    return {
        "workers": workers,
        "wall_s": round(wall, 3),
        "files_per_minute": round(60 * args.files / wall, 2),
        "cpu_s_per_file": round(cpu / args.files, 3),
        "file_seconds_median": round(sorted(r["seconds"] for r in ok)[len(ok) // 2], 3),
        "bytes_written_per_file": written // args.files,
    }


def model_load_seconds(model: str | None) -> float:
    """Seconds to load the Bayer network in this process (what each worker pays once)."""
    from sidraw.model import ModelCache

    t0 = time.perf_counter()
    ModelCache(model, "cpu").get("bayer")
    return time.perf_counter() - t0


def projection(cases: list[dict], bytes_per_file: float, load_s: float) -> list[dict]:
    """Files per minute for machines x workers like the best case, and the bandwidth limit."""
    best = max(cases, key=lambda c: c["files_per_minute"])
    per_worker = best["files_per_minute"] / (best["workers"] or 1)
    limit = 60 * NETWORK_BYTES_S / bytes_per_file
    rows = []
    for machines in (1, 2, 4, 10):
        workers = machines * (best["workers"] or 1)
        rows.append({
            "machines": machines,
            "workers": workers,
            "files_per_minute": round(min(per_worker * workers, limit), 1),
            "network_limit": round(limit, 1),
            "model_load_s_per_worker": round(load_s, 2),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--width", type=int, default=4240)
    ap.add_argument("--height", type=int, default=2832)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default=None, help="model card, ONNX file or folder")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sidraw-throughput-") as tmp:
        frames = Path(tmp) / "frames"
        read = make_frames(frames, args.files, args.width, args.height)
        cases = [run_case(frames, Path(tmp) / "out", args, None)]
        cases += [run_case(frames, Path(tmp) / "out", args, w) for w in args.workers]
    load_s = model_load_seconds(args.model)
    bytes_per_file = read / args.files + cases[0]["bytes_written_per_file"]
    result: dict[str, Any] = {
        "frame": f"{args.width}x{args.height}",
        "files": args.files,
        "cpu_count": os.cpu_count(),
        "bytes_read_per_file": read // args.files,
        "model_load_s": round(load_s, 3),
        "cases": cases,
        "projection": projection(cases[1:] or cases, bytes_per_file, load_s),
    }
    print(f"{args.files} frames of {result['frame']}, {result['cpu_count']} logical CPUs; "
          f"{result['bytes_read_per_file'] / 1e6:.1f} MB read per file, "
          f"model load {load_s:.2f} s")  # fmt: skip
    print(f"{'case':<14} {'wall s':>8} {'files/min':>10} {'CPU s/file':>11} {'MB out/file':>12}")
    for c in cases:
        name = "in process" if c["workers"] is None else f"--workers {c['workers']}"
        mb_out = c["bytes_written_per_file"] / 1e6
        print(f"{name:<14} {c['wall_s']:>8.2f} {c['files_per_minute']:>10.1f} "
              f"{c['cpu_s_per_file']:>11.2f} {mb_out:>12.2f}")  # fmt: skip
    print("projection (like the best --workers case per machine, 1 Gbit/s shared filesystem):")
    for p in result["projection"]:
        print(f"  {p['machines']:>2} machines, {p['workers']:>3} workers: "
              f"{p['files_per_minute']:.1f} files/min "
              f"(network limit {p['network_limit']:.0f})")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
