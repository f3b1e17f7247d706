"""Training loop: Adam + L1 on synthetic pairs, bf16 autocast on CPU, atomic resumable checkpoints.

Example (the shipped Bayer model)::

    python -m sidraw.train.loop --cfa bayer --width 32 --patch 128 --batch 8 --minutes 85 \\
        --out runs/bayer

``--patch`` is the packed patch edge (128 packed = 256x256 Bayer photosites); it can be raised on
``--resume`` as the model converges. ``--init weights/<name>.onnx`` warm-starts from shipped
weights (tensors of other shapes, e.g. first/last layers across CFAs, stay random).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .noise import sample_params
from .pairs import make_pair, mosaic_size, training_pair
from .unet import UNet, UNetConfig, count_params

CFA_CHANNELS = {"bayer": 4, "xtrans": 9}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and the model card)."""

    cfa: str = "bayer"
    width: int = 24
    max_mult: int = 8
    residual: bool = False
    patch: int = 128
    batch: int = 8
    steps: int = 100_000
    minutes: float = 0.0
    lr: float = 3e-4
    lr_min: float = 1e-5
    warmup: int = 200
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    checkpoint_minutes: float = 5.0
    data: str | None = None
    init: str | None = None
    zero_head: bool = False
    patch_history: list[list[int]] = field(default_factory=list)

    def unet(self) -> UNetConfig:
        return UNetConfig(
            channels=CFA_CHANNELS[self.cfa], width=self.width, max_mult=self.max_mult,
            residual=self.residual,
        )


def lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over the run's progress.

    Progress is the larger of step / steps and elapsed / minutes, so a run limited by wall time
    still ends at ``lr_min``.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = step / max(cfg.steps, 1)
    if cfg.minutes > 0:
        progress = max(progress, elapsed / (cfg.minutes * 60))
    progress = min(progress, 1.0)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def save_checkpoint(path: Path, payload: dict[str, object]) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, object]:
    return torch.load(path, map_location="cpu", weights_only=False)


def validation_batch(
    photos: list[data_mod.Photo], cfa: str, packed: int, count: int = 8, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded (noisy, clean) NCHW batch from validation photos (centre crops, ratios
    alternating 100 / 300, A7S2 noise drawn from its own generator so the batch does not change
    when the training noise mix does)."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 1)
    size = mosaic_size(packed, cfa)
    xs, ys = [], []
    usable = [p for p in photos if min(p.pixels.shape[:2]) >= size]
    for i in range(count):
        px = usable[i % len(usable)].pixels
        y0 = (px.shape[0] - size) // 2
        x0 = (px.shape[1] - size) // 2
        crop = px[y0 : y0 + size, x0 : x0 + size].astype(np.float32) / 255
        noise = sample_params(noise_rng, "a7s2")
        ratio = 100.0 if i % 2 == 0 else 300.0
        pair = make_pair(crop, cfa, rng, ratio=ratio, noise=noise, exposure=1.0)
        sl = (slice(1, 1 + packed), slice(1, 1 + packed))
        xs.append(pair.noisy[sl].transpose(2, 0, 1))
        ys.append(pair.clean[sl].transpose(2, 0, 1))
    return np.stack(xs), np.stack(ys)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of tensors in 0..1 (``a`` is clipped first)."""
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class Trainer:
    """Holds model, optimiser, data and state of one run."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False) -> None:
        self.out = out
        self.ckpt_path = out / "checkpoint.pt"
        self.step = 0
        self.elapsed = 0.0
        if resume and self.ckpt_path.exists():
            ckpt = load_checkpoint(self.ckpt_path)
            stored = TrainConfig(**ckpt["config"])  # type: ignore[arg-type]
            # The network shape comes from the checkpoint; schedule, patch and batch from the
            # command line, so a resumed run can grow its patches.
            cfg.cfa, cfg.width, cfg.residual = stored.cfa, stored.width, stored.residual
            cfg.max_mult = stored.max_mult
            cfg.patch_history = stored.patch_history
            self.step = int(ckpt["step"])  # type: ignore[arg-type]
            self.elapsed = float(ckpt["elapsed"])  # type: ignore[arg-type]
        else:
            ckpt = None
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = UNet(cfg.unet())
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])  # type: ignore[arg-type]
        elif cfg.init:
            from .onnx_io import load_checkpoint_weights, load_onnx_weights

            load = load_checkpoint_weights if cfg.init.endswith(".pt") else load_onnx_weights
            loaded, skipped = load(self.model, cfg.init)
            self.log(f"init from {cfg.init}: {len(loaded)} tensors loaded, skipped {skipped}")
            if cfg.zero_head:
                # Switching a trained network to residual output: start from the identity
                # (the amplified input) and keep the learned features.
                with torch.no_grad():
                    self.model.head.weight.zero_()
                    self.model.head.bias.zero_()
        self.model.to(self.device)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        if ckpt is not None:
            self.opt.load_state_dict(ckpt["optimizer"])  # type: ignore[arg-type]
        if not cfg.patch_history or cfg.patch_history[-1][1] != cfg.patch:
            cfg.patch_history.append([self.step, cfg.patch])

    def loss(self, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch: L1 to the clean patch ``y`` (a subclass may distil from a
        teacher instead, as :mod:`sidraw.train.qat` does)."""
        return torch.mean(torch.abs(pred - y))

    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)

    def payload(self) -> dict[str, object]:
        model = self.model
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {
            "config": asdict(self.cfg),
            "model": state,
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
        }

    def run(self) -> None:
        cfg = self.cfg
        root = data_mod.data_root(cfg.data)
        train_e, val_e = data_mod.split(data_mod.manifest(root))
        t0 = time.perf_counter()
        photos = data_mod.load_photos(root, train_e, cache=self.out / "train_photos.pkl")
        val_photos = data_mod.load_photos(root, val_e)
        self.log(f"{len(photos)} train / {len(val_photos)} val photos in "
                 f"{time.perf_counter() - t0:.0f} s; params {count_params(self.model)}")
        sampler = data_mod.PatchSampler(photos, seed=cfg.seed + self.step)
        rng = np.random.default_rng(cfg.seed + 7919 * self.step)
        vx, vy = validation_batch(val_photos, cfg.cfa, min(cfg.patch, 128))
        vx_t = torch.from_numpy(vx).to(self.device)
        vy_t = torch.from_numpy(vy).to(self.device)
        size = mosaic_size(cfg.patch, cfg.cfa)
        last_ckpt = time.perf_counter()
        run_start = time.perf_counter() - self.elapsed
        losses: list[float] = []
        autocast_dtype = torch.bfloat16
        while self.step < cfg.steps:
            self.elapsed = time.perf_counter() - run_start
            if cfg.minutes > 0 and self.elapsed >= cfg.minutes * 60:
                break
            lr = lr_at(cfg, self.step, self.elapsed)
            for g in self.opt.param_groups:
                g["lr"] = lr
            pairs = [
                training_pair(sampler.crop(size), cfg.cfa, cfg.patch, rng)
                for _ in range(cfg.batch)
            ]
            xs, ys = zip(*pairs, strict=True)
            x = torch.from_numpy(np.stack(xs)).to(self.device)
            y = torch.from_numpy(np.stack(ys)).to(self.device)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=autocast_dtype):
                pred = self.model(x)
            loss = self.loss(pred.float(), x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
            self.step += 1
            if self.step % 100 == 0:
                self.log(f"step {self.step} loss {np.mean(losses):.5f} lr {lr:.2e} "
                         f"elapsed {self.elapsed / 60:.1f} min")
                losses.clear()
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_minutes * 60:
                self.checkpoint(vx_t, vy_t)
                last_ckpt = time.perf_counter()
        self.elapsed = time.perf_counter() - run_start
        self.checkpoint(vx_t, vy_t)
        self.log("done")

    def checkpoint(self, vx: torch.Tensor, vy: torch.Tensor) -> None:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            pred = self.model(vx).float()
        self.model.train()
        val = psnr(pred, vy)
        save_checkpoint(self.ckpt_path, self.payload())
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "elapsed_s": round(self.elapsed),
                                "val_raw_psnr": round(val, 3), "patch": self.cfg.patch}) + "\n")
        self.log(f"checkpoint step {self.step}: val raw PSNR {val:.2f} dB")


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, bool]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = TrainConfig()
    ap.add_argument("--cfa", choices=sorted(CFA_CHANNELS), default=d.cfa)
    ap.add_argument("--width", type=int, default=d.width, help="channels of the first level")
    ap.add_argument("--max-mult", type=int, default=d.max_mult,
                    help="cap on the width multiplier of the deepest levels (SID: 16)")
    ap.add_argument("--residual", action="store_true", help="add the input to the output")
    ap.add_argument("--patch", type=int, default=d.patch, help="packed patch edge (pixels)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--steps", type=int, default=d.steps, help="stop after this many steps")
    ap.add_argument("--minutes", type=float, default=d.minutes,
                    help="stop after this much training time in all (0 = no limit)")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--lr-min", type=float, default=d.lr_min)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=d.device, help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    ap.add_argument("--data", default=None, help="folder holding clean/ (default ../shared/data)")
    ap.add_argument(
        "--init", default=None, help="warm-start from an ONNX model or a checkpoint.pt"
    )
    ap.add_argument(
        "--zero-head", action="store_true", help="zero the output layer after --init"
    )
    ap.add_argument("--out", default="runs/bayer", help="run folder (checkpoint, log, history)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a = ap.parse_args(argv)
    cfg = TrainConfig(
        cfa=a.cfa, width=a.width, max_mult=a.max_mult, residual=a.residual, patch=a.patch,
        batch=a.batch,
        steps=a.steps, minutes=a.minutes, lr=a.lr, lr_min=a.lr_min, seed=a.seed, device=a.device,
        threads=a.threads, checkpoint_minutes=a.checkpoint_minutes, data=a.data, init=a.init,
        zero_head=a.zero_head,
    )
    return cfg, Path(a.out), bool(a.resume)


def main(argv: list[str] | None = None) -> None:
    cfg, out, resume = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, out, resume=resume).run()


if __name__ == "__main__":
    main()
