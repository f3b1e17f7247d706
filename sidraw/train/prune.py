"""Narrow the first (full-resolution) level of a trained U-Net, to warm-start a faster network.

The full-resolution level costs more per multiply-add than any other: onnxruntime's CPU
convolutions work on blocks of 16 channels (AVX-512), so a width of 24 is computed as 32 there.
Cutting it to 16 keeps the rest of the network as trained and makes the whole network about a
quarter faster (measured on 512x512 packed tiles, 2 threads).

The level holds five independent sets of channels: the two outputs of the encoder block (the
second one is also the skip connection), the transposed convolution's output, and the two outputs
of the decoder block. Each keeps the channels that carry the most: mean absolute activation over
training batches times the norm of the weights that read it. What a dropped channel contributed
on average is folded into the bias of the layer that read it, so the narrowed network starts near
the wide one; fine-tuning (:mod:`sidraw.train.loop` with ``--init``) does the rest.

Example::

    python -m sidraw.train.prune --init weights/sidraw-bayer.onnx --first-width 16 \\
        --out runs/narrow16/init.pt
    python -m sidraw.train.loop --cfa bayer --width 24 --first-width 16 --residual --noise-map \\
        --init runs/narrow16/init.pt --loss psnr --lr 1e-4 --minutes 100 --out runs/narrow16
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .unet import UNet


@dataclass
class ChannelStats:
    """Per-channel activation statistics of one set: mean and mean absolute value, (width,)."""

    mean: torch.Tensor
    mean_abs: torch.Tensor


# The first level's channel sets and the module whose output is each one.
SETS = ("enc_mid", "enc_out", "up_out", "dec_mid", "dec_out")


def _producers(model: UNet) -> dict[str, nn.Module]:
    enc, dec = model.enc[0], model.dec[-1]
    return {
        "enc_mid": enc[1], "enc_out": enc[3], "up_out": model.up[-1],
        "dec_mid": dec[1], "dec_out": dec[3],
    }


def _check_conv(model: UNet) -> None:
    if model.config.block != "conv":
        raise ValueError("only the 'conv' block can be narrowed")


def activation_stats(
    model: UNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, ChannelStats]:
    """Mean and mean absolute activation of every first-level channel set over ``batches``
    of ``(x, noise)`` (NCHW float32, (N, 2))."""
    _check_conv(model)
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in SETS}
    handles = []
    for name, module in _producers(model).items():
        def hook(_m: nn.Module, _i: object, out: torch.Tensor, name: str = name) -> None:
            sums[name].append(torch.stack([out.mean(dim=(0, 2, 3)), out.abs().mean(dim=(0, 2, 3))]))
        handles.append(module.register_forward_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            for x, noise in batches:
                model(x, noise)  # a network without a noise input ignores it
    finally:
        for h in handles:
            h.remove()
    if not sums["enc_mid"]:
        raise ValueError("no batches to measure the activations on")
    out = {}
    for name, parts in sums.items():
        m = torch.stack(parts).mean(dim=0)
        out[name] = ChannelStats(mean=m[0], mean_abs=m[1])
    return out


def _readers(model: UNet) -> dict[str, list[torch.Tensor]]:
    """For each set, the weights that read it, channels on axis 1 (conv layout)."""
    w0 = model.config.widths[0]
    dec_in = model.dec[-1][0].weight  # input: cat([up_out, enc_out])
    return {
        "enc_mid": [model.enc[0][2].weight],
        "enc_out": [model.enc[1][0].weight, dec_in[:, w0:]],
        "up_out": [dec_in[:, :w0]],
        "dec_mid": [model.dec[-1][2].weight],
        "dec_out": [model.head.weight],
    }


def channel_scores(model: UNet, stats: dict[str, ChannelStats]) -> dict[str, torch.Tensor]:
    """Importance of every channel of every set: mean |activation| x norm of its readers."""
    scores = {}
    for name, weights in _readers(model).items():
        norm2 = sum(w.detach().pow(2).sum(dim=(0, 2, 3)) for w in weights)
        scores[name] = stats[name].mean_abs * torch.sqrt(norm2)
    return scores


def keep_indices(scores: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The ``width`` best channels of every set, in their original order."""
    return {k: torch.sort(torch.topk(s, width).indices).values for k, s in scores.items()}


def _fold(weight: torch.Tensor, drop: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What the dropped input channels add on average to each output (conv weight layout)."""
    return (weight[:, drop].sum(dim=(2, 3)) * mean[drop]).sum(dim=1)


def _cut(
    src: dict[str, torch.Tensor], layer: str, rows: torch.Tensor | None,
    cols: torch.Tensor | None, dropped: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One conv layer's weight and bias, its output channels cut to ``rows`` and its input
    channels to ``cols`` (None: all); the mean of the ``dropped`` inputs goes into the bias."""
    weight, bias = src[f"{layer}.weight"], src[f"{layer}.bias"]
    if dropped is not None and mean is not None:
        bias = bias + _fold(weight, dropped, mean)
    if cols is not None:
        weight = weight[:, cols]
    if rows is not None:
        weight, bias = weight[rows], bias[rows]
    return {f"{layer}.weight": weight, f"{layer}.bias": bias}


def narrow(
    wide: UNet, stats: dict[str, ChannelStats], width: int
) -> tuple[UNet, dict[str, torch.Tensor]]:
    """A copy of ``wide`` with ``width`` channels at the first level; returns it and the kept
    channel indices of each set."""
    _check_conv(wide)
    w0 = wide.config.widths[0]
    if not 0 < width <= w0:
        raise ValueError(f"first width {width} must be 1..{w0}")
    k = keep_indices(channel_scores(wide, stats), width)
    d = {name: torch.tensor(sorted(set(range(w0)) - set(v.tolist())), dtype=torch.long)
         for name, v in k.items()}
    m = {name: s.mean for name, s in stats.items()}
    src = {name: v.detach().clone() for name, v in wide.state_dict().items()}
    dec = f"dec.{len(wide.dec) - 1}"
    up = f"up.{len(wide.up) - 1}"
    dst = dict(src)
    dst |= _cut(src, "enc.0.0", k["enc_mid"], None)
    dst |= _cut(src, "enc.0.2", k["enc_out"], k["enc_mid"], d["enc_mid"], m["enc_mid"])
    dst |= _cut(src, "enc.1.0", None, k["enc_out"], d["enc_out"], m["enc_out"])
    # The transposed convolution's weight is (in, out, 2, 2): its outputs are on axis 1.
    dst[f"{up}.weight"] = src[f"{up}.weight"][:, k["up_out"]]
    dst[f"{up}.bias"] = src[f"{up}.bias"][k["up_out"]]
    # The decoder reads cat([up_out, enc_out]).
    dst |= _cut(src, f"{dec}.0", k["dec_mid"], torch.cat([k["up_out"], w0 + k["enc_out"]]),
                torch.cat([d["up_out"], w0 + d["enc_out"]]), torch.cat([m["up_out"], m["enc_out"]]))
    dst |= _cut(src, f"{dec}.2", k["dec_out"], k["dec_mid"], d["dec_mid"], m["dec_mid"])
    dst |= _cut(src, "head", None, k["dec_out"], d["dec_out"], m["dec_out"])
    small = UNet(replace(wide.config, first_width=width))
    small.load_state_dict(dst)
    return small, k


def main(argv: list[str] | None = None) -> None:
    from . import data as data_mod
    from .loop import TrainConfig, batches, save_checkpoint, with_shape_of_file
    from .onnx_io import load_checkpoint_weights, load_onnx_weights

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--init", required=True, help="the trained wide network (ONNX or .pt)")
    ap.add_argument("--cfa", default="bayer", choices=["bayer", "xtrans"])
    ap.add_argument("--width", type=int, default=24,
                    help="the wide network's --width (an ONNX file without a card beside it)")
    ap.add_argument("--max-mult", type=int, default=8)
    ap.add_argument("--first-width", type=int, default=16)
    ap.add_argument("--batches", type=int, default=16, help="training batches to measure on")
    ap.add_argument("--patch", type=int, default=128, help="packed patch edge of those batches")
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--out", required=True, help="checkpoint to write (for loop --init)")
    a = ap.parse_args(argv)
    cfg = TrainConfig(cfa=a.cfa, width=a.width, max_mult=a.max_mult, residual=True,
                      noise_map=True, workers=0, seed=a.seed, patch=a.patch)
    cfg = with_shape_of_file(cfg, a.init)
    wide = UNet(cfg.unet())
    load = load_checkpoint_weights if a.init.endswith(".pt") else load_onnx_weights
    _, skipped = load(wide, a.init)
    if skipped:
        raise SystemExit(f"{a.init}: does not match the network ({skipped})")
    root = data_mod.data_root(a.data)
    train_e, _ = data_mod.split(data_mod.manifest(root))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    photos = data_mod.load_photos(root, train_e, cache=out.parent / "train_photos.pkl")
    stream = batches(photos, cfg, a.seed)
    data = [(x, n) for (x, _y, n), _ in zip(stream, range(a.batches), strict=False)]
    small, keep = narrow(wide, activation_stats(wide, data), a.first_width)
    narrow_cfg = replace(cfg, first_width=a.first_width)
    save_checkpoint(out, {"config": asdict(narrow_cfg), "model": small.state_dict(),
                          "kept": {k: v.tolist() for k, v in keep.items()}, "from": a.init})
    print(f"{out}: first level {wide.config.widths[0]} -> {a.first_width} channels")


if __name__ == "__main__":
    main()
