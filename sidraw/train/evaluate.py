"""Evaluation on the held-out validation photos, against two baselines.

Each case is a fixed, seeded noisy realisation of a validation photo (Bayer: the whole photo, cut
to a multiple of 32 photosites; X-Trans: a 612x912 crop, the smallest size LibRaw demosaics X-Trans
at). Sets:

* ``A7S2 K=<k> x<r>``: the gain sweep. Sony A7S II noise (ELD) at K = 0.1, 0.75, 3 and 6 DN/e-
  (ISO ~100 to ~6400), median read and row noise of the calibration at that gain, Gaussian read
  noise, at x100, x250 and x300.
* ``identity x1``: the clean mosaic exposed at ratio 1 with the A7S2's lowest gain (a clean long
  exposure): a model must give it back unchanged.
* ``other cameras x100``: K, read noise (Gaussian or Tukey-lambda) and row noise drawn per case from
  the darktable-derived ranges (:mod:`sidraw.train.noise`).

Noise-conditioned models get the noise input from the frame's own fit
(:func:`sidraw.noise_estimate.estimate_noise`), as at convert time; ``noise_scale`` multiplies its
variances to measure how a wrong estimate hurts.

Methods: the network (onnxruntime, reflect-padded to multiples of 16 as at convert time); naive
amplification ``clip(noisy * ratio, 0, 1)``; BM3D on the amplified raw given the true noise
parameters (generalised Anscombe transform per packed channel, BM3D with sigma 1, closed-form
approximation of the exact unbiased inverse, Makitalo & Foi 2013). Metrics: PSNR and SSIM of the
16-bit sRGB image rendered by :func:`sidraw.render.render` through a DNG written by
:func:`sidraw.dng.write_dng` (the clean mosaic rendered the same way is the reference), and PSNR of
the packed normalised raw. BM3D outputs are cached (they do not depend on the model); all metrics
are recomputed every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..model import load_card
from ..mosaic import Layout, denormalise_packed, pack, unpack
from . import data as data_mod
from .noise import NoiseParams, a7s2_params, sample_params
from .pairs import Pair, finish_like_convert, make_pair
from .unet import DOWNSAMPLE
from .unprocess import layout_for

EVAL_VERSION = 2
A7S2_EVAL_K = math.sqrt(0.0939 * 6.011)
SWEEP_K = (0.1, 0.75, 3.0, 6.0)
SWEEP_RATIOS = (100.0, 250.0, 300.0)
IDENTITY_K = 0.0939
XTRANS_CROP = (612, 912)
# Flat patches for the colour-bias check: packed 8x8 windows whose clean std is below this
# fraction of their mean.
FLAT_WINDOW = 8
FLAT_REL_STD = 0.02
#: Flat patches whose clean mean reaches this fraction of white in a channel are at the clip.
AT_CLIP = 0.98


@dataclass(frozen=True)
class EvalSet:
    """A group of cases: name, exposure ratio, noise source (``a7s2`` or ``darktable``) and, for
    ``a7s2``, the gain K (DN/e-)."""

    name: str
    ratio: float
    source: str
    k: float = A7S2_EVAL_K


SETS = (
    *(
        EvalSet(f"A7S2 K={k:g} x{r:g}", r, "a7s2", k)
        for k in SWEEP_K
        for r in SWEEP_RATIOS
    ),
    EvalSet("identity x1", 1.0, "a7s2", IDENTITY_K),
    EvalSet("other cameras x100", 100.0, "darktable"),
)
SET_NAMES = tuple(s.name for s in SETS)


@dataclass(frozen=True)
class Case:
    """One evaluation case: a validation photo, its crop (mosaic H, W) and set."""

    key: str
    crop: tuple[int, int]
    set: EvalSet
    cfa: str

    @property
    def id(self) -> str:
        return f"{self.cfa}|{self.key}|{self.set.name}|{self.crop[0]}x{self.crop[1]}"

    @property
    def seed(self) -> int:
        return int(hashlib.sha1(self.id.encode()).hexdigest()[:8], 16)


def _crop_for(shape: tuple[int, ...], cfa: str) -> tuple[int, int] | None:
    h, w = shape[:2]
    if cfa == "xtrans":
        ch, cw = XTRANS_CROP
        return (ch, cw) if min(h, w) >= ch and max(h, w) >= cw else None
    # Bayer: the whole photo in multiples of 32 photosites (packed sizes multiples of 16).
    ch, cw = h // 32 * 32, w // 32 * 32
    return (ch, cw) if min(ch, cw) >= 256 else None


def eval_cases(
    photos: list[data_mod.Photo], cfa: str, max_images: int, sets: tuple[EvalSet, ...] = SETS
) -> list[Case]:
    """Cases of every set for up to ``max_images`` validation photos, taken in turn from each
    source folder (so no one folder dominates)."""
    by_set: dict[str, list[tuple[data_mod.Photo, tuple[int, int]]]] = {}
    for p in sorted(photos, key=lambda p: hashlib.sha1(p.key.encode()).hexdigest()):
        crop = _crop_for(p.pixels.shape, cfa)
        if crop is not None:
            by_set.setdefault(p.dataset, []).append((p, crop))
    chosen: list[tuple[data_mod.Photo, tuple[int, int]]] = []
    queues = [by_set[k] for k in sorted(by_set)]
    while len(chosen) < max_images and any(queues):
        for q in queues:
            if q and len(chosen) < max_images:
                chosen.append(q.pop(0))
    chosen.sort(key=lambda pc: pc[0].key)
    return [Case(p.key, c, s, cfa) for s in sets for p, c in chosen]


def case_crop(photo: data_mod.Photo, case: Case) -> np.ndarray:
    """Centre crop (landscape-oriented for X-Trans) as float32 sRGB."""
    px = photo.pixels
    ch, cw = case.crop
    if px.shape[0] < ch or px.shape[1] < cw:
        px = px.transpose(1, 0, 2)
    y0, x0 = (px.shape[0] - ch) // 2, (px.shape[1] - cw) // 2
    return px[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32) / 255


def case_pair(photo: data_mod.Photo, case: Case) -> Pair:
    """The seeded noisy realisation of a case."""
    rng = np.random.default_rng(case.seed)
    noise: NoiseParams
    if case.set.source == "a7s2":
        noise = a7s2_params(case.set.k)
    else:
        noise = sample_params(np.random.default_rng(case.seed + 1), "darktable")
    return make_pair(
        case_crop(photo, case), case.cfa, rng, ratio=case.set.ratio, noise=noise, exposure=1.0
    )


# --- methods -------------------------------------------------------------------------------------


def naive(pair: Pair) -> np.ndarray:
    """Amplified input clipped to 0..1: (h, w, C) float32."""
    return np.clip(pair.noisy, 0.0, 1.0)


def _gat_inverse(d: np.ndarray, sigma: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of the generalised Anscombe
    transform (Poisson with unit gain plus Gaussian of std ``sigma``)."""
    d = np.maximum(d, 0.8)  # the expansion diverges near 0; such values mean "no signal"
    s15 = math.sqrt(1.5)
    out = 0.25 * d**2 + 0.25 * s15 / d - 11 / 8 / d**2 + 5 / 8 * s15 / d**3 - 1 / 8 - sigma**2
    return np.maximum(out, 0.0)


def bm3d_gat(pair: Pair) -> np.ndarray:
    """BM3D with the true noise parameters, per packed channel: (h, w, C) float32, 0..1."""
    import bm3d

    nz = pair.noise
    layout = layout_for(pair.pattern)
    dn = pack(pair.raw_dn, layout).astype(np.float64) - nz.black
    electrons = dn / nz.k
    sigma = math.sqrt(nz.sigma_read**2 + nz.sigma_row**2 + 1 / 12) / nz.k
    out = np.empty(dn.shape, np.float32)
    for c in range(dn.shape[2]):
        f = 2.0 * np.sqrt(np.maximum(electrons[..., c] + 3 / 8 + sigma**2, 0.0))
        den = bm3d.bm3d(f, 1.0)
        out[..., c] = _gat_inverse(den, sigma) * nz.k / nz.range * pair.ratio
    return np.clip(out, 0.0, 1.0)


def cached_bm3d(pair: Pair, case: Case, folder: Path) -> np.ndarray:
    """:func:`bm3d_gat` of a case, stored in ``folder`` (it does not depend on the model and
    takes most of an evaluation's time). The metrics are recomputed from it every run, so a change
    of the rendering never mixes with old numbers."""
    path = folder / f"{case.seed:08x}.npy"
    if path.exists():
        out = np.load(path)
        if out.shape == pair.clean.shape:
            return out
    out = bm3d_gat(pair)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


class OnnxModel:
    """An ONNX model run as ``sidraw convert`` runs it (reflect padding to multiples of 16; the
    noise input, if the model has one, from the frame's own fit times ``noise_scale``)."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 2,
        noise_scale: float = 1.0,
        mean_block: int | None = None,
        guard: float | None = None,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"]
        )
        self.noise_input = "noise" in [i.name for i in self.session.get_inputs()]
        self.noise_scale = noise_scale
        card_block, card_guard = card_correction(path)
        self.mean_block = card_block if mean_block is None else mean_block
        self.guard = card_guard if guard is None else guard

    def __call__(self, noisy: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """(h, w, C) float32 input (and (2,) noise input) -> (h, w, C) float32 in 0..1."""
        h, w, _ = noisy.shape
        ph, pw = -h % DOWNSAMPLE, -w % DOWNSAMPLE
        x = np.pad(noisy, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        feeds = {"input": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
        if self.noise_input:
            if noise is None:
                raise ValueError("this model needs the noise input")
            feeds["noise"] = np.asarray(noise, np.float32).reshape(1, 2)
        y = self.session.run(["output"], feeds)[0][0].transpose(1, 2, 0)[:h, :w]
        return np.clip(y, 0.0, 1.0)

    def on_pair(self, pair: Pair) -> np.ndarray:
        """The model on a pair's input, told the pair's fitted noise times ``noise_scale``, with
        blown highlights made white and the card's mean correction, as ``sidraw convert`` does."""
        vector = pair.noise_vector(self.noise_scale)
        return finish_like_convert(
            self(pair.noisy, vector), pair, vector, self.mean_block, guard=self.guard
        )


#: File-name suffix of the INT8 variant of a model (``<name>.int8.onnx`` beside ``<name>.json``).
INT8_SUFFIX = ".int8"


def card_beside(onnx_path: str | Path) -> Path | None:
    """The model card of an ONNX file: ``<name>.json`` for ``<name>.onnx`` or for its INT8
    variant ``<name>.int8.onnx``; None without one."""
    path = Path(onnx_path)
    stem = path.stem.removesuffix(INT8_SUFFIX)
    card = path.with_name(stem + ".json")
    return card if card.exists() else None


def card_correction(onnx_path: str | Path) -> tuple[int, float]:
    """The mean-correction block and residual guard of the model card beside an ONNX file
    (0, 0.0 without one)."""
    card = card_beside(onnx_path)
    if card is None:
        return 0, 0.0
    loaded = load_card(card)
    return loaded.mean_block, loaded.guard


# --- rendering and metrics -----------------------------------------------------------------------


class Renderer:
    """Renders mosaics of one case through a DNG template with :func:`sidraw.render.render`."""

    def __init__(self, pair: Pair, tmpdir: Path) -> None:
        import rawpy

        from ..dng import DngMetadata, write_dng

        nz = pair.noise
        self.layout: Layout = layout_for(pair.pattern)
        p = self.layout.period
        self.black = np.full((p, p), float(nz.black), np.float32)
        self.white = nz.white
        self.shape = pair.clean_mosaic.shape
        meta = DngMetadata(
            pattern=pair.pattern, black=float(nz.black), white=nz.white,
            color_matrix=pair.camera.xyz2cam, as_shot_neutral=pair.camera.as_shot_neutral,
        )
        path = tmpdir / "template.dng"
        write_dng(path, np.full(self.shape, nz.black, np.uint16), meta)
        self.raw = rawpy.imread(str(path))

    def __call__(self, packed: np.ndarray) -> np.ndarray:
        """(h, w, C) normalised 0..1 -> (H, W, 3) float64 sRGB 0..1."""
        from ..render import render

        dn = denormalise_packed(packed, self.layout, self.black, self.white)
        img = render(self.raw, unpack(dn, self.layout, self.shape))
        return img.astype(np.float64) / 65535.0

    def close(self) -> None:
        self.raw.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two images in 0..1."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Gaussian window, sigma 1.5, data range 1), averaged over channels."""
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        mx, my = gaussian_filter(x, 1.5), gaussian_filter(y, 1.5)
        sxx = gaussian_filter(x * x, 1.5) - mx * mx
        syy = gaussian_filter(y * y, 1.5) - my * my
        sxy = gaussian_filter(x * y, 1.5) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        vals.append(float(m[5:-5, 5:-5].mean()))  # drop the filter's border
    return float(np.mean(vals))


def _flat_windows(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gh, gw, C) means of the FLAT_WINDOW-pixel packed windows of ``clean``, and two
    (gh, gw) bool masks: flat windows within range, and flat windows at the clip.

    Flat: std below FLAT_REL_STD of the mean in every channel and mean above 1 % of white.
    At the clip: flat with some channel's mean at or above AT_CLIP of white (blown in the source
    photo). There the true value is at least white and every output in 0..1 errs downwards by the
    residual noise the clip cuts off, a bias of any estimator bounded at white (naive included),
    not a colour shift: such windows are scored for neutrality in the render instead."""
    f = FLAT_WINDOW
    h, w, c = (clean.shape[0] // f) * f, (clean.shape[1] // f) * f, clean.shape[2]
    cw = clean[:h, :w].reshape(h // f, f, w // f, f, c)
    mean = cw.mean(axis=(1, 3))
    flat = np.all((cw.std(axis=(1, 3)) < FLAT_REL_STD * mean) & (mean > 0.01), axis=2)
    at_clip = flat & (mean.max(axis=2) >= AT_CLIP)
    return mean, flat & ~at_clip, at_clip


def flat_bias(
    pred: np.ndarray,
    clean: np.ndarray,
    reference: np.ndarray | None = None,
    windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[list[float], list[float]]:
    """Per-channel sums of ``pred - reference`` (default: ``clean``) and of ``clean`` over the
    flat, in-range patches of ``clean`` (:func:`_flat_windows`).

    There any colour shift is bias, not a smoothed detail. Summed over a set, ``diff / signal``
    is the relative bias per channel. Against the clean frame the sum also holds the input
    noise's own sampling error (about 1 % at K = 6 x300); against the unclipped amplified input,
    which is unbiased, that cancels. ``windows``: :func:`_flat_windows` of ``clean``, when the
    caller already has them.
    """
    reference = clean if reference is None else reference
    f = FLAT_WINDOW
    mean, flat, _ = _flat_windows(clean) if windows is None else windows
    h, w, c = mean.shape[0] * f, mean.shape[1] * f, clean.shape[2]
    pw = pred[:h, :w].reshape(h // f, f, w // f, f, c)
    rw = reference[:h, :w].reshape(h // f, f, w // f, f, c)
    diff = (pw - rw).mean(axis=(1, 3))[flat].sum(axis=0) * f * f
    signal = mean[flat].sum(axis=0) * f * f
    return [float(v) for v in diff], [float(v) for v in signal]


def highlight_shift(
    img: np.ndarray,
    ref_img: np.ndarray,
    clean: np.ndarray,
    windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[list[float], list[float]]:
    """Per-channel sums of ``img - ref_img`` and of ``ref_img`` (sRGB 0..1, (H, W, 3)) over the
    render windows of the flat patches of ``clean`` that are at the clip (:func:`_flat_windows`).

    Summed over a set, ``diff / ref`` per channel is how far blown highlights moved in the
    picture; the spread between channels is their tint (neutral highlights: no spread).
    ``windows`` as for :func:`flat_bias`.
    """
    _, _, at_clip = _flat_windows(clean) if windows is None else windows
    sy, sx = img.shape[0] // clean.shape[0], img.shape[1] // clean.shape[1]
    fy, fx = FLAT_WINDOW * sy, FLAT_WINDOW * sx
    gh, gw = min(at_clip.shape[0], img.shape[0] // fy), min(at_clip.shape[1], img.shape[1] // fx)
    sel = at_clip[:gh, :gw]

    def window_means(a: np.ndarray) -> np.ndarray:
        return a[: gh * fy, : gw * fx].reshape(gh, fy, gw, fx, 3).mean(axis=(1, 3))[sel]

    diff = (window_means(img) - window_means(ref_img)).sum(axis=0)
    ref = window_means(ref_img).sum(axis=0)
    return [float(v) for v in diff], [float(v) for v in ref]


def metrics(
    pred: np.ndarray,
    pair: Pair,
    ref_img: np.ndarray,
    renderer: Renderer,
    amplified: np.ndarray | None = None,
) -> dict:
    """Scores of ``pred``; ``amplified``: the pair's unclipped amplified input, the bias
    reference (made from the pair when not given; pass it to score several methods)."""
    if amplified is None:
        amplified = pair.normalised() * np.float32(pair.ratio)
    img = renderer(pred)
    windows = _flat_windows(pair.clean)
    bias, signal = flat_bias(pred, pair.clean, windows=windows)
    shift, lit = highlight_shift(img, ref_img, pair.clean, windows)
    return {
        "srgb_psnr": psnr(img, ref_img),
        "srgb_ssim": ssim(img, ref_img),
        "raw_psnr": psnr(pred, pair.clean),
        "bias": bias,
        "bias_vs_input": flat_bias(pred, pair.clean, amplified, windows)[0],
        "signal": signal,
        "highlight_diff": shift,
        "highlight_ref": lit,
    }


# --- driver --------------------------------------------------------------------------------------


def _save_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _case_result(
    pair: Pair, case: Case, model: OnnxModel | None, bm3d_dir: Path | None, td: Path
) -> tuple[dict, float]:
    """Metrics of every method on one case, and the model's seconds."""
    renderer = Renderer(pair, td)
    seconds = 0.0
    try:
        ref = renderer(pair.clean)
        amp = pair.normalised() * np.float32(pair.ratio)
        res = {"naive": metrics(naive(pair), pair, ref, renderer, amp)}
        if bm3d_dir is not None:
            res["bm3d"] = metrics(cached_bm3d(pair, case, bm3d_dir), pair, ref, renderer, amp)
        if model is not None:
            tm = time.perf_counter()
            pred = model.on_pair(pair)
            seconds = time.perf_counter() - tm
            res["model"] = metrics(pred, pair, ref, renderer, amp)
        k, read = pair.estimate.in_dn(pair.noise.range)
        res["estimate"] = {"k": k, "read": read, "true_k": pair.noise.k,
                           "true_read": pair.noise.sigma_read}
    finally:
        renderer.close()
    return res, seconds


def evaluate(
    cfa: str,
    model_path: str | Path | None,
    out: Path,
    data: str | None = None,
    max_images: int = 32,
    threads: int = 2,
    log=print,
    *,
    bm3d_images: int | None = None,
    noise_scale: float = 1.0,
    sets: tuple[str, ...] | None = None,
    mean_block: int | None = None,
    guard: float | None = None,
) -> dict:
    """Evaluate one model (or only the baselines when ``model_path`` is None).

    Args:
        bm3d_images: run BM3D on the first this many photos only (None: all; 0: none); the
            model - BM3D comparisons use exactly the cases BM3D ran on.
        noise_scale: factor on the variances of the model's noise input.
        sets: names of the sets to run (default all of SETS).
        mean_block: mean-correction block for the model (None: its card's).
        guard: residual guard of the mean correction (None: its card's; 0: none).

    Returns the summary dict (also written to ``out/<cfa>_eval.json`` with a Markdown table).
    """
    root = data_mod.data_root(data)
    _, val_e = data_mod.split(data_mod.manifest(root))
    photos = {p.key: p for p in data_mod.load_photos(root, val_e)}
    chosen = tuple(s for s in SETS if sets is None or s.name in sets)
    cases = eval_cases(list(photos.values()), cfa, max_images, chosen)
    keys = sorted({c.key for c in cases})
    with_bm3d = set(keys if bm3d_images is None else keys[:bm3d_images])
    bm3d_dir = out / f"{cfa}_bm3d_v{EVAL_VERSION}"
    model = OnnxModel(model_path, threads, noise_scale, mean_block, guard) if model_path else None
    per_case: dict[str, dict] = {}
    t0 = time.perf_counter()
    model_seconds = 0.0
    with tempfile.TemporaryDirectory() as td:
        for i, case in enumerate(cases):
            pair = case_pair(photos[case.key], case)
            use_bm3d = bm3d_dir if case.key in with_bm3d else None
            per_case[case.id], seconds = _case_result(pair, case, model, use_bm3d, Path(td))
            model_seconds += seconds
            if (i + 1) % 16 == 0 or i + 1 == len(cases):
                log(f"{cfa}: {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s")
    summary = summarise(cases, per_case)
    summary.update(
        cfa=cfa, model=str(model_path) if model_path else None, images=keys,
        bm3d_images=sorted(with_bm3d), noise_scale=noise_scale, eval_version=EVAL_VERSION,
        mean_block=model.mean_block if model is not None else None,
        guard=model.guard if model is not None else None,
        crop="whole photo" if cfa == "bayer" else "612x912 photosites",
    )
    megapixels = sum(c.crop[0] * c.crop[1] for c in cases) / 1e6
    if model is not None and megapixels > 0:
        summary["model_s_per_mp"] = round(model_seconds / megapixels, 3)
    if model_path:
        tag = "" if noise_scale == 1.0 else f"_noise{noise_scale:g}"
        _save_json(out / f"{cfa}_eval{tag}.json", summary)
        (out / f"{cfa}_eval{tag}.md").write_text(markdown_table(summary))
    return summary


def _mean_metrics(rows: list[dict], method: str) -> dict[str, float]:
    keys = ("srgb_psnr", "srgb_ssim", "raw_psnr")
    return {k: round(float(np.mean([r[method][k] for r in rows])), 4) for k in keys}


def _bias(rows: list[dict], method: str, key: str = "bias") -> float:
    """Largest per-channel |mean error| / mean signal over the flat patches of ``rows``
    (``key`` "bias": against the clean frame; "bias_vs_input": against the amplified input)."""
    if not all(key in r[method] for r in rows):
        return float("nan")
    diff = np.sum([r[method][key] for r in rows], axis=0)
    signal = np.sum([r[method]["signal"] for r in rows], axis=0)
    if not np.all(signal > 0):
        return float("nan")
    return round(float(np.max(np.abs(diff / signal))), 5)


def _highlights(rows: list[dict], method: str) -> tuple[float, float]:
    """How far flat blown highlights moved in the render, over ``rows``: the largest per-channel
    |mean change| relative to the reference, and the tint (spread of the per-channel changes).
    NaN where no case has such patches (or an older result lacks the figures)."""
    if not all("highlight_diff" in r[method] for r in rows):
        return float("nan"), float("nan")
    diff = np.sum([r[method]["highlight_diff"] for r in rows], axis=0)
    ref = np.sum([r[method]["highlight_ref"] for r in rows], axis=0)
    if not np.all(ref > 0):
        return float("nan"), float("nan")
    rel = diff / ref
    return round(float(np.max(np.abs(rel))), 5), round(float(np.ptp(rel)), 5)


def _set_entry(s: EvalSet, rows: list[dict]) -> dict:
    entry: dict[str, object] = {"ratio": s.ratio, "noise": s.source, "cases": len(rows)}
    if s.source == "a7s2":
        entry["k"] = s.k
    entry["naive"] = _mean_metrics(rows, "naive")
    k_ratios = [r["estimate"]["k"] / r["estimate"]["true_k"] for r in rows]
    entry["estimate_k_ratio_median"] = round(float(np.median(k_ratios)), 3)
    if any("model" in r for r in rows):
        m = _mean_metrics(rows, "model")
        d_srgb = [r["model"]["srgb_psnr"] - r["naive"]["srgb_psnr"] for r in rows]
        d_raw = [r["model"]["raw_psnr"] - r["naive"]["raw_psnr"] for r in rows]
        m.update(
            below_naive_srgb=int(np.sum(np.array(d_srgb) < 0)),
            below_naive_raw=int(np.sum(np.array(d_raw) < 0)),
            worst_vs_naive_srgb=round(float(np.min(d_srgb)), 3),
            worst_vs_naive_raw=round(float(np.min(d_raw)), 3),
            min_raw_psnr=round(float(min(r["model"]["raw_psnr"] for r in rows)), 3),
            colour_bias=_bias(rows, "model", "bias_vs_input"),
            colour_bias_vs_clean=_bias(rows, "model"),
        )
        m["highlight_shift"], m["highlight_tint"] = _highlights(rows, "model")
        entry["naive"]["colour_bias_vs_clean"] = _bias(rows, "naive")
        naive_hl = _highlights(rows, "naive")
        entry["naive"]["highlight_shift"], entry["naive"]["highlight_tint"] = naive_hl
        entry["model"] = m
    paired = [r for r in rows if "bm3d" in r]
    if paired:
        entry["bm3d_cases"] = len(paired)
        entry["bm3d"] = _mean_metrics(paired, "bm3d")
        if "model" in paired[0]:
            entry["model_on_bm3d_cases"] = _mean_metrics(paired, "model")
    return entry


def summarise(cases: list[Case], per_case: dict[str, dict]) -> dict:
    """Mean metrics per set and method, per-frame comparisons with naive, and the gain sweep's
    averages per ratio."""
    table: dict[str, dict] = {}
    for s in SETS:
        rows = [per_case[c.id] for c in cases if c.set == s and c.id in per_case]
        if rows:
            table[s.name] = _set_entry(s, rows)
    sweep: dict[str, dict] = {}
    for r in SWEEP_RATIOS:
        entries = [e for e in table.values() if e["ratio"] == r and "k" in e and e.get("bm3d")]
        entries = [e for e in entries if e["k"] in SWEEP_K]
        if entries and all("model_on_bm3d_cases" in e for e in entries):
            avg = {
                m: {k: round(float(np.mean([e[src][k] for e in entries])), 4)
                    for k in ("srgb_psnr", "srgb_ssim", "raw_psnr")}
                for m, src in (("bm3d", "bm3d"), ("model", "model_on_bm3d_cases"))
            }
            sweep[f"x{r:g}"] = avg
    return {"sets": table, "sweep": sweep}


def pct(v: float | None) -> str:
    """A fraction as a percentage cell ("n/a" when missing or NaN)."""
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f} %"


def _highlight_cell(model: dict, naive: dict) -> str:
    """Blown highlights in the render: the model's largest channel shift and tint, then naive's."""
    return (
        f"{pct(model.get('highlight_shift'))} / {pct(model.get('highlight_tint'))} "
        f"({pct(naive.get('highlight_shift'))} / {pct(naive.get('highlight_tint'))})"
    )


def _bias_cell(model: dict, naive: dict) -> str:
    """The colour-bias cell: against the input, then against the clean frame for the model and
    for naive (whose figure is the measurement's sampling error and its clip at black)."""
    return (
        f"{pct(model.get('colour_bias'))} ({pct(model.get('colour_bias_vs_clean'))}; "
        f"{pct(naive.get('colour_bias_vs_clean'))})"
    )


def markdown_table(summary: dict) -> str:
    """The evaluation as Markdown: per set, naive and model on every photo, BM3D and the model on
    the photos BM3D ran on, the model's per-frame losses to naive, and the sweep averages."""
    lines = [
        "| set | naive sRGB / SSIM / raw | model sRGB / SSIM / raw | frames below naive "
        "(sRGB, raw) | worst vs naive (dB) | min raw | bias vs input (vs clean; naive vs clean) "
        "| blown highlights: shift / tint (naive) | BM3D sRGB / SSIM (model) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def trio(m: dict) -> str:
        return f"{m['srgb_psnr']:.2f} / {m['srgb_ssim']:.3f} / {m['raw_psnr']:.2f}"

    for name, e in summary["sets"].items():
        m = e.get("model")
        cells = [name, trio(e["naive"])]
        if m:
            cells += [
                trio(m), f"{m['below_naive_srgb']}, {m['below_naive_raw']} of {e['cases']}",
                f"{m['worst_vs_naive_srgb']:+.2f}", f"{m['min_raw_psnr']:.2f}",
                _bias_cell(m, e["naive"]), _highlight_cell(m, e["naive"]),
            ]
        else:
            cells += ["", "", "", "", "", ""]
        if "bm3d" in e:
            b, mb = e["bm3d"], e.get("model_on_bm3d_cases")
            own = f" ({mb['srgb_psnr']:.2f} / {mb['srgb_ssim']:.3f})" if mb else ""
            cells.append(f"{b['srgb_psnr']:.2f} / {b['srgb_ssim']:.3f}{own}, {e['bm3d_cases']}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("sweep"):
        lines += [
            "",
            "| gain sweep average | BM3D sRGB / SSIM | model sRGB / SSIM | model - BM3D |",
            "|---|---|---|---|",
        ]
        for r, avg in summary["sweep"].items():
            b, m = avg["bm3d"], avg["model"]
            lines.append(f"| {r} | {srgb_cell(b)} | {srgb_cell(m)} | {gain_cell(m, b)} |")
    return "\n".join(lines) + "\n"


def srgb_cell(m: dict) -> str:
    """``sRGB PSNR / SSIM`` of a row of figures, for the tables."""
    return f"{m['srgb_psnr']:.2f} / {m['srgb_ssim']:.3f}"


def gain_cell(m: dict, base: dict) -> str:
    """``+x.xx dB / +y.yyy``: sRGB PSNR and SSIM of ``m`` over ``base``."""
    psnr_gain, ssim_gain = m["srgb_psnr"] - base["srgb_psnr"], m["srgb_ssim"] - base["srgb_ssim"]
    return f"{psnr_gain:+.2f} dB / {ssim_gain:+.3f}"


def markdown_table_v1(summary: dict) -> str:
    """A version-1 evaluation (one row per set and method), as older model cards hold it."""
    lines = [
        "| set | method | sRGB PSNR (dB) | sRGB SSIM | raw PSNR (dB) |",
        "|---|---|---|---|---|",
    ]
    names = {"naive": "naive x ratio", "bm3d": "BM3D (GAT, true noise)", "model": "sidraw model"}
    for set_name, entry in summary["sets"].items():
        for method in ("naive", "bm3d", "model"):
            if m := entry.get(method):
                lines.append(
                    f"| {set_name} | {names[method]} | {m['srgb_psnr']:.2f} | "
                    f"{m['srgb_ssim']:.4f} | {m['raw_psnr']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cfa", choices=["bayer", "xtrans"], required=True)
    ap.add_argument("--model", default=None, help="ONNX file (omit: baselines only)")
    ap.add_argument("--out", default="runs/eval")
    ap.add_argument("--data", default=None)
    ap.add_argument(
        "--images", type=int, default=None, help="validation photos (32 Bayer, 4 X-Trans)"
    )
    ap.add_argument("--bm3d-images", type=int, default=None,
                    help="run BM3D on this many photos only (default all)")
    ap.add_argument("--noise-scale", type=float, default=1.0,
                    help="multiply the variances of the model's noise input")
    ap.add_argument("--mean-block", type=int, default=None,
                    help="mean-correction block for the model (default: its card's; 0: none)")
    ap.add_argument("--guard", type=float, default=None,
                    help="residual guard of the mean correction (default: its card's; 0: none)")
    ap.add_argument("--sets", nargs="*", default=None, help=f"set names: {', '.join(SET_NAMES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--update-card", action="store_true",
        help="write the table into the model's cards (for <name>.int8.onnx: its variant entry)",
    )
    a = ap.parse_args(argv)
    images = a.images or (32 if a.cfa == "bayer" else 4)
    s = evaluate(
        a.cfa, a.model, Path(a.out), a.data, images, a.threads, bm3d_images=a.bm3d_images,
        noise_scale=a.noise_scale, sets=tuple(a.sets) if a.sets else None,
        mean_block=a.mean_block, guard=a.guard,
    )
    if a.update_card and a.model:
        from .cards import update_validation, update_variant_validation

        if Path(a.model).stem.endswith(INT8_SUFFIX):
            update_variant_validation(card_beside(a.model), "int8", s, a.model)
        else:
            update_validation(a.model, s)
    print(markdown_table(s))


if __name__ == "__main__":
    main()
