"""Peak memory of converting one synthetic dark raw, at several sizes (default 12 and 48 MP).

Each size runs in two fresh subprocesses: one writes the synthetic DNG (the scene generator needs
a lot of memory itself, kept out of the measurement), the other converts it with
``sidraw.pipeline.prepare_file`` + ``finish_file`` (what ``convert_file`` runs) and reports its own
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after the first half (decode, packing, tiled
inference: "denoise MB") and at the end (LibRaw's render, in bands for Bayer frames, and the
write: "peak MB"),
the RSS before the conversion (interpreter, libraries, model loaded) and the wall time.

Model: the bundled models when ``weights/`` has some, else a random-weight U-Net built with
``tests/unet_onnx.py`` (width 24 by default) whose memory use matches a real model's of that width.

    python bench/memory_scaling.py                  # 12 and 48 MP
    python bench/memory_scaling.py --mp 0.5 --mp 2  # quick check
    python bench/memory_scaling.py --pattern xtrans # X-Trans frames (rendered whole by LibRaw)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRITE = """
import sys
from sidraw.sample import write_sample
write_sample(sys.argv[1], width=int(sys.argv[2]), height=int(sys.argv[3]), seed=1,
             pattern=sys.argv[4])
"""

_CONVERT = """
import json, os, resource, sys, time
import sidraw
from sidraw.model import ModelCache
from sidraw.pipeline import finish_file, prepare_file

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

src, dst, model, threads = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
cache = ModelCache(model, "cpu", threads or None)
cache.get(sys.argv[5])
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6

before = rss_mb()
t = time.perf_counter()
prepared = prepare_file(src, dst, sidraw.ConvertOptions(ratio=100), models=cache)
denoised = peak_mb()  # decode, packing and tiled inference (sidraw's own buffers)
result = finish_file(prepared)  # LibRaw's render (in bands for Bayer), encoding and writing
seconds = time.perf_counter() - t
print(json.dumps({"before_mb": before, "denoise_peak_mb": denoised, "peak_mb": peak_mb(),
                  "seconds": seconds, "timings": result.timings}))
"""


def size_for(mp: float) -> tuple[int, int]:
    """A 3:2 frame of about ``mp`` megapixels, both sides multiples of 16."""
    width = math.sqrt(mp * 1e6 * 1.5)
    w = max(64, round(width / 16) * 16)
    h = max(64, round(width / 1.5 / 16) * 16)
    return w, h


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _model(folder: Path, width: int) -> str:
    """'' for the bundled models, else the folder of a random-weight test model."""
    if any((REPO / "weights").glob("*.json")):
        return ""
    sys.path.insert(0, str(REPO / "tests"))
    from unet_onnx import write_model

    for cfa in ("bayer", "xtrans"):
        write_model(folder, cfa, width=width)
    return str(folder)


def measure(
    mp: float, folder: Path, model: str, threads: int, pattern: str = "RGGB"
) -> dict[str, float]:
    w, h = size_for(mp)
    if pattern == "xtrans":  # whole 6x6 blocks
        w, h = w // 48 * 48, h // 48 * 48
    src, dst = folder / f"scene_{mp:g}mp.dng", folder / f"scene_{mp:g}mp.tif"
    subprocess.run(
        [sys.executable, "-c", _WRITE, str(src), str(w), str(h), pattern], check=True, env=_env()
    )
    kind = "xtrans" if pattern == "xtrans" else "bayer"
    proc = subprocess.run(
        [sys.executable, "-c", _CONVERT, str(src), str(dst), model, str(threads), kind],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"conversion of {w}x{h} failed:\n{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    src.unlink()
    dst.unlink()
    return {"mp": w * h / 1e6, "width": w, "height": h, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mp", type=float, action="append", help="megapixels (repeatable)")
    parser.add_argument("--width", type=int, default=24, help="test model width (no weights/)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: default)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--pattern", default="RGGB", help="CFA: a 2x2 Bayer pattern or xtrans")
    args = parser.parse_args()
    sizes = args.mp or [12.0, 48.0]
    with tempfile.TemporaryDirectory(prefix="sidraw-mem-") as tmp:
        folder = Path(tmp)
        model = _model(folder / "model", args.width)
        if not args.json:
            print(f"model: {model or 'bundled'}")
            print(
                f"{'MP':>6} {'size':>11} {'before MB':>10} {'denoise MB':>11} {'peak MB':>9} "
                f"{'added MB':>9} {'B/photosite':>12} {'seconds':>8}"
            )
        for mp in sizes:
            r = measure(mp, folder, model, args.threads, args.pattern)
            added = r["peak_mb"] - r["before_mb"]
            if args.json:
                print(json.dumps(r))
                continue
            print(
                f"{r['mp']:6.1f} {r['width']:>5}x{r['height']:<5} {r['before_mb']:10.0f} "
                f"{r['denoise_peak_mb']:11.0f} {r['peak_mb']:9.0f} {added:9.0f} "
                f"{added / r['mp']:12.1f} "
                f"{r['seconds']:8.1f}"
            )


if __name__ == "__main__":
    main()
