"""Scoring sidraw on real short/long pairs: the library behind ``sidraw eval --pairs LIST``.

For every pair (:mod:`sidraw.pairs`) the short exposure is brightened by the pair's ratio two ways:

* ``naive``: ``clip((short - black) / (white - black) * ratio, 0, 1)``;
* ``model``: the network run exactly as ``sidraw convert --ratio R`` runs it
  (:func:`sidraw.pipeline.denoise`: tiles, the noise fit of the short frame for noise-conditioned
  models, highlights made white), giving a clean uint16 mosaic.

Each is scored against the long exposure:

* ``raw_psnr``: PSNR of the packed mosaic normalised to 0 (black) .. 1 (white), both clipped to
  0..1, as SID and ELD report it;
* ``srgb_psnr`` and ``srgb_ssim``: of the 16-bit sRGB renders through sidraw's render path
  (:func:`sidraw.render.render`, LibRaw with the long file's metadata), the long file's own render
  being the reference.

Only one pair is in memory at a time: a full SID frame (4240 x 2832) peaks at 1.6 GB (measured,
naive and the bundled model, one thread). Results are
grouped by ratio bucket (x100 / x250 / x300 as SID; other ratios get a bucket of their own).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import CameraProfile, complete_iso, profile_estimate
from .errors import SidrawError
from .model import Device, ModelCache, Network
from .mosaic import Layout, denormalise_packed, normalise_packed, pack, unpack
from .noise_estimate import NoiseEstimate
from .pairs import PairSet, RawPair
from .pipeline import ConvertOptions, denoise, estimate_file_noise, noise_report
from .preview import naive_mosaic
from .raw import RawFile, open_raw
from .render import render

#: SID's ratio buckets; a pair within BUCKET_TOLERANCE of one belongs to it.
SID_BUCKETS = (100.0, 250.0, 300.0)
BUCKET_TOLERANCE = 0.1
#: Edge (photosites of the render) of the before/after crops.
CROP_EDGE = 384
METHODS = ("naive", "model", "bm3d")


def bm3d_packed(raw: RawFile, ratio: float, estimate: NoiseEstimate) -> np.ndarray:
    """BM3D of a short frame given its noise, per packed channel: generalised Anscombe transform
    with the fitted gain and read noise, BM3D at sigma 1, closed-form unbiased inverse
    (as :func:`sidraw.train.evaluate.bm3d_gat`, which is given the true noise instead).

    Returns:
        (h, w, C) float32 amplified estimate, 0..1.
    """
    import bm3d

    from .train.evaluate import _gat_inverse

    x = normalise_packed(pack(raw.mosaic, raw.info.layout), raw.info.layout, raw.info.black,
                         raw.info.white)
    gain = max(estimate.gain, 1e-9)  # normalised variance per unit of signal
    sigma = estimate.read / gain  # read noise in "electrons" of this gain
    out = np.empty(x.shape, np.float32)
    for c in range(x.shape[2]):
        f = 2.0 * np.sqrt(np.maximum(x[..., c] / gain + 3 / 8 + sigma**2, 0.0))
        out[..., c] = _gat_inverse(bm3d.bm3d(f, 1.0), sigma) * gain * ratio
    return np.clip(out, 0.0, 1.0)


def bucket_of(ratio: float) -> str:
    """``"x100"``, ``"x250"`` or ``"x300"`` for ratios within 10 % of SID's, else ``"x<ratio>"``."""
    for b in SID_BUCKETS:
        if abs(ratio / b - 1) <= BUCKET_TOLERANCE:
            return f"x{b:g}"
    return f"x{ratio:.3g}"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two arrays in 0..1 (float64 accumulation)."""
    diff = np.asarray(a, np.float32) - np.asarray(b, np.float32)
    mse = float(np.mean(np.square(diff, dtype=np.float64)))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W, 3) images in 0..1 (Gaussian window sigma 1.5, data range 1), averaged
    over channels; float32, one channel at a time (bounded memory on full frames). The formula of
    :func:`sidraw.train.evaluate.ssim`."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float32), b[..., ch].astype(np.float32)
        mx, my = gaussian_filter(x, 1.5), gaussian_filter(y, 1.5)
        sxx = gaussian_filter(x * x, 1.5) - mx * mx
        syy = gaussian_filter(y * y, 1.5) - my * my
        sxy = gaussian_filter(x * y, 1.5) - mx * my
        num = (2 * mx * my + c1) * (2 * sxy + c2)
        den = (mx**2 + my**2 + c1) * (sxx + syy + c2)
        vals.append(float(np.mean((num / den)[5:-5, 5:-5], dtype=np.float64)))
    return float(np.mean(vals))


def packed_normalised(raw: RawFile, mosaic: np.ndarray | None = None) -> np.ndarray:
    """(h, w, C) float32 packed mosaic of a file (or ``mosaic`` with its levels), 0..1, clipped."""
    info = raw.info
    layout: Layout = info.layout
    src = raw.mosaic if mosaic is None else mosaic
    x = normalise_packed(pack(src, layout), layout, info.black, info.white)
    return np.clip(x, 0.0, 1.0, out=x)


@dataclass
class _ShortResult:
    """What is kept of the short frame once it is closed: the two (H, W) uint16 mosaics, their
    packed 0..1 versions, the noise report and the network's seconds."""

    mosaics: dict[str, np.ndarray]
    packed: dict[str, np.ndarray]
    noise: dict[str, Any] | None
    seconds: float


def model_noise(
    raw: RawFile, pair: RawPair, profile: CameraProfile | None
) -> tuple[NoiseEstimate, dict[str, Any]]:
    """The noise a noise-conditioned model is told for a short frame, and its report: the camera
    profile's (``sidraw calibrate``) when one applies to the pair's camera and ISO, else the
    frame's own fit, as at convert time (:func:`sidraw.pipeline.estimate_file_noise`)."""
    match = complete_iso(profile, pair.camera, pair.iso) if profile is not None else None
    if match is None:
        checked = estimate_file_noise(raw)
        return checked.estimate, {**noise_report(checked, raw), "source": "fit"}
    white_range = float(raw.info.white) - float(np.mean(raw.info.black))
    estimate = profile_estimate(match[1], white_range)
    k, read = estimate.in_dn(white_range)
    report = {"k_dn_per_electron": round(k, 4), "read_dn": round(read, 3),
              "source": f"profile ISO {match[0]}"}
    return estimate, report


def _brighten_short(
    pair: RawPair, network: Network | None, tile: int | None, profile: CameraProfile | None,
    with_bm3d: bool = False,
) -> _ShortResult:
    """Naive and model mosaics of a pair's short frame (closed on return)."""
    opts = ConvertOptions(ratio=pair.ratio, **({"tile": tile} if tile else {}))
    with open_raw(pair.short) as raw:
        # clip(clip(x, 0, 1) * r, 0, 1) == clip(x * r, 0, 1) for r >= 1
        naive = np.clip(packed_normalised(raw) * np.float32(pair.ratio), 0.0, 1.0)
        mosaics = {"naive": naive_mosaic(raw, pair.ratio)}
        packed = {"naive": naive}
        noise: dict[str, Any] | None = None
        seconds = 0.0
        if network is not None:
            estimate = None
            if network.card.noise_input:
                estimate, noise = model_noise(raw, pair, profile)
            t0 = time.perf_counter()
            clean, _ = denoise(raw, network, opts, noise=estimate)
            seconds = time.perf_counter() - t0
            mosaics["model"] = clean
            packed["model"] = packed_normalised(raw, clean)
        if with_bm3d:
            estimate = model_noise(raw, pair, profile)[0]
            packed["bm3d"] = bm3d_packed(raw, pair.ratio, estimate)
            info = raw.info
            mosaics["bm3d"] = unpack(
                denormalise_packed(packed["bm3d"], info.layout, info.black, info.white),
                info.layout, raw.mosaic.shape,
            )
    return _ShortResult(mosaics, packed, noise, seconds)


def _crop(img: np.ndarray, edge: int) -> np.ndarray:
    h, w = img.shape[:2]
    e = min(edge, h, w)
    y0, x0 = (h - e) // 2, (w - e) // 2
    return img[y0 : y0 + e, x0 : x0 + e]


def crop_jpeg(crops: list[np.ndarray]) -> bytes:
    """A JPEG of (e, e, 3) uint16 sRGB crops side by side, 8 px apart (left to right as given)."""
    from PIL import Image

    e = max(c.shape[0] for c in crops)
    canvas = np.zeros((e, len(crops) * (e + 8) - 8, 3), np.uint8)
    for i, c in enumerate(crops):
        canvas[: c.shape[0], i * (e + 8) : i * (e + 8) + c.shape[1]] = (c >> 8).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def score_pair(
    pair: RawPair,
    network: Network | None,
    *,
    crop_path: Path | None = None,
    tile: int | None = None,
    profile: CameraProfile | None = None,
    with_bm3d: bool = False,
) -> dict[str, Any]:
    """Scores of naive amplification, the model and (``with_bm3d``, slow) BM3D on one pair.

    Args:
        pair: the pair.
        network: the model (None: naive only).
        crop_path: where to write a before/after JPEG (naive | model | long, centre crops).
        tile: tile edge in packed pixels (default: convert's).
        profile: a camera profile whose noise a noise-conditioned model is told, where it
            applies (else the frame's fit).
        with_bm3d: also BM3D given the same noise (:func:`bm3d_packed`; minutes per 12 MP).

    Returns:
        ``{"pair": ..., "bucket": ..., "naive": {raw_psnr, srgb_psnr, srgb_ssim}, "model":
        {...}, "noise": ..., "model_seconds": ...}``.
    """
    short = _brighten_short(pair, network, tile, profile, with_bm3d)
    row: dict[str, Any] = {"pair": pair.to_dict(), "bucket": bucket_of(pair.ratio)}
    crops: list[np.ndarray] = []
    with open_raw(pair.long) as long:
        gt = packed_normalised(long)
        ref = render(long.handle)  # the long exposure's own pixels, before any are replaced
        ref_f = ref.astype(np.float32) / 65535
        ref_crop = _crop(ref, CROP_EDGE)
        del ref
        for method, mosaic in short.mosaics.items():
            if mosaic.shape != long.mosaic.shape:
                raise ValueError(f"{pair.short}: mosaic {mosaic.shape} != {long.mosaic.shape}")
            img = render(long.handle, mosaic)
            img_f = img.astype(np.float32) / 65535
            row[method] = {
                "raw_psnr": round(psnr(short.packed[method], gt), 4),
                "srgb_psnr": round(psnr(img_f, ref_f), 4),
                "srgb_ssim": round(ssim(img_f, ref_f), 5),
            }
            crops.append(_crop(img, CROP_EDGE))
            del img, img_f
    if crop_path is not None:
        crop_path.parent.mkdir(parents=True, exist_ok=True)
        crop_path.write_bytes(crop_jpeg([*crops, ref_crop]))
        row["crop"] = str(crop_path)
    if network is not None:
        row["noise"] = short.noise
        row["model_seconds"] = round(short.seconds, 3)
    return row


def _mean(rows: list[dict[str, Any]], method: str) -> dict[str, float]:
    return {
        k: round(float(np.mean([r[method][k] for r in rows])), 4)
        for k in ("raw_psnr", "srgb_psnr", "srgb_ssim")
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean metrics per ratio bucket (and ``all``), with the model's gain over naive and the
    number of pairs where the model is below naive (sRGB PSNR)."""
    order = sorted({r["bucket"] for r in rows}, key=lambda b: float(b[1:]))
    out: dict[str, Any] = {}
    for name, group in [(b, [r for r in rows if r["bucket"] == b]) for b in order] + [
        ("all", rows)
    ]:
        if not group:
            continue
        entry: dict[str, Any] = {"pairs": len(group), "naive": _mean(group, "naive")}
        if "bm3d" in group[0]:
            entry["bm3d"] = _mean(group, "bm3d")
        if "model" in group[0]:
            entry["model"] = _mean(group, "model")
            d = [r["model"]["srgb_psnr"] - r["naive"]["srgb_psnr"] for r in group]
            entry["model_minus_naive_srgb"] = round(float(np.mean(d)), 4)
            entry["below_naive"] = int(np.sum(np.array(d) < 0))
        out[name] = entry
    return out


def evaluate_pairs(
    pairs: PairSet,
    *,
    model: str | os.PathLike[str] | None = None,
    use_model: bool = True,
    device: Device = "cpu",
    threads: int | None = None,
    crops: int = 3,
    out: Path | None = None,
    tile: int | None = None,
    profile: CameraProfile | None = None,
    with_bm3d: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the model (bundled or ``model``) and naive amplification on every usable pair.

    Args:
        pairs: the checked pairs (:func:`sidraw.pairs.load_pairs`).
        model: a model card, ONNX file or folder (None: the bundled models).
        use_model: False scores naive amplification only.
        crops: before/after JPEGs for the first this many pairs (in ``out/crops``).
        out: folder for ``pairs_eval.json``, ``pairs_eval.md`` and the crops (None: nothing
            written).
        profile: camera profile for noise-conditioned models (see :func:`model_noise`).
        with_bm3d: also score BM3D (slow).

    Returns:
        ``{"source", "model", "pairs": [per pair], "buckets": {...}, "refused": [lines]}``.
    """
    cache = ModelCache(model, device, threads) if use_model else None
    rows: list[dict[str, Any]] = []
    failed: list[str] = [str(e) for e in pairs.refused]
    name = None
    for i, pair in enumerate(pairs.pairs):
        crop = out / "crops" / f"{i:03d}_{pair.short.stem}.jpg" if out and i < crops else None
        try:
            network = cache.get(_kind(pair.cfa)) if cache is not None else None
            name = network.card.name if network is not None else name
            rows.append(score_pair(pair, network, crop_path=crop, tile=tile, profile=profile,
                                   with_bm3d=with_bm3d))
        except SidrawError as exc:
            failed.append(str(exc))
            log(f"✗ {exc}")
            continue
        r = rows[-1]
        model_text = f", model {r['model']['srgb_psnr']:.2f} dB" if "model" in r else ""
        log(f"{i + 1}/{len(pairs.pairs)} {pair.short.name} x{pair.ratio:g}: "
            f"naive {r['naive']['srgb_psnr']:.2f} dB{model_text}")
    summary = {
        "source": str(pairs.source),
        "model": name,
        "pairs": rows,
        "buckets": summarise(rows) if rows else {},
        "refused": failed,
    }
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        (out / "pairs_eval.json").write_text(json.dumps(summary, indent=1))
        (out / "pairs_eval.md").write_text(markdown_table(summary))
    return summary


def _kind(cfa: str) -> str:
    return "bayer" if len(cfa) == 4 else "xtrans"


def markdown_table(summary: dict[str, Any]) -> str:
    """The per-bucket table: pairs, naive and model raw PSNR / sRGB PSNR / SSIM, model - naive."""
    bm3d = any("bm3d" in e for e in summary["buckets"].values())
    lines = [
        "| ratio | pairs | naive raw / sRGB / SSIM | model raw / sRGB / SSIM | model - naive "
        "(sRGB dB) | pairs below naive |" + (" BM3D raw / sRGB / SSIM |" if bm3d else ""),
        "|---|---|---|---|---|---|" + ("---|" if bm3d else ""),
    ]

    def trio(m: dict[str, float]) -> str:
        return f"{m['raw_psnr']:.2f} / {m['srgb_psnr']:.2f} / {m['srgb_ssim']:.3f}"

    for name, e in summary["buckets"].items():
        cells = [name, str(e["pairs"]), trio(e["naive"])]
        if "model" in e:
            gain = f"{e['model_minus_naive_srgb']:+.2f}"
            cells += [trio(e["model"]), gain, str(e["below_naive"])]
        else:
            cells += ["", "", ""]
        if bm3d:
            cells.append(trio(e["bm3d"]) if "bm3d" in e else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
