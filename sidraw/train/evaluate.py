"""Evaluation on the held-out validation photos, against two baselines.

Each case is a fixed, seeded noisy realisation of a validation crop (Bayer: up to 512x512
photosites; X-Trans: 612x912, the smallest size LibRaw demosaics X-Trans at). Sets:

* ``A7S2 x100`` / ``x250`` / ``x300``: Sony A7S II noise (ELD) at K = 0.751 DN/e- (the geometric
  middle of the calibrated range), median read and row noise, Gaussian read noise.
* ``other cameras x100``: K, read noise (Gaussian or Tukey-lambda) and row noise drawn per case from
  the darktable-derived ranges (:mod:`sidraw.train.noise`).

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

from ..mosaic import Layout, denormalise_packed, pack, unpack
from . import data as data_mod
from .noise import NoiseParams, a7s2_params, sample_params
from .pairs import Pair, make_pair
from .unet import DOWNSAMPLE
from .unprocess import layout_for

EVAL_VERSION = 1
A7S2_EVAL_K = math.sqrt(0.0939 * 6.011)
XTRANS_CROP = (612, 912)
BAYER_MAX = 512


@dataclass(frozen=True)
class EvalSet:
    """A group of cases: name, exposure ratio and noise source (``a7s2`` or ``darktable``)."""

    name: str
    ratio: float
    source: str


SETS = (
    EvalSet("A7S2 x100", 100.0, "a7s2"),
    EvalSet("A7S2 x250", 250.0, "a7s2"),
    EvalSet("A7S2 x300", 300.0, "a7s2"),
    EvalSet("other cameras x100", 100.0, "darktable"),
)


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
    # Bayer: multiples of 32 photosites, so packed sizes are multiples of 16 (no padding).
    ch, cw = min(BAYER_MAX, h) // 32 * 32, min(BAYER_MAX, w) // 32 * 32
    return (ch, cw) if min(ch, cw) >= 256 else None


def eval_cases(photos: list[data_mod.Photo], cfa: str, max_images: int) -> list[Case]:
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
    return [Case(p.key, c, s, cfa) for s in SETS for p, c in chosen]


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
        noise = a7s2_params(A7S2_EVAL_K)
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
    """An ONNX model run as ``sidraw convert`` runs it (reflect padding to multiples of 16)."""

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, noisy: np.ndarray) -> np.ndarray:
        """(h, w, C) float32 input -> (h, w, C) float32 output clipped to 0..1."""
        h, w, _ = noisy.shape
        ph, pw = -h % DOWNSAMPLE, -w % DOWNSAMPLE
        x = np.pad(noisy, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        y = self.session.run(["output"], {"input": x})[0][0].transpose(1, 2, 0)[:h, :w]
        return np.clip(y, 0.0, 1.0)


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


def metrics(pred: np.ndarray, pair: Pair, ref_img: np.ndarray, renderer: Renderer) -> dict:
    img = renderer(pred)
    return {
        "srgb_psnr": psnr(img, ref_img),
        "srgb_ssim": ssim(img, ref_img),
        "raw_psnr": psnr(pred, pair.clean),
    }


# --- driver --------------------------------------------------------------------------------------


def _save_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def evaluate(
    cfa: str,
    model_path: str | Path | None,
    out: Path,
    data: str | None = None,
    max_images: int = 24,
    threads: int = 2,
    log=print,
) -> dict:
    """Evaluate one model (or only the baselines when ``model_path`` is None).

    Returns the summary dict (also written to ``out/<cfa>_eval.json`` with a Markdown table).
    """
    root = data_mod.data_root(data)
    _, val_e = data_mod.split(data_mod.manifest(root))
    photos = {p.key: p for p in data_mod.load_photos(root, val_e)}
    cases = eval_cases(list(photos.values()), cfa, max_images)
    bm3d_dir = out / f"{cfa}_bm3d_v{EVAL_VERSION}"
    model = OnnxModel(model_path, threads) if model_path else None
    per_case: dict[str, dict] = {}
    t0 = time.perf_counter()
    model_seconds = 0.0
    with tempfile.TemporaryDirectory() as td:
        for i, case in enumerate(cases):
            pair = case_pair(photos[case.key], case)
            renderer = Renderer(pair, Path(td))
            try:
                ref = renderer(pair.clean)
                res = {
                    "naive": metrics(naive(pair), pair, ref, renderer),
                    "bm3d": metrics(cached_bm3d(pair, case, bm3d_dir), pair, ref, renderer),
                }
                if model is not None:
                    tm = time.perf_counter()
                    pred = model(pair.noisy)
                    model_seconds += time.perf_counter() - tm
                    res["model"] = metrics(pred, pair, ref, renderer)
            finally:
                renderer.close()
            per_case[case.id] = res
            if (i + 1) % 8 == 0 or i + 1 == len(cases):
                log(f"{cfa}: {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s")
    summary = summarise(cases, per_case)
    summary["cfa"] = cfa
    summary["model"] = str(model_path) if model_path else None
    summary["images"] = sorted({c.key for c in cases})
    summary["crop"] = "up to 512x512 photosites" if cfa == "bayer" else "612x912 photosites"
    summary["a7s2_k"] = round(A7S2_EVAL_K, 4)
    megapixels = sum(c.crop[0] * c.crop[1] for c in cases) / 1e6
    if model is not None and megapixels > 0:
        summary["model_s_per_mp"] = round(model_seconds / megapixels, 3)
    if model_path:
        _save_json(out / f"{cfa}_eval.json", summary)
        (out / f"{cfa}_eval.md").write_text(markdown_table(summary))
    return summary


def summarise(cases: list[Case], per_case: dict[str, dict]) -> dict:
    """Mean metrics per set and method."""
    table: dict[str, dict] = {}
    for s in SETS:
        rows = [per_case[c.id] for c in cases if c.set == s and c.id in per_case]
        if not rows:
            continue
        entry: dict[str, object] = {"ratio": s.ratio, "noise": s.source, "cases": len(rows)}
        for method in ("naive", "bm3d", "model"):
            vals = [r[method] for r in rows if method in r]
            if vals:
                entry[method] = {
                    k: round(float(np.mean([v[k] for v in vals])), 4) for k in vals[0]
                }
        table[s.name] = entry
    return {"sets": table}


def markdown_table(summary: dict) -> str:
    """The evaluation as a Markdown table: one row per set and method."""
    lines = [
        "| set | method | sRGB PSNR (dB) | sRGB SSIM | raw PSNR (dB) |",
        "|---|---|---|---|---|",
    ]
    names = {"naive": "naive x ratio", "bm3d": "BM3D (GAT, true noise)", "model": "sidraw model"}
    for set_name, entry in summary["sets"].items():
        for method in ("naive", "bm3d", "model"):
            m = entry.get(method)
            if m:
                lines.append(
                    f"| {set_name} | {names[method]} | {m['srgb_psnr']:.2f} | "
                    f"{m['srgb_ssim']:.4f} | {m['raw_psnr']:.2f} |"
                )
        if "model" in entry and "bm3d" in entry:
            d = entry["model"]["srgb_psnr"] - entry["bm3d"]["srgb_psnr"]
            ds = entry["model"]["srgb_ssim"] - entry["bm3d"]["srgb_ssim"]
            lines.append(f"| {set_name} | model - BM3D | {d:+.2f} | {ds:+.4f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cfa", choices=["bayer", "xtrans"], required=True)
    ap.add_argument("--model", default=None, help="ONNX file (omit: baselines only)")
    ap.add_argument("--out", default="runs/eval")
    ap.add_argument("--data", default=None)
    ap.add_argument(
        "--images", type=int, default=None, help="validation photos (24 Bayer, 4 X-Trans)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--update-card", action="store_true", help="write the table into the model's cards"
    )
    a = ap.parse_args(argv)
    images = a.images or (24 if a.cfa == "bayer" else 4)
    s = evaluate(a.cfa, a.model, Path(a.out), a.data, images, a.threads)
    if a.update_card and a.model:
        from .cards import update_validation

        update_validation(a.model, s)
    print(markdown_table(s))


if __name__ == "__main__":
    main()
