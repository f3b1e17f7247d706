"""Fine-tuning on real short/long pairs: the library behind ``sidraw train --pairs LIST``.

Starts from a shipped model (the bundled one by default, or ``--init``: an ONNX file with its card)
and trains on crops of real pairs (:mod:`sidraw.pairs`), in exactly the domain ``sidraw convert``
feeds the network: the short frame packed, normalised with its levels, times the pair's ratio,
clipped to -1..1; the target is the long frame packed and normalised, clipped to 0..1. A
noise-conditioned model is told the noise fit of the whole short frame
(:func:`sidraw.pipeline.estimate_file_noise`), as convert tells it.

* **Crops on demand, cached on disk.** Each raw file is decoded once, the first time a crop of it
  is needed, and its packed photosites are stored as a packed uint16 ``.npy`` file in the cache
  folder; crops are then read through a memory map. The data set is never in memory (SID's own
  code needs 64-128 GB of RAM).
* **Augmentation that keeps the CFA phase.** Random crops at any packed offset (even offsets on
  X-Trans, whose packed pixels come in 2 x 2 block types); on Bayer, random flips and
  transposes of the packed crop: each packed channel keeps its colour, so the result is a valid
  mosaic of the same CFA (as SID does). X-Trans crops are not flipped (a flip would reorder its
  block types).
* **Synthetic mix** (``--synthetic-mix 0.5``): that share of each batch is made from clean photos
  by the synthetic pipeline (:func:`sidraw.train.pairs.training_pair`), so the model does not
  forget other cameras.
* **Few-shot mode** (``--few-shot``): only the first and last layers and every bias are trained
  (about 3,000 of the 2.9 M parameters of the bundled Bayer network), for a handful of pairs.
* **Early stop on held-out pairs**: the L1 loss on fixed crops of held-out pairs (whole scenes kept
  out) is measured every ``eval_every`` steps; training stops after ``patience`` evaluations
  without improvement and the best weights are exported.

The result is a folder with ``<name>.onnx`` and its model card (``<name>.json`` + ``.md``) that
``sidraw convert --model DIR`` uses; the card names the pairs the model was tuned and checked on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibrate import CameraProfile, complete_iso, load_profile, profile_estimate
from ..calibrate import profile_noise_params as _profile_params
from ..model import ModelCard, card_for
from ..noise_estimate import NoiseEstimate, noise_vector
from ..pairs import RawPair
from .loop import CFA_CHANNELS, TrainConfig, Trainer, with_shape_of
from .pairs import INPUT_CLIP
from .unet import DOWNSAMPLE, UNet

#: Cache file format version (part of every cache key).
CACHE_VERSION = 1


class PairTrainingError(ValueError):
    """Fine-tuning cannot start (no pairs, wrong CFA, crops larger than the frames)."""


def _kind(cfa: str) -> str:
    return "bayer" if len(cfa) == 4 else "xtrans"


# --- the on-disk crop cache ----------------------------------------------------------------------


@dataclass(frozen=True)
class CachedFrame:
    """A raw file's packed photosites on disk.

    Attributes:
        path: the ``.npy`` file: (h, w, C) uint16 DN, black included.
        levels: (T, T, C) float32 black level of each block type and channel, DN.
        white: white level, DN.
        types: block types per axis (1 Bayer, 2 X-Trans).
    """

    path: Path
    levels: np.ndarray
    white: float
    types: int

    def array(self) -> np.ndarray:
        """The packed photosites as a read-only memory map ((h, w, C) uint16)."""
        return np.load(self.path, mmap_mode="r")

    def normalised(self, y0: int, x0: int, size: int) -> np.ndarray:
        """(size, size, C) float32 window at packed (y0, x0), 0 at black and 1 at white."""
        window = np.asarray(self.array()[y0 : y0 + size, x0 : x0 + size], dtype=np.float32)
        t = self.types
        for ti in range(t):
            for tj in range(t):
                lv = self.levels[(y0 + ti) % t, (x0 + tj) % t]
                view = window[ti::t, tj::t]
                view -= lv
                view *= 1.0 / (np.float32(self.white) - lv)
        return window


class FrameCache:
    """Packed uint16 copies of raw files in ``folder``, made the first time they are asked for.

    A file is keyed by its path, size and modification time, so an edited file is decoded again.
    The short frame's noise fit (for noise-conditioned models) is stored beside it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> str:
        st = path.stat()
        text = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def frame(self, path: Path) -> tuple[CachedFrame, NoiseEstimate]:
        """The cached packed frame of a raw file and its noise fit (normalised units)."""
        key = self._key(path)
        npy, meta = self.folder / f"{key}.npy", self.folder / f"{key}.json"
        if not (npy.exists() and meta.exists()):
            self._store(path, npy, meta)
        m = json.loads(meta.read_text())
        frame = CachedFrame(npy, np.asarray(m["levels"], np.float32), float(m["white"]),
                            int(m["types"]))
        return frame, NoiseEstimate(m["gain"], m["read"], m["blocks"])

    @staticmethod
    def _store(path: Path, npy: Path, meta: Path) -> None:
        from ..mosaic import pack
        from ..pipeline import estimate_file_noise
        from ..raw import open_raw

        with open_raw(path) as raw:
            info = raw.info
            packed = pack(raw.mosaic, info.layout)
            noise = estimate_file_noise(raw).estimate
            levels = info.layout.channel_map(np.asarray(info.black, np.float32))
            types = info.layout.types
        tmp = npy.with_name(npy.stem + ".tmp.npy")
        np.save(tmp, packed.astype(np.uint16))
        tmp.replace(npy)
        meta.write_text(json.dumps({
            "file": str(path), "levels": levels.tolist(), "white": float(info.white),
            "types": types, "gain": noise.gain, "read": noise.read, "blocks": noise.blocks,
        }))


# --- crops and batches ---------------------------------------------------------------------------


def augment(x: np.ndarray, y: np.ndarray, cfa: str, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip / transpose of two (p, p, C) packed crops (Bayer only: each packed
    channel keeps its colour, so the CFA phase is kept); X-Trans crops are returned as they are."""
    if _kind(cfa) != "bayer":
        return x, y
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    if rng.random() < 0.5:
        x, y = x.transpose(1, 0, 2), y.transpose(1, 0, 2)
    return x, y


@dataclass
class PairSource:
    """Crops of a list of pairs through a :class:`FrameCache`.

    Attributes:
        pairs: the pairs.
        cache: where packed frames are kept.
        patch: packed crop edge.
        profile: a camera profile (``sidraw calibrate``): where it applies to a pair's camera and
            ISO, the noise input is the profile's instead of the short frame's fit.
    """

    pairs: list[RawPair]
    cache: FrameCache
    patch: int
    profile: CameraProfile | None = None
    _frames: dict[Path, tuple[CachedFrame, NoiseEstimate]] = field(default_factory=dict)

    def _frame(self, path: Path) -> tuple[CachedFrame, NoiseEstimate]:
        if path not in self._frames:
            self._frames[path] = self.cache.frame(path)
        return self._frames[path]

    def crop(self, index: int, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input (p, p, C) in -1..1, target (p, p, C) in 0..1, noise (2,)) at packed (y0, x0)."""
        pair = self.pairs[index]
        short, noise = self._frame(pair.short)
        long, _ = self._frame(pair.long)
        x = short.normalised(y0, x0, self.patch)
        x *= np.float32(pair.ratio)
        np.clip(x, *INPUT_CLIP, out=x)
        y = np.clip(long.normalised(y0, x0, self.patch), 0.0, 1.0)
        match = complete_iso(self.profile, pair.camera, pair.iso) if self.profile else None
        if match is not None:
            noise = profile_estimate(match[1], short.white - float(np.mean(short.levels)))
        return x, y, noise_vector(noise, pair.ratio)[0]

    def shape(self, index: int) -> tuple[int, int, int]:
        frame, _ = self._frame(self.pairs[index].short)
        return frame.array().shape  # type: ignore[return-value]

    def random_crop(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """A random augmented crop of a random pair, as (C, p, p), (C, p, p), (2,) float32."""
        i = int(rng.integers(len(self.pairs)))
        h, w, _ = self.shape(i)
        step = 2 if _kind(self.pairs[i].cfa) == "xtrans" else 1
        if h < self.patch or w < self.patch:
            raise PairTrainingError(
                f"{self.pairs[i].short}: frame ({h}x{w} packed) smaller than --patch {self.patch}"
            )
        y0 = int(rng.integers(0, (h - self.patch) // step + 1)) * step
        x0 = int(rng.integers(0, (w - self.patch) // step + 1)) * step
        x, y, n = self.crop(i, y0, x0)
        x, y = augment(x, y, self.pairs[i].cfa, rng)
        return (np.ascontiguousarray(x.transpose(2, 0, 1)),
                np.ascontiguousarray(y.transpose(2, 0, 1)), n)

    def fixed_crops(self, per_pair: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deterministic crops (centre, then corners) of every pair: NCHW, NCHW, (N, 2)."""
        xs, ys, ns = [], [], []
        for i in range(len(self.pairs)):
            h, w, _ = self.shape(i)
            p = self.patch
            step = 2 if _kind(self.pairs[i].cfa) == "xtrans" else 1
            spots = [((h - p) // 2, (w - p) // 2), (0, 0), (h - p, w - p), (0, w - p)]
            for y0, x0 in spots[:per_pair]:
                y0, x0 = y0 // step * step, x0 // step * step
                x, y, n = self.crop(i, y0, x0)
                xs.append(x.transpose(2, 0, 1))
                ys.append(y.transpose(2, 0, 1))
                ns.append(n)
        return np.stack(xs), np.stack(ys), np.stack(ns)


# --- configuration and the trainer ---------------------------------------------------------------


@dataclass
class PairTuneConfig:
    """What ``sidraw train --pairs`` adds to :class:`~sidraw.train.loop.TrainConfig`.

    Attributes:
        name: model name (card and file names).
        init: the model to start from (card, ONNX or folder; None: bundled).
        few_shot: train only the first and last layers and the biases.
        synthetic_mix: share of each batch made from clean photos by the synthetic pipeline.
        eval_every: steps between held-out evaluations.
        patience: held-out evaluations without improvement before stopping.
        cache: folder of the packed frames (default ``<out>/cache``).
        profile: camera profile JSON (``sidraw calibrate``): the noise input of real crops where
            it applies, and the noise of the synthetic pairs (its complete ISOs, drawn in turn).
        pairs, held_out: the pairs (for the card).
    """

    name: str = "sidraw-tuned"
    init: str | None = None
    few_shot: bool = False
    synthetic_mix: float = 0.0
    eval_every: int = 25
    patience: int = 4
    cache: str | None = None
    profile: str | None = None
    pairs: list[dict[str, Any]] = field(default_factory=list)
    held_out: list[dict[str, Any]] = field(default_factory=list)


def config_from_card(card: ModelCard, base: TrainConfig) -> TrainConfig:
    """A TrainConfig whose network is the card's (:func:`~sidraw.train.loop.with_shape_of`) and
    whose schedule is ``base``'s; ``init`` is the card's ONNX file."""
    cfg = with_shape_of(copy.deepcopy(base), card.raw.get("architecture", {}))
    cfg.cfa = card.cfa
    cfg.noise_map = card.noise_input is not None
    cfg.init = str(card.path)
    cfg.zero_head = False
    return cfg


def split_held_out(pairs: list[RawPair], share: float) -> tuple[list[RawPair], list[RawPair]]:
    """(train, held-out) pairs; whole scenes (the long exposure) are held out, the last
    ``share`` of them in name order (at least one when there are two scenes or more)."""
    scenes = sorted({str(p.long) for p in pairs})
    n = min(len(scenes) - 1, max(1, round(share * len(scenes)))) if share > 0 else 0
    held = set(scenes[len(scenes) - n :]) if n > 0 else set()
    return [p for p in pairs if str(p.long) not in held], [p for p in pairs if str(p.long) in held]


def few_shot_parameters(model: UNet) -> list[str]:
    """Names of the parameters the few-shot mode trains: the first convolution, the head and
    every bias."""
    return [
        name for name, _ in model.named_parameters()
        if name.startswith("enc.0.0.") or name.startswith("head.") or name.endswith(".bias")
    ]


class PairTrainer(Trainer):
    """:class:`~sidraw.train.loop.Trainer` fed by real pairs instead of synthetic ones.

    Synthetic training is untouched: this subclass replaces :meth:`run` (the batch source, the
    held-out early stop and the export) and, in few-shot mode, freezes most parameters.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        tune: PairTuneConfig,
        out: Path,
        train: list[RawPair],
        held_out: list[RawPair],
    ) -> None:
        if not train:
            raise PairTrainingError("no training pairs")
        super().__init__(cfg, out, resume=False)
        self.tune = tune
        cache = FrameCache(Path(tune.cache) if tune.cache else out / "cache")
        self.profile = load_profile(tune.profile) if tune.profile else None
        self.train_source = PairSource(train, cache, cfg.patch, self.profile)
        self.held_source = (
            PairSource(held_out, cache, cfg.patch, self.profile) if held_out else None
        )
        if tune.few_shot:
            trainable = set(few_shot_parameters(self.model))
            for name, p in self.model.named_parameters():
                p.requires_grad_(name in trainable)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.history: list[dict[str, float]] = []

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Endless batches of real crops, with a ``synthetic_mix`` share of synthetic pairs."""
        rng = np.random.default_rng(seed)
        synthetic = self._synthetic_sampler(seed) if self.tune.synthetic_mix > 0 else None
        while True:
            items = []
            for _ in range(self.cfg.batch):
                if synthetic is not None and rng.random() < self.tune.synthetic_mix:
                    items.append(synthetic(rng))
                else:
                    items.append(self.train_source.random_crop(rng))
            xs, ys, ns = zip(*items, strict=True)
            yield (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)),
                   torch.from_numpy(np.stack(ns)))

    def _synthetic_sampler(self, seed: int):
        from . import data as data_mod
        from .pairs import make_pair, mosaic_size, training_pair

        root = data_mod.data_root(self.cfg.data)
        train_e, _ = data_mod.split(data_mod.manifest(root))
        photos = data_mod.load_photos(root, train_e, cache=self.out / "train_photos.pkl")
        sampler = data_mod.PatchSampler(photos, seed=seed)
        size = mosaic_size(self.cfg.patch, self.cfg.cfa)

        params = self._profile_noise()
        if not params:

            def make(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
                return training_pair(sampler.crop(size), self.cfg.cfa, self.cfg.patch, rng)

            return make

        def make_profiled(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
            noise = params[int(rng.integers(len(params)))]
            pair = make_pair(sampler.crop(size), self.cfg.cfa, rng, noise=noise)
            sl = (slice(1, 1 + self.cfg.patch), slice(1, 1 + self.cfg.patch))
            return (np.ascontiguousarray(pair.noisy[sl].transpose(2, 0, 1)),
                    np.ascontiguousarray(pair.clean[sl].transpose(2, 0, 1)), pair.noise_vector())

        return make_profiled

    def _profile_noise(self) -> list[Any]:
        """NoiseParams of the profile's complete ISOs (empty without a profile)."""
        from .noise import NoiseParams

        if self.profile is None:
            return []
        return [
            NoiseParams(**_profile_params(self.profile, n))
            for n in self.profile.isos.values()
            if n.k_dn_per_electron is not None and n.read_dn is not None
        ]

    def held_out_loss(self, model: torch.nn.Module, crops: tuple[torch.Tensor, ...]) -> float:
        """Mean L1 of ``model`` on fixed held-out crops (float32, no autocast)."""
        x, y, n = crops
        model.eval()
        with torch.no_grad():
            loss = float(torch.mean(torch.abs(self.forward(model, x, n).clamp(0, 1) - y)))
        self.model.train()
        return loss

    def run(self) -> None:  # type: ignore[override]
        """Fine-tune until ``steps``, ``minutes`` or the early stop; export the best weights."""
        cfg = self.cfg
        train_fixed = tuple(torch.from_numpy(a) for a in self.train_source.fixed_crops())
        held = (tuple(torch.from_numpy(a) for a in self.held_source.fixed_crops(4))
                if self.held_source else None)
        watch = held or train_fixed
        best = self.held_out_loss(self.model, watch)
        start_train = self.held_out_loss(self.model, train_fixed)
        best_state = copy.deepcopy(self.model.state_dict())
        self.history.append({"step": 0, "held_out_l1": best, "train_l1": start_train})
        self.log(f"{len(self.train_source.pairs)} training / "
                 f"{len(self.held_source.pairs) if self.held_source else 0} held-out pairs, "
                 f"{self.trainable} of {sum(p.numel() for p in self.model.parameters())} "
                 f"parameters trained; held-out L1 {best:.5f}")
        stale, t0 = 0, time.perf_counter()
        stream = self.batches(cfg.seed)
        while self.step < cfg.steps:
            self.elapsed = time.perf_counter() - t0
            if cfg.minutes > 0 and self.elapsed >= cfg.minutes * 60:
                break
            lr = _lr(cfg, self.step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.train_step(*next(stream))
            self.step += 1
            if self.step % self.tune.eval_every == 0 or self.step == cfg.steps:
                loss = self.held_out_loss(self.model, watch)
                self.history.append({"step": self.step, "held_out_l1": loss})
                self.log(f"step {self.step}: {'held-out' if held else 'train'} L1 {loss:.5f}")
                if loss < best:
                    best, stale = loss, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    stale += 1
                    if held is not None and stale >= self.tune.patience:
                        self.log(f"early stop at step {self.step} (best L1 {best:.5f})")
                        break
        self.elapsed = time.perf_counter() - t0
        self.model.load_state_dict(best_state)
        self.final_train_l1 = self.held_out_loss(self.model, train_fixed)
        self.history[0]["train_l1_after"] = self.final_train_l1
        self.best_l1 = best
        self.export()

    def export(self) -> Path:
        """Write ``<name>.onnx`` and its cards into the output folder; returns the ONNX path."""
        from .export import export_onnx, sha256_file

        model = UNet(self.cfg.unet())
        model.load_state_dict(self.model.state_dict())
        onnx_path = self.out / f"{self.tune.name}.onnx"
        parity = export_onnx(model, onnx_path)
        base = card_for(self.cfg.cfa, self.tune.init)
        card = tuned_card(base, self, onnx_path, sha256_file(onnx_path), parity)
        (self.out / f"{self.tune.name}.json").write_text(json.dumps(card, indent=2) + "\n")
        (self.out / f"{self.tune.name}.md").write_text(tuned_markdown(card))
        self.log(f"wrote {onnx_path} and its card")
        return onnx_path


def _lr(cfg: TrainConfig, step: int) -> float:
    """Short warm-up, then cosine decay over ``steps``."""
    warm = max(1, min(cfg.warmup, cfg.steps // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, step / max(cfg.steps, 1))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def tuned_card(
    base: ModelCard, trainer: PairTrainer, onnx_path: Path, sha256: str, parity: float
) -> dict[str, Any]:
    """The base model's card, re-pointed at the tuned ONNX file, with a ``fine_tuning`` record
    naming the pairs (its INT8/fp16 variants and validation tables do not carry over)."""
    card = {k: v for k, v in base.raw.items() if k not in ("variants", "validation")}
    cfg, tune = trainer.cfg, trainer.tune
    card.update(
        name=tune.name,
        version=f"{base.raw.get('version', '1')}+pairs",
        file=onnx_path.name,
        sha256=sha256,
        bytes=onnx_path.stat().st_size,
        validation={},
    )
    card["fine_tuning"] = {
        "from": {"name": base.name, "sha256": base.sha256},
        "mode": "few-shot (first and last layers and biases)" if tune.few_shot else "all layers",
        "trained_parameters": trainer.trainable,
        "pairs": tune.pairs,
        "held_out_pairs": tune.held_out,
        "synthetic_mix": tune.synthetic_mix,
        "camera_profile": tune.profile,
        "steps": trainer.step,
        "seconds": round(trainer.elapsed, 1),
        "patch": cfg.patch,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "loss": "L1 on the packed normalised raw",
        "l1_before": trainer.history[0],
        "best_l1": trainer.best_l1,
        "train_l1_after": trainer.final_train_l1,
        "history": trainer.history,
        "onnx_parity_max_abs_diff": parity,
        "config": {k: v for k, v in asdict(cfg).items() if k != "patch_history"},
    }
    return card


def tuned_markdown(card: dict[str, Any]) -> str:
    """A short Markdown model card of a fine-tuned model."""
    ft = card["fine_tuning"]
    lines = [
        f"# {card['name']}",
        "",
        f"Fine-tuned from `{ft['from']['name']}` on {len(ft['pairs'])} real pairs "
        f"({ft['mode']}, {ft['trained_parameters']} parameters, {ft['steps']} steps, "
        f"{ft['seconds']:.0f} s); {len(ft['held_out_pairs'])} held-out pairs for the early stop.",
        "",
        f"L1 on fixed crops: training pairs {ft['l1_before']['train_l1']:.5f} -> "
        f"{ft['train_l1_after']:.5f}; held-out {ft['l1_before']['held_out_l1']:.5f} -> "
        f"{ft['best_l1']:.5f}.",
        "",
        "| short | long | ratio | role |",
        "|---|---|---|---|",
    ]
    for role, key in (("train", "pairs"), ("held out", "held_out_pairs")):
        for p in ft[key]:
            lines.append(f"| {p['short']} | {p['long']} | x{p['ratio']:g} | {role} |")
    return "\n".join(lines) + "\n"


def fine_tune(
    pairs: list[RawPair],
    out: Path,
    base: TrainConfig,
    tune: PairTuneConfig,
    *,
    held_out: list[RawPair] | None = None,
    held_out_share: float = 0.2,
) -> PairTrainer:
    """Fine-tune a model on pairs and export it into ``out`` (see the module docstring).

    Args:
        pairs: usable pairs (:func:`sidraw.pairs.load_pairs`), all of one CFA kind.
        base: schedule (steps, minutes, lr, patch, batch, threads, device, seed).
        tune: fine-tuning options.
        held_out: pairs for the early stop (default: ``held_out_share`` of the scenes of
            ``pairs``).

    Raises:
        PairTrainingError: no pairs, pairs of several CFA kinds, or a patch that does not fit.
    """
    if not pairs:
        raise PairTrainingError("no usable pairs")
    kinds = {_kind(p.cfa) for p in pairs + (held_out or [])}
    if len(kinds) > 1:
        raise PairTrainingError("pairs of Bayer and X-Trans cameras: fine-tune one kind at a time")
    if base.patch % DOWNSAMPLE:
        raise PairTrainingError(f"--patch must be a multiple of {DOWNSAMPLE} (packed pixels)")
    kind = kinds.pop()
    card = card_for(kind, tune.init)
    cfg = config_from_card(card, base)
    assert cfg.cfa in CFA_CHANNELS
    cfg.ema = 0.0  # a few hundred steps: the best weights on the held-out pairs are exported
    if held_out is None:
        train, held_out = split_held_out(pairs, held_out_share)
    else:
        train = pairs
    tune.pairs = [p.to_dict() for p in train]
    tune.held_out = [p.to_dict() for p in held_out]
    out.mkdir(parents=True, exist_ok=True)
    trainer = PairTrainer(cfg, tune, out, train, held_out)
    trainer.run()
    return trainer
