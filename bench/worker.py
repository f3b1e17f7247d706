"""The child side of the benchmark: each subcommand runs in a fresh process started by run.py and
prints one JSON line with what it measured.

    python bench/worker.py stages  --src F.dng --dst F.tif --cfa bayer [--model M] [--threads N]
    python bench/worker.py network --src F.dng --cfa bayer [--model M] [--threads N] [--tile N]
    python bench/worker.py conv    [--threads N] [--size 512] [--channels 64] [--reps 5]
                                   [--precision fp32|int8|fp16] [--device cpu|cuda]
    python bench/worker.py rawpy   --src F.dng --dst F.tif

run.py puts the checkout first on PYTHONPATH, so these measure the working tree's sidraw.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``) in MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds: where in the pipeline the peak is."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter(), _status_mb("VmRSS")))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self, start: float = -math.inf, end: float = math.inf) -> float | None:
        values = [rss for t, rss in self.samples if start <= t <= end]
        return max(values) if values else None


def cmd_stages(args: argparse.Namespace) -> None:
    """``sidraw.convert_file`` in process: total seconds, the per-stage timings, and the peak RSS
    up to the end of inference and after it (unpack, render, write)."""
    import sidraw
    from sidraw.model import ModelCache

    tiles = [0]
    last_tile = [math.inf]

    def progress(done: int, total: int) -> None:
        tiles[0] = total
        if done == total:
            last_tile[0] = time.perf_counter()

    cache = ModelCache(args.model or None, args.device, args.threads, args.precision)
    options = sidraw.ConvertOptions(
        ratio=args.ratio, tile=args.tile or None, tiling=args.tiling, overwrite=True
    )
    sampler = RssSampler()
    sampler.start()
    result = sidraw.convert_file(args.src, args.dst, options, models=cache, progress=progress)
    sampler.stop()
    network = cache.get(args.cfa)  # the network convert_file loaded
    _emit(
        {
            "seconds": result.seconds,
            "timings": result.timings,
            "tiles": tiles[0],
            "tiling": args.tiling,
            "overlap": network.card.overlap,
            "threads": network.threads,
            "precision": network.precision,
            "providers": list(network.providers),
            "rss_mb": {
                "through_inference": sampler.peak(end=last_tile[0]),
                "after_inference": sampler.peak(start=last_tile[0]),
                "hwm": _status_mb("VmHWM"),
            },
        }
    )


def _amplified_frame(args: argparse.Namespace, card: Any) -> tuple[np.ndarray, np.ndarray]:
    """The frame read, packed, normalised, amplified and clipped as sidraw's denoise() does:
    ((h, w, C) float32, (1, 2) float32 noise vector, as convert tells noise-conditioned models)."""
    from sidraw.exposure import amplify
    from sidraw.mosaic import normalise_packed, pack
    from sidraw.noise_estimate import noise_vector
    from sidraw.pipeline import estimate_file_noise
    from sidraw.raw import open_raw

    with open_raw(args.src) as raw:
        info = raw.info
        photosites = pack(raw.mosaic, info.layout)
        noise = noise_vector(estimate_file_noise(raw).estimate, args.ratio)
        packed = normalise_packed(photosites, info.layout, info.black, info.white)
    x = amplify(packed, args.ratio, out=packed)
    np.clip(x, *card.input_clip, out=x)
    return x, noise


def cmd_network(args: argparse.Namespace) -> None:
    """The network alone on the frame cut into a grid of non-overlapping tiles.

    The frame is read, packed and amplified like sidraw does (not timed), reflect-padded up to
    a whole number of tiles, and cut into ``tile`` x ``tile`` NCHW batches. One tile is run
    first to warm onnxruntime up (its arena, its kernels' packed weights); then all tiles are
    timed back to back.
    """
    from sidraw.model import Network, card_for

    card = card_for(args.cfa, args.model or None)
    network = Network(card, args.device, args.threads, args.precision)
    x, noise = _amplified_frame(args, card)
    h, w, c = x.shape
    t = args.tile or card.tile
    ny, nx = math.ceil(h / t), math.ceil(w / t)
    padded = np.pad(x, ((0, ny * t - h), (0, nx * t - w), (0, 0)), mode="reflect")
    batches = [
        np.ascontiguousarray(padded[y : y + t, x0 : x0 + t].transpose(2, 0, 1)[None])
        for y in range(0, ny * t, t)
        for x0 in range(0, nx * t, t)
    ]
    start = time.perf_counter()
    network(batches[0], noise=noise)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        network(batch, noise=noise)
    seconds = time.perf_counter() - start
    n = len(batches)
    _emit(
        {
            "seconds": seconds,
            "tiles": n,
            "grid": [ny, nx],
            "tile": t,
            "packed": [h, w, c],
            "per_tile_s": seconds / n,
            "first_tile_s": first,
            "area_fraction": h * w / (n * t * t),
            "threads": network.threads,
            "precision": network.precision,
            "providers": list(network.providers),
        }
    )


def cmd_staged_network(args: argparse.Namespace) -> None:
    """The network alone, staged as convert runs it (:mod:`sidraw.staged`): its three stages and
    what passes between them on the whole in-memory frame, held padded as convert holds it
    (:class:`sidraw.staged.PaddedInput`), after a warm-up on a 256 x 256 crop (sessions made,
    kernels' weights packed). For models whose card has a ``staged`` entry."""
    from sidraw.model import Network, card_for
    from sidraw.staged import PaddedInput, run_staged, run_staged_stream

    card = card_for(args.cfa, args.model or None)
    network = Network(card, args.device, args.threads, args.precision)
    x, noise = _amplified_frame(args, card)
    stages = network.stages(noise)
    if stages is None:
        raise SystemExit(f"{card.name} does not run staged")
    tile = args.tile or card.staged_tile or card.tile
    run_staged(np.ascontiguousarray(x[:256, :256]), stages, tile=tile, margin=0)
    held = PaddedInput.of_image(x, card.downsample)  # x is clipped already
    out = np.empty_like(x)

    def write(row0: int, rows: np.ndarray) -> None:
        out[row0 : row0 + rows.shape[0]] = rows

    start = time.perf_counter()
    run_staged_stream(
        x.shape[:2], held, stages, write, tile=tile, out_channels=x.shape[2],
        multiple=card.downsample, margin=0,
    )
    seconds = time.perf_counter() - start
    _emit(
        {
            "seconds": seconds,
            "tile": tile,
            "packed": list(x.shape),
            "held_mb": (stages.held_bytes + 4 * x.shape[2]) * x.shape[0] * x.shape[1] / 2**20,
            "threads": network.threads,
            "precision": network.precision,
            "providers": list(network.providers),
        }
    )


def _quantized(model_bytes: bytes, x: np.ndarray) -> bytes:
    """An INT8 QDQ copy of a model, made by :func:`sidraw.quantize.quantize_onnx`."""
    from sidraw.quantize import quantize_onnx

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "conv.onnx", Path(tmp) / "conv.int8.onnx"
        src.write_bytes(model_bytes)
        quantize_onnx(src, dst, [{"x": x}, {"x": -x}])
        return dst.read_bytes()


def cmd_conv(args: argparse.Namespace) -> None:
    """The device's convolution throughput: one 3x3 conv, same onnxruntime settings as sidraw
    (fp32; INT8 quantised like sidraw's int8 model variants; float16 like its fp16 ones, on a
    GPU)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sidraw.model import physical_cores, session_options

    threads = args.threads or physical_cores()
    c, s = args.channels, args.size
    rng = np.random.default_rng(0)
    weight = rng.normal(0, math.sqrt(2 / (9 * c)), (c, c, 3, 3)).astype(np.float32)
    bias = np.zeros(c, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, s, s])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.uniform(-1, 1, (1, c, s, s)).astype(np.float32)
    data = model.SerializeToString()
    if args.precision == "int8":
        data = _quantized(data, x)
    elif args.precision == "fp16":
        from sidraw.float16 import to_float16

        data = to_float16(data)
    session = ort.InferenceSession(
        data, sess_options=session_options(threads), providers=_providers(args.device)
    )
    session.run(["y"], {"x": x})
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        session.run(["y"], {"x": x})
        times.append(time.perf_counter() - start)
    flops = 2 * c * c * 9 * s * s
    _emit(
        {
            "precision": args.precision,
            "flops": flops,
            "seconds_min": min(times),
            "seconds": times,
            "gflops_per_s": flops / min(times) / 1e9,
            "threads": threads,
            "device": args.device,
            "channels": c,
            "size": s,
        }
    )


def _providers(device: str) -> list[str]:
    from sidraw.model import _providers as providers

    return providers("cuda" if device == "cuda" else "cpu")


def cmd_rawpy(args: argparse.Namespace) -> None:
    """The rawpy peer: decode + LibRaw postprocess + 16-bit TIFF write, no noise reduction.

    The LibRaw settings are sidraw's rendering ones (camera white balance, no auto brightening,
    sRGB curve, clipped highlights), written out here so the peer does not depend on sidraw.
    """
    import rawpy
    import tifffile

    params = rawpy.Params(
        use_camera_wb=True,
        use_auto_wb=False,
        no_auto_bright=True,
        output_bps=16,
        gamma=(2.4, 12.92),
        output_color=rawpy.ColorSpace.sRGB,
        highlight_mode=rawpy.HighlightMode.Clip,
    )
    start = time.perf_counter()
    with rawpy.imread(args.src) as raw:
        rgb = raw.postprocess(params)
    develop = time.perf_counter() - start
    tifffile.imwrite(args.dst, rgb, photometric="rgb")
    _emit({"seconds": time.perf_counter() - start, "develop_s": develop, "shape": list(rgb.shape)})


def _frame_args(p: argparse.ArgumentParser) -> None:
    """The options of the commands that run sidraw's network on a frame."""
    p.add_argument("--src", required=True)
    p.add_argument("--model", default="", help="model card, ONNX file or folder ('': bundled)")
    p.add_argument("--cfa", choices=["bayer", "xtrans"], required=True)
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--tile", type=int, default=0, help="packed pixels (0: the model card's)")
    p.add_argument("--threads", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "fp16"], default="auto")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stages")
    _frame_args(p)
    p.add_argument("--dst", required=True)
    p.add_argument("--tiling", choices=["auto", "staged", "tiles"], default="auto")
    p.set_defaults(fn=cmd_stages)
    p = sub.add_parser("staged-network")
    _frame_args(p)
    p.set_defaults(fn=cmd_staged_network)
    p = sub.add_parser("network")
    _frame_args(p)
    p.set_defaults(fn=cmd_network)
    p = sub.add_parser("conv")
    p.add_argument("--threads", type=int)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(fn=cmd_conv)
    p = sub.add_parser("rawpy")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.set_defaults(fn=cmd_rawpy)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
