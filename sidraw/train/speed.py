"""CPU speed of U-Net widths: training step (bf16 autocast) and ONNX inference per megapixel.

``python -m sidraw.train.speed --widths 16 24 32`` prints one JSON line per width; the numbers go
into the model card's ``architecture`` section. ``--noise-map``, ``--residual`` and
``--first-width`` give the shipped shapes.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch

from .unet import UNet, UNetConfig, count_params, gflops_per_megapixel


def train_step_seconds(
    config: UNetConfig, batch: int, patch: int, steps: int = 3, channels_last: bool = True
) -> float:
    """Seconds of one Adam step on (batch, C, patch, patch) packed inputs under bf16 autocast."""
    model = UNet(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, config.channels, patch, patch).to(memory_format=fmt)
    y = torch.rand_like(x)
    inputs = _inputs(config, x)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (model(*inputs).float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _inputs(config: UNetConfig, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The network's inputs for a batch ``x``: with a noise vector when it takes one."""
    if config.noise_map:
        return x, torch.full((x.shape[0], 2), 1e-3)
    return (x,)


def onnx_seconds_per_megapixel(config: UNetConfig, block: int, size: int = 512) -> float:
    """Seconds of onnxruntime (CPU, default threads) per megapixel of mosaic, fp32."""
    import onnxruntime as ort

    model = UNet(config).eval()
    x = torch.rand(1, config.channels, size, size)
    inputs = _inputs(config, x)
    names = ["input", "noise"][: len(inputs)]
    buf = io.BytesIO()
    torch.onnx.export(
        model, inputs, buf, input_names=names, output_names=["output"], opset_version=17,
        dynamo=False,
    )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    sess.run(None, feed)
    t0 = time.perf_counter()
    reps = 2
    for _ in range(reps):
        sess.run(None, feed)
    sec = (time.perf_counter() - t0) / reps
    megapixels = (size * block) ** 2 / 1e6
    return sec / megapixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    ap.add_argument("--max-mult", type=int, default=16, help="deepest width multiplier cap")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--first-width", type=int, default=0, help="full-resolution level (0: width)")
    ap.add_argument("--noise-map", action="store_true")
    ap.add_argument("--residual", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128, help="packed patch edge")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    block = 2 if args.channels == 4 else 3
    for w in args.widths:
        cfg = UNetConfig(
            channels=args.channels, width=w, max_mult=args.max_mult, residual=args.residual,
            noise_map=args.noise_map, first_width=args.first_width,
        )
        step = train_step_seconds(cfg, args.batch, args.patch)
        mp = args.batch * (args.patch * block) ** 2 / 1e6
        row = {
            "cfa": "bayer" if args.channels == 4 else "xtrans",
            "width": w,
            **({"first_width": args.first_width} if args.first_width else {}),
            "max_mult": args.max_mult,
            "params": count_params(UNet(cfg)),
            "gflops_per_mp": round(gflops_per_megapixel(cfg, block), 1),
            "train_step_s": round(step, 3),
            "train_s_per_mp": round(step / mp, 3),
        }
        if not args.no_onnx:
            row["onnx_s_per_mp"] = round(onnx_seconds_per_megapixel(cfg, block), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
