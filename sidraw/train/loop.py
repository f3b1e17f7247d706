"""Training loop: AdamW on synthetic pairs, bf16 autocast on CPU, atomic resumable checkpoints.

Recipe: linear warm-up then cosine decay of the learning rate, AdamW, gradient clipping, an
exponential moving average of the weights (what is validated and exported), L1 loss (``--loss l2``
for a final phase; ``psnr`` or ``log-l1`` weigh each patch by its own error; ``--teacher T
--distill W`` adds W times the distance to a trained network's output), pairs made in
worker processes (``--workers``) so the training thread only trains. Example (a
noise-conditioned residual Bayer model)::

    python -m sidraw.train.loop --cfa bayer --width 24 --residual --noise-map --patch 128 \\
        --batch 8 --minutes 120 --out runs/bayer-nm

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
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
    noise_map: bool = False
    block: str = "conv"
    first_width: int = 0
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
    weight_decay: float = 1e-4
    clip: float = 1.0
    ema: float = 0.999
    loss: str = "l1"
    teacher: str | None = None
    distill: float = 0.0
    workers: int = 1
    patch_history: list[list[int]] = field(default_factory=list)

    def unet(self) -> UNetConfig:
        return UNetConfig(
            channels=CFA_CHANNELS[self.cfa], width=self.width, max_mult=self.max_mult,
            residual=self.residual, noise_map=self.noise_map, block=self.block,
            first_width=self.first_width,
        )


def with_shape_of(cfg: TrainConfig, architecture: dict[str, object]) -> TrainConfig:
    """``cfg`` with the network shape of a model card's ``architecture`` entry (width, first
    width, width cap, residual output, noise input), so that a warm start loads every tensor."""
    return replace(
        cfg,
        width=int(architecture.get("width", cfg.width)),  # type: ignore[arg-type]
        first_width=int(architecture.get("first_width", 0)),  # type: ignore[arg-type]
        max_mult=int(architecture.get("max_mult", cfg.max_mult)),  # type: ignore[arg-type]
        residual=bool(architecture.get("residual", False)),
        noise_map=bool(architecture.get("noise_map", False)),
        block=str(architecture.get("block", "conv")),
    )


def with_shape_of_file(cfg: TrainConfig, path: str | Path) -> TrainConfig:
    """``cfg`` in the network shape of a trained network's file: a checkpoint's own config, or
    the model card beside an ONNX file (``cfg`` as it is without one)."""
    path = Path(path)
    if path.suffix == ".pt":
        stored = TrainConfig(**load_checkpoint(path)["config"])  # type: ignore[arg-type]
        return replace(cfg, **{k: getattr(stored, k) for k in SHAPE_FIELDS})
    card = path.with_suffix(".json")
    if card.is_file():
        return with_shape_of(cfg, json.loads(card.read_text()).get("architecture", {}))
    return cfg


#: The TrainConfig fields that make the network's shape (a checkpoint's own; resumes keep them).
SHAPE_FIELDS = ("width", "first_width", "max_mult", "residual", "noise_map", "block")


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


VAL_RATIOS = (100.0, 300.0, 1.0, 250.0)


def validation_batch(
    photos: list[data_mod.Photo], cfa: str, packed: int, count: int = 8, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed, seeded (noisy, clean, noise) batch from validation photos: NCHW, NCHW, (N, 2).

    Centre crops, ratios cycling through VAL_RATIOS, A7S2 noise drawn from its own generator so
    the batch does not change when the training noise mix does; the noise input is the estimate
    from each noisy crop, as at convert time."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 1)
    size = mosaic_size(packed, cfa)
    xs, ys, ns = [], [], []
    usable = [p for p in photos if min(p.pixels.shape[:2]) >= size]
    for i in range(count):
        px = usable[i % len(usable)].pixels
        y0 = (px.shape[0] - size) // 2
        x0 = (px.shape[1] - size) // 2
        crop = px[y0 : y0 + size, x0 : x0 + size].astype(np.float32) / 255
        noise = sample_params(noise_rng, "a7s2")
        ratio = VAL_RATIOS[i % len(VAL_RATIOS)]
        pair = make_pair(crop, cfa, rng, ratio=ratio, noise=noise, exposure=1.0)
        sl = (slice(1, 1 + packed), slice(1, 1 + packed))
        xs.append(pair.noisy[sl].transpose(2, 0, 1))
        ys.append(pair.clean[sl].transpose(2, 0, 1))
        ns.append(pair.noise_vector())
    return np.stack(xs), np.stack(ys), np.stack(ns)


class PairStream(torch.utils.data.IterableDataset):
    """Endless training batches ``(x, y, noise)`` as numpy arrays, made from the photos.

    Run in DataLoader worker processes, each with its own seed, so that unprocessing and noise
    synthesis never take the training thread's time.
    """

    def __init__(self, photos: list[data_mod.Photo], cfg: TrainConfig, seed: int) -> None:
        self.photos, self.cfg, self.seed = photos, cfg, seed

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        seed = self.seed + (info.id * 1_000_003 if info is not None else 0)
        torch.set_num_threads(1)
        sampler = data_mod.PatchSampler(self.photos, seed=seed)
        rng = np.random.default_rng(seed + 7919)
        size = mosaic_size(self.cfg.patch, self.cfg.cfa)
        while True:
            pairs = [
                training_pair(self._crop(sampler, size, rng), self.cfg.cfa, self.cfg.patch, rng)
                for _ in range(self.cfg.batch)
            ]
            xs, ys, ns = zip(*pairs, strict=True)
            yield np.stack(xs), np.stack(ys), np.stack(ns)


    @staticmethod
    def _crop(
        sampler: data_mod.PatchSampler, size: int, rng: np.random.Generator
    ) -> np.ndarray:
        """A photo crop, or with DEAD_LEAVES_PROBABILITY a dead-leaves image of flat colours,
        or with GRATING_PROBABILITY a fine periodic pattern."""
        u = rng.random()
        if u < data_mod.DEAD_LEAVES_PROBABILITY:
            return data_mod.dead_leaves(size, rng)
        if u < data_mod.DEAD_LEAVES_PROBABILITY + data_mod.GRATING_PROBABILITY:
            return data_mod.fine_grating(size, rng)
        return sampler.crop(size)


def batches(
    photos: list[data_mod.Photo], cfg: TrainConfig, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Training batches as tensors, from ``cfg.workers`` processes (0: made in this one)."""
    stream = PairStream(photos, cfg, seed)
    if cfg.workers <= 0:
        for x, y, n in stream:
            yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(n)
        return
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
        persistent_workers=True,
    )
    for x, y, n in loader:
        yield x, y, n


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of tensors in 0..1 (``a`` is clipped first)."""
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


LOSSES = ("l1", "l2", "psnr", "log-l1")
# Floors under a patch's error in the log losses: far below any patch's real error (an 8-bit
# step is 1.5e-5 in MSE), only there so that a perfect patch stays finite.
_MSE_FLOOR = 1e-10
_L1_FLOOR = 1e-6


def batch_loss(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of a batch of ``(N, C, h, w)`` predictions against the clean patches ``y``.

    ``l1`` and ``l2`` average over every pixel, so the noisiest patches, whose errors are
    largest, dominate the gradient. ``psnr`` (the mean over patches of ``10 log10(MSE)``, minus
    each patch's PSNR) and ``log-l1`` (the mean of ``log L1``) weigh each patch by the inverse of
    its own error: a patch halving its error gains as much as any other, whatever its noise,
    which is what a validation averaging PSNR over noise levels rewards.
    """
    err = pred - y
    if kind == "l1":
        return torch.mean(torch.abs(err))
    if kind == "l2":
        return torch.mean(err**2)
    if kind == "psnr":
        mse = torch.mean(err**2, dim=(1, 2, 3))
        return torch.mean(10.0 * torch.log10(mse + _MSE_FLOOR))
    if kind == "log-l1":
        return torch.mean(torch.log(torch.mean(torch.abs(err), dim=(1, 2, 3)) + _L1_FLOOR))
    raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")


def distill_loss(pred: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Distance of a batch of predictions to a teacher network's ``(N, C, h, w)``, in dB.

    Per patch ``10 / ln 10 x MSE(pred, teacher) / MSE(teacher, clean)`` (all clipped to 0..1, as
    at inference), averaged: to first order the PSNR a patch loses by differing from the teacher,
    so it weighs patches as the ``psnr`` loss does, whatever their noise.
    """
    t = teacher.clamp(0, 1)
    err = torch.mean((pred.clamp(0, 1) - t) ** 2, dim=(1, 2, 3))
    ref = torch.mean((t - y) ** 2, dim=(1, 2, 3))
    return torch.mean(err / (ref + _MSE_FLOOR)) * (10 / math.log(10))


def load_teacher(cfg: TrainConfig) -> UNet:
    """The network of ``cfg.teacher`` (a checkpoint, or an ONNX file) in its own shape
    (:func:`with_shape_of_file`), frozen, for :func:`distill_loss`."""
    from .onnx_io import load_checkpoint_weights, load_onnx_weights

    if not cfg.teacher:
        raise ValueError("--distill needs --teacher")
    teacher = UNet(with_shape_of_file(cfg, cfg.teacher).unet())
    load = load_checkpoint_weights if cfg.teacher.endswith(".pt") else load_onnx_weights
    _, skipped = load(teacher, cfg.teacher)
    if skipped:
        raise ValueError(f"{cfg.teacher}: the teacher's shape does not fit its weights ({skipped})")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * weights`` for every floating tensor of ``model``."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                ema[k].copy_(v)


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
            cfg.cfa = stored.cfa
            for k in SHAPE_FIELDS:
                setattr(cfg, k, getattr(stored, k))
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
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if ckpt is not None:
            self.opt.load_state_dict(ckpt["optimizer"])  # type: ignore[arg-type]
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if ckpt is not None and "ema" in ckpt:
            self.ema = {k: v.clone() for k, v in ckpt["ema"].items()}  # type: ignore[union-attr]
        if not cfg.patch_history or cfg.patch_history[-1][1] != cfg.patch:
            cfg.patch_history.append([self.step, cfg.patch])
        self.teacher = load_teacher(cfg).to(self.device) if cfg.distill > 0 else None

    def forward(
        self, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The network on a batch, with the noise input when it takes one."""
        if self.cfg.noise_map:
            return model(x, noise)
        return model(x)

    def loss(self, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch against the clean patch ``y`` (:func:`batch_loss`; a
        subclass may distil from a teacher instead, as :mod:`sidraw.train.qat` does)."""
        return batch_loss(pred, y, self.cfg.loss)

    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)

    def payload(self) -> dict[str, object]:
        model = self.model
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {
            "config": asdict(self.cfg),
            "model": state,
            "ema": {k: v.detach().cpu().clone() for k, v in self.ema.items()},
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
        val = [torch.from_numpy(a).to(self.device)
               for a in validation_batch(val_photos, cfg.cfa, min(cfg.patch, 128))]
        stream = batches(photos, cfg, cfg.seed + 7919 * self.step)
        last_ckpt = time.perf_counter()
        run_start = time.perf_counter() - self.elapsed
        losses: list[float] = []
        while self.step < cfg.steps:
            self.elapsed = time.perf_counter() - run_start
            if cfg.minutes > 0 and self.elapsed >= cfg.minutes * 60:
                break
            lr = lr_at(cfg, self.step, self.elapsed)
            for g in self.opt.param_groups:
                g["lr"] = lr
            x, y, noise = (t.to(self.device) for t in next(stream))
            losses.append(self.train_step(x, y, noise))
            self.step += 1
            if self.step % 100 == 0:
                self.log(f"step {self.step} loss {np.mean(losses):.5f} lr {lr:.2e} "
                         f"elapsed {self.elapsed / 60:.1f} min")
                losses.clear()
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_minutes * 60:
                self.checkpoint(*val)
                last_ckpt = time.perf_counter()
        self.elapsed = time.perf_counter() - run_start
        self.checkpoint(*val)
        self.log("done")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> float:
        """One optimiser step on a batch; returns its loss."""
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            pred = self.forward(self.model, x, noise)
        loss = self.loss(pred.float(), x, y)
        if self.teacher is not None:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
                t = self.teacher(x, noise).float()  # a network without a noise input ignores it
            loss = loss + self.cfg.distill * distill_loss(pred.float(), t, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.opt.step()
        if self.cfg.ema > 0:
            ema_update(self.ema, self.model, self.cfg.ema)
        return float(loss.item())

    def ema_model(self) -> torch.nn.Module:
        """A copy of the network with the averaged weights (what is validated and exported)."""
        model = UNet(self.cfg.unet()).to(self.device)
        model.load_state_dict(self.ema if self.cfg.ema > 0 else self.model.state_dict())
        return model.eval()

    def checkpoint(self, vx: torch.Tensor, vy: torch.Tensor, vn: torch.Tensor) -> None:
        model = self.ema_model() if isinstance(self.model, UNet) else self.model
        model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            pred = self.forward(model, vx, vn).float()
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
    ap.add_argument("--first-width", type=int, default=d.first_width,
                    help="channels of the full-resolution level (0: --width)")
    ap.add_argument("--max-mult", type=int, default=d.max_mult,
                    help="cap on the width multiplier of the deepest levels (SID: 16)")
    ap.add_argument("--residual", action="store_true", help="add the input to the output")
    ap.add_argument("--block", choices=["conv", "dwsep"], default=d.block,
                    help="level block: SID's 3x3 convolutions or PMRID's depthwise-separable")
    ap.add_argument("--noise-map", action="store_true",
                    help="condition on the estimated noise (second input)")
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--clip", type=float, default=d.clip, help="gradient norm clip (0: off)")
    ap.add_argument("--ema", type=float, default=d.ema, help="weight averaging decay (0: off)")
    ap.add_argument("--loss", choices=LOSSES, default=d.loss,
                    help="l1, l2, or per patch: psnr (minus its PSNR) or log-l1 (log of its L1)")
    ap.add_argument("--teacher", default=None,
                    help="a trained network (ONNX with its card, or checkpoint.pt) to distil from")
    ap.add_argument("--distill", type=float, default=d.distill,
                    help="weight of the distance to --teacher's output (dB per patch, 0: off)")
    ap.add_argument("--workers", type=int, default=d.workers,
                    help="processes that make training pairs (0: the training process)")
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
        zero_head=a.zero_head, noise_map=a.noise_map, block=a.block, weight_decay=a.weight_decay,
        clip=a.clip, ema=a.ema, loss=a.loss, workers=a.workers, first_width=a.first_width,
        teacher=a.teacher, distill=a.distill,
    )
    return cfg, Path(a.out), bool(a.resume)


def main(argv: list[str] | None = None) -> None:
    cfg, out, resume = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, out, resume=resume).run()


if __name__ == "__main__":
    main()
