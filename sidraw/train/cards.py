"""Model cards: ``weights/<name>.json`` (read by the inference loader), ``<name>.md`` (people)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from ..model import INT8_MAX_PSNR_DROP
from ..mosaic import BAYER_CHANNELS, XTRANS_CHANNELS
from . import noise
from .evaluate import gain_cell, markdown_table, markdown_table_v1, srgb_cell
from .export import OPSET, sha256_file
from .loop import TrainConfig
from .unet import DOWNSAMPLE, UNet, count_params, gflops_per_megapixel

LOSS_NAMES = {
    "l1": "L1", "l2": "L2", "psnr": "Per-patch PSNR (mean of 10 log10 MSE)",
    "log-l1": "Per-patch log L1",
}

DATASETS = [
    ("BSDS500", "Berkeley Segmentation Data Set photos (Arbelaez et al. 2011)",
     "non-commercial research and teaching (Berkeley page); cite Arbelaez et al."),
    ("SunHays80", "Sun & Hays ICCP 2012 scene photos (from SUN)", "unstated; research only"),
    ("Urban100", "11 of Huang et al. CVPR 2015 Flickr building photos", "unstated; research only"),
    ("PolyU_mean", "PolyU real-world noisy image dataset mean images (Xu et al. 2018)",
     "BSD-style licence, non-commercial only; cite Xu et al."),
    ("McMaster18", "McMaster / IMAX crops (Zhang et al. 2011)", "unstated; research only"),
    ("Unsplash", "27 Unsplash photos (SqueezeSoftware/test_files)", "Unsplash License"),
    ("WED_CDM100", "58 Waterloo Exploration Database images (Ma et al. 2017)",
     "unstated; research only"),
]

NORMALISATION = {
    "input": "clip((raw - black) / (white - black) * ratio, -1, 1)",
    "input_clip": [-1, 1],
    "output": "(raw - black) / (white - black)",
    "output_clip": [0, 1],
}


def noise_description() -> dict[str, object]:
    """The noise model and its ranges, for the cards."""
    return {
        "model": "ELD (Wei et al. 2020): K * Poisson(signal / K) + read + row + rounding to DN, "
                 "black added, clipped at white (and at 0, or at black with p = 0.1)",
        "a7s2_probability": noise.A7S2_PROBABILITY,
        "a7s2": {
            "ln_K_uniform": [round(v, 4) for v in noise.A7S2_LN_K],
            "K_units": "DN per electron of a 14-bit sensor (white - black = 16383 - 512)",
            "ln_sigma_read": "N(0.5407 ln K + 1.2182, 0.2675^2) (ELD's Gaussian read-noise fit; "
                             "sidraw 0.1 used the Tukey-lambda scale fit, about half the std)",
            "ln_sigma_row": "N(0.5275 ln K - 0.5917, 0.2943^2)",
        },
        "darktable_derived": {
            "ln_K_uniform": list(noise.DARKTABLE_LN_K),
            "ln_sigma_read": "N(0.5456 ln K + 1.9896, 0.6591^2)",
            "ln_sigma_row": "as A7S2",
            "derivation": "least squares over 9599 channel fits (366 cameras, ISO >= 1600) of "
                          "darktable's noise profiles, K = a * 15871, sigma = sqrt(b) * 15871",
        },
        "read_noise_shape": "Gaussian (p = 0.5) or Tukey-lambda with lambda ~ U(-0.3, 0.1), "
                            "scaled to the same standard deviation",
        "normal_draws_clipped_at_sigma": 2.5,
        "bit_depth": "14-bit (black 512, white 16383); 12-bit (black 256, white 4095, same "
                     "relative noise) with p = 0.2",
        "ratio": "exactly 1 with p = 0.1, log-uniform 50..300 with p = 0.7, else log-uniform "
                 "1..50",
    }


def noise_input_description() -> dict[str, object]:
    """How a noise-conditioned model is told the noise, for the cards."""
    return {
        "input": "noise (N, 2) float32 [a, b]: the amplified input x has variance a * x + b",
        "map": "sqrt(a * max(x, 0) + b) per input value, as C extra input channels "
               "(Brooks et al. 2019)",
        "from": "sidraw.noise_estimate.estimate_noise on the frame's own packed mosaic "
                "(Poisson-Gaussian fit of 2x2 diagonal details in flat patches), a = ratio * "
                "gain, b = (ratio * read)^2; training feeds the same fit of each noisy crop",
        "training_jitter": "variances of half of the training pairs scaled by exp(N(0, 0.35^2))",
    }


def mean_correction_description(block: int, guard: float = 0.0) -> dict[str, object]:
    guarded = {
        "guard": guard,
        "guard_what": f"where a block's residual (about its mean) holds more than {guard:g} times "
                      "the noise variance the fit expects, the network also took signal away: "
                      "the block keeps only that share of the correction, min(1, guard V / E), "
                      "and the rest of the residual goes back (the least-squares share for "
                      "independent noise and lost signal)",
    } if guard else {}
    return {
        "block": block,
        "what": f"the block means ({block}x{block} packed pixels, each averaged with its 3x3 "
                "neighbours, interpolated bilinearly) of the unclipped amplified input minus the "
                "output are added to the output (sidraw.mean_correction): the output keeps the "
                "input's low frequencies, so flat colours keep their level and hue",
        "outliers": "residuals limited to 5 sigma of the fitted noise; photosites at 98 % of "
                    "white and blown highlights excluded",
        **guarded,
    }


def unprocess_description() -> dict[str, object]:
    return {
        "method": "Brooks et al. CVPR 2019: inverse smoothstep, inverse 2.2 gamma, inverse colour "
                  "correction, safe inverse white balance (highlights stay neutral), mosaic",
        "camera_matrices": "random convex mix of dcraw XYZ->cam for Sony ILCE-7S, Canon EOS 5D "
                           "Mark II, Nikon D800, Fujifilm X-T2",
        "white_balance": "red gain U(1.9, 2.4), blue gain U(1.5, 1.9), brightness 1/N(0.8, 0.1)",
        "exposure": "clean linear image scaled by log-uniform 0.5..1",
        "cfa_phase": "random (Bayer 2x2 or X-Trans 6x6 roll of the pattern)",
        "augmentation": "random flips and transposition",
    }


def build_card(
    name: str, version: str, onnx_path: Path, model: UNet, cfg: TrainConfig, info: dict,
    parity: float, validation: dict | None, speeds: list[dict], history: str | None,
    overlap: int | None = None, notes: str | None = None, previous: dict | None = None,
    mean_block: int = 0, tile: int | None = None, guard: float = 0.0,
) -> dict[str, object]:
    """The JSON model card (``overlap``: default tile overlap in packed pixels, if measured;
    ``mean_block``: block edge of the output's mean correction, 0 for none;
    ``previous``: the card of the model this run was warm-started from, whose training is kept
    as the first entries of ``training.runs``)."""
    ucfg = model.config
    block = 2 if cfg.cfa == "bayer" else 3
    hist = []
    if history and Path(history).exists():
        hist = [json.loads(x) for x in Path(history).read_text().splitlines() if x.strip()]
    patch_history = [
        {"from_step": s, "packed_patch": p, "photosites": p * block} for s, p in cfg.patch_history
    ]
    card: dict[str, object] = {
        "name": name,
        "version": version,
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "cfa": cfg.cfa,
        "channels": list(BAYER_CHANNELS if cfg.cfa == "bayer" else XTRANS_CHANNELS),
        "downsample": DOWNSAMPLE,
        "input_name": "input",
        "output_name": "output",
        **({"noise_input": "noise"} if ucfg.noise_map else {}),
        "normalisation": NORMALISATION,
        **({"overlap": overlap} if overlap is not None else {}),
        **({"tile": tile} if tile is not None else {}),
        **(
            {"mean_correction": mean_correction_description(mean_block, guard)}
            if mean_block
            else {}
        ),
        "architecture": {
            "type": "U-Net (Chen et al. 2018, SID), packed raw in / packed raw out",
            "levels": 5,
            "widths": ucfg.widths,
            "width": ucfg.width,
            **({"first_width": ucfg.first_width} if ucfg.first_width else {}),
            "max_mult": ucfg.max_mult,
            "residual": ucfg.residual,
            "noise_map": ucfg.noise_map,
            **({"noise_input": noise_input_description()} if ucfg.noise_map else {}),
            "output": "input + network (residual, head zero-initialised)" if ucfg.residual
            else "network",
            "activation": "LeakyReLU(0.2)",
            "down": "2x2 max-pool", "up": "2x2 transposed conv + skip concat",
            "params": count_params(model),
            "gflops_per_megapixel": round(gflops_per_megapixel(ucfg, block), 1),
            "onnx_opset": OPSET,
            "weights_dtype": "float16 initializers cast to float32 at load",
            "onnx_parity_max_abs_diff": parity,
            "speed_cpu": {
                "hardware": f"2 cores of an AMD EPYC (avx512_bf16), torch {torch.__version__}",
                "note": "train step: batch 8 of 128x128 packed (Bayer) or 96x96 (X-Trans), bf16 "
                        "autocast, Adam; onnx: fp32 onnxruntime, 512x512 packed",
                "widths_tried": speeds,
            },
        },
        "training": {
            "data": {
                "source": "shared/data/clean (734 sRGB photos); JPEGs downscaled by 2 "
                          "(4 above 3200 px), BSDS500 and lossless files kept native",
                "datasets": [{"name": n, "what": w, "terms": t} for n, w, t in DATASETS],
                "validation_split": "32 photos fixed by file (first of each folder in SHA-1 "
                                    "order of names), never trained on",
                "sampling": "per image, weight sqrt(min(megapixels, 1))",
            },
            "unprocess": unprocess_description(),
            "noise": noise_description(),
            "loss": f"{LOSS_NAMES.get(cfg.loss, cfg.loss)} on the packed normalised raw",
            "optimizer": f"AdamW (weight decay {cfg.weight_decay:g}), lr {cfg.lr:g} with "
                         f"{cfg.warmup}-step warm-up and cosine decay to {cfg.lr_min:g}, "
                         f"gradient norm clipped at {cfg.clip:g}"
                         + (f", weights averaged (EMA {cfg.ema:g}) for export" if cfg.ema else ""),
            "precision": "bf16 autocast (CPU), float32 master weights",
            "batch": cfg.batch,
            "patch_sizes": patch_history,
            "steps": info["step"],
            "train_hours": round(info["elapsed_s"] / 3600, 2),
            "threads": cfg.threads,
            "device": cfg.device,
            "init": cfg.init,
            "notes": notes,
            "python": platform.python_version(),
            "val_raw_psnr_history": hist[-20:],
        },
        "validation": validation or {},
    }
    training = card["training"]
    assert isinstance(training, dict)
    runs = list(previous_runs(previous)) if previous else []
    runs.append(_run_summary(training, card["sha256"]))
    training["runs"] = runs
    training["steps_total"] = sum(int(r["steps"]) for r in runs)
    training["train_hours_total"] = round(sum(float(r["train_hours"]) for r in runs), 2)
    return card


def _run_summary(training: dict, sha256: object) -> dict[str, object]:
    keys = ("steps", "train_hours", "threads", "device", "batch", "patch_sizes", "optimizer",
            "init", "notes")
    return {**{k: training.get(k) for k in keys}, "result_sha256": sha256}


def previous_runs(card: dict) -> list[dict]:
    """The training runs behind a card: its ``training.runs``, or its single run for cards
    written before runs were listed."""
    training = card.get("training", {})
    if training.get("runs"):
        return list(training["runs"])
    return [_run_summary(training, card.get("sha256"))]


def _width_label(row: dict[str, object]) -> str:
    """A speed row's width, with its first level's when that differs."""
    first = row.get("first_width")
    return f"{row['width']} (first {first})" if first else str(row["width"])


def markdown_card(card: dict) -> str:
    """The human-readable card."""
    a, t = card["architecture"], card["training"]
    n = t["noise"]
    lines = [
        f"# {card['name']} (version {card['version']})",
        "",
        f"Denoising and brightening network for {card['cfa']} raw files, used by "
        "`sidraw convert`. File `" + card["file"] + f"` ({card['bytes'] / 1e6:.1f} MB), "
        f"sha256 `{card['sha256']}`.",
        "",
        "## Architecture",
        "",
        f"- {a['type']}; 5 levels of widths {a['widths']} (4 poolings: packed h and w must be "
        f"multiples of {card['downsample']}), {a['activation']}, {a['up']}; output = "
        f"{a['output']}.",
        *(
            [f"- First level narrowed to {fw} channels (from {a['width']}): onnxruntime's CPU "
             "convolutions work on blocks of 16 channels, so the full-resolution level, the "
             "costliest, computed 24 as 32 (`sidraw.train.prune`)."]
            if (fw := a.get("first_width")) else []
        ),
        f"- {a['params']:,} parameters, {a['gflops_per_megapixel']} GFLOPs per megapixel "
        "of mosaic.",
        *(
            [f"- Noise input: {ni['input']}; {ni['map']}; from {ni['from']}; "
             f"{ni['training_jitter']}."]
            if (ni := a.get("noise_input")) else []
        ),
        *(
            [f"- Mean correction at inference: {mc['what']}; {mc['outliers']}."]
            + ([f"- Residual guard {mc['guard']:g}: {mc['guard_what']}."] if "guard" in mc else [])
            if (mc := card.get("mean_correction")) else []
        ),
        f"- ONNX opset {a['onnx_opset']}, {a['weights_dtype']}; max |ONNX - PyTorch| = "
        f"{a['onnx_parity_max_abs_diff']:.1e}.",
    ]
    if a["speed_cpu"]["widths_tried"]:
        lines += [
            "",
            "CPU speed of the widths tried (" + a["speed_cpu"]["hardware"] + "; "
            + a["speed_cpu"]["note"] + "):",
            "",
            "| CFA | width | max mult | params | GFLOPs/MP | train step (s) | train s/MP "
            "| ONNX s/MP |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in a["speed_cpu"]["widths_tried"]:
        lines.append(
            f"| {r.get('cfa', card['cfa'])} | {_width_label(r)} | {r.get('max_mult', 16)} | "
            f"{r['params']:,} | {r['gflops_per_mp']} | {r['train_step_s']} | "
            f"{r['train_s_per_mp']} | {r.get('onnx_s_per_mp', '')} |"
        )
    lines += [
        "",
        "## Packing and normalisation",
        "",
        f"- Channels: {', '.join(card['channels'])} (`sidraw.mosaic.pack`; Bayer 2x2 blocks, "
        "X-Trans 3x3 blocks).",
        f"- Input `{card['input_name']}` (N, C, h, w) float32: "
        f"`{card['normalisation']['input']}`.",
        f"- Output `{card['output_name']}` (N, C, h, w) float32: the clean "
        f"`{card['normalisation']['output']}`, clipped to [0, 1] at inference.",
        *(
            [f"- Tiles: {card.get('tile', 512)} packed pixels, overlap {card['overlap']} "
             "(the smallest at which tiled inference matches the whole frame within 2e-3 on a "
             "dead-leaves x300 frame, `sidraw.train.seams`)."]
            if "overlap" in card else []
        ),
        *([staged_line(card["staged"])] if "staged" in card else []),
        "",
        "## Training data",
        "",
        t["data"]["source"] + ". " + t["data"]["validation_split"] + "; sampling "
        + t["data"]["sampling"] + ".",
        "",
        "| dataset | what | terms |",
        "|---|---|---|",
    ]
    for d in t["data"]["datasets"]:
        lines.append(f"| {d['name']} | {d['what']} | {d['terms']} |")
    lines += [
        "",
        "Every licence is non-commercial or unstated except Unsplash's; the weights are trained on "
        "them, so check these terms before any commercial use.",
        "",
        "Unprocessing: " + t["unprocess"]["method"] + "; " + t["unprocess"]["camera_matrices"]
        + "; " + t["unprocess"]["white_balance"] + "; " + t["unprocess"]["exposure"] + "; "
        + t["unprocess"]["cfa_phase"] + ".",
        "",
        "## Noise model",
        "",
        f"- {n['model']}.",
        f"- A7S2 (p = {n['a7s2_probability']}): ln K ~ U{tuple(n['a7s2']['ln_K_uniform'])}, "
        f"K in {n['a7s2']['K_units']}; ln sigma_read ~ {n['a7s2']['ln_sigma_read']}; "
        f"ln sigma_row ~ {n['a7s2']['ln_sigma_row']}.",
        f"- Other cameras: ln K ~ U{tuple(n['darktable_derived']['ln_K_uniform'])}, "
        f"ln sigma_read ~ {n['darktable_derived']['ln_sigma_read']} "
        f"({n['darktable_derived']['derivation']}).",
        f"- Read noise: {n['read_noise_shape']}. Bit depth: {n['bit_depth']}.",
        f"- Ratio: {n['ratio']}.",
        "",
        "## Training",
        "",
        f"- {t['loss']}; {t['optimizer']}; {t['precision']}; batch {t['batch']}.",
        f"- This run: {t['steps']} steps, {t['train_hours']} h on {t['threads']} CPU threads"
        + (f", warm-started from `{t['init']}`" if t["init"] else "") + ".",
        *(
            [
                f"- All runs behind these weights: {t['steps_total']} steps, "
                f"{t['train_hours_total']} h:"
            ]
            + [
                f"  {k + 1}. {r['steps']} steps, {r['train_hours']} h, batch {r['batch']}, "
                + ", ".join(f"{p['packed_patch']} px" for p in r.get("patch_sizes") or [])
                + (f" (from `{r['init']}`)" if r.get("init") else "")
                for k, r in enumerate(t["runs"])
            ]
            if len(t.get("runs", [])) > 1
            else []
        ),
        "- Patch sizes: " + ", ".join(
            f"{p['packed_patch']} packed ({p['photosites']} photosites) from step {p['from_step']}"
            for p in t["patch_sizes"]) + ".",
        *([f"- {t['notes']}"] if t.get("notes") else []),
        "",
        "## Validation",
        "",
    ]
    v = card.get("validation") or {}
    if v.get("sets") and v.get("eval_version", 1) >= 2:
        lines += [
            f"{len(v.get('images', []))} held-out photos ({v.get('crop')}), fixed seeded noise "
            "(`sidraw.train.evaluate`, version 2): the A7S2 gain sweep (K = 0.1, 0.75, 3, 6 "
            "DN/e-, median read and row noise at each K) at x100, x250 and x300, the identity "
            "case (clean exposure at ratio 1, lowest gain), and the other-camera set "
            "(darktable-derived noise drawn per image). Naive and the model on every photo; "
            f"BM3D (generalised Anscombe transform, true noise) on {len(v.get('bm3d_images', []))} "
            "of them, and the model on those same cases in brackets. sRGB metrics on the 16-bit "
            "image LibRaw renders (`sidraw.render`) from a DNG, against the clean mosaic rendered "
            "the same way; raw PSNR on the packed normalised mosaic. 'bias': the largest "
            "per-channel mean error over flat patches within range, relative to their signal. "
            "'blown highlights': flat patches at white in the clean frame (no output in range "
            "can be unbiased there), in the render: the largest per-channel change against the "
            "reference and the tint (spread of the changes between channels)."
            + ("" if v.get("noise_scale", 1.0) == 1.0
               else f" Noise input scaled by {v['noise_scale']}."),
            "",
            markdown_table(v),
        ]
        if "model_s_per_mp" in v:
            lines.append(f"Network time in the evaluation: {v['model_s_per_mp']} s per megapixel.")
    elif v.get("sets"):
        lines += [
            f"{len(v.get('images', []))} held-out photos ({v.get('crop')}), fixed seeded noise; "
            f"A7S2 sets at K = {v.get('a7s2_k')} DN/e- with median read/row noise, the "
            "other-camera set with darktable-derived noise drawn per image. sRGB metrics on the "
            "16-bit image rendered by LibRaw (`sidraw.render`) from a DNG; the clean mosaic "
            "rendered the same way is the reference. BM3D runs per packed channel after a "
            "generalised Anscombe transform with the true noise parameters.",
            "",
            markdown_table_v1(v),
        ]
        if "model_s_per_mp" in v:
            lines.append(f"Network time in the evaluation: {v['model_s_per_mp']} s per megapixel.")
    else:
        lines.append("Not evaluated.")
    lines += variant_section(card)
    return "\n".join(lines) + "\n"


def staged_line(staged: dict) -> str:
    """The Markdown card's line on staged inference (``staged``: the card's entry)."""
    level, context = staged["level"], staged["context"]
    return (
        f"- Staged inference (`sidraw.staged`, used by default): levels {level + 1} and deeper "
        f"run once on the frame at 1/{2**level} size (in overlapping tiles only beyond "
        f"{staged['deep_tile']} pixels a side there), the first {level} levels in tiles of "
        f"{staged.get('tile', 'the card tile')} packed pixels that read {context} more around "
        "them: the smallest context at which the result equals the network on the whole frame "
        f"within {staged['tolerance']:g} (`sidraw.staged.measure_context`). Their skip "
        "connections are held as float16 between the passes (within a few 14-bit steps of "
        "the float32 result)."
    )


def write_cards(
    out: Path, name: str, version: str, onnx_path: Path, model: UNet, cfg: TrainConfig,
    info: dict, parity: float, *, validation: dict | None = None, speeds: list[dict] | None = None,
    history: str | None = None, overlap: int | None = None, notes: str | None = None,
    previous: dict | None = None, mean_block: int = 0, tile: int | None = None,
    guard: float = 0.0,
) -> dict[str, object]:
    """Write ``<name>.json`` and ``<name>.md`` next to the ONNX file; returns the card."""
    card = build_card(
        name, version, onnx_path, model, cfg, info, parity, validation, speeds or [], history,
        overlap, notes, previous, mean_block, tile, guard,
    )
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown_card(card))
    return card


#: Per-set figures of a variant's evaluation kept in the card (floor and quality).
VARIANT_FIGURES = (
    "srgb_psnr", "srgb_ssim", "raw_psnr", "below_naive_srgb", "below_naive_raw", "min_raw_psnr",
    "colour_bias", "highlight_tint",
)


def variant_validation(card: dict, summary: dict) -> dict:
    """The evaluation of a reduced-precision copy of a card's network against the card's own.

    Both evaluations must hold the same cases: the naive rows (which do not depend on the
    network) must match set by set, or the comparison is refused.

    Returns:
        ``{"validation": {set: figures}, "psnr_drop_db": worst sRGB loss, "raw_psnr_drop_db":
        worst raw loss}`` over the sets both hold.
    """
    own = (card.get("validation") or {}).get("sets") or {}
    rows, drops, raw_drops = {}, [], []
    for name, e in summary["sets"].items():
        if name not in own or "model" not in e:
            continue
        if own[name]["cases"] != e["cases"] or not _same_figures(own[name]["naive"], e["naive"]):
            raise ValueError(f"set {name!r}: not the cases of the card's own evaluation")
        rows[name] = {k: e["model"][k] for k in VARIANT_FIGURES}
        drops.append(own[name]["model"]["srgb_psnr"] - e["model"]["srgb_psnr"])
        raw_drops.append(own[name]["model"]["raw_psnr"] - e["model"]["raw_psnr"])
    if not rows:
        raise ValueError("no set in common with the card's own evaluation")
    result: dict = {
        "validation": rows,
        "psnr_drop_db": round(max(drops), 3),
        "raw_psnr_drop_db": round(max(raw_drops), 3),
    }
    # The gain sweep's averages, beside the BM3D figures of the card's own evaluation.
    own_sweep = (card.get("validation") or {}).get("sweep") or {}
    sweep = {r: e["model"] for r, e in (summary.get("sweep") or {}).items() if r in own_sweep}
    if sweep:
        result["sweep"] = sweep
    return result


#: Largest difference between two evaluations' naive figures (dB, or SSIM) that still counts as
#: the same cases: the rendering's float rounding moves the 4th decimal, another noise draw the 2nd.
SAME_CASES_TOLERANCE = 1e-3


def _same_figures(a: dict, b: dict) -> bool:
    """Whether two rows of figures name the same figures with the same values, within
    :data:`SAME_CASES_TOLERANCE`."""
    return a.keys() == b.keys() and all(
        abs(float(a[k]) - float(b[k])) <= SAME_CASES_TOLERANCE for k in a
    )


def update_variant_validation(
    card_path: str | Path, kind: str, summary: dict, variant_path: str | Path
) -> dict:
    """Put the evaluation of the ``kind`` variant (e.g. ``"int8"``) into the cards at
    ``card_path`` (checks the variant file's sha256 against the card)."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    variant = card.get("variants", {}).get(kind)
    if variant is None or variant.get("sha256") != sha256_file(variant_path):
        raise ValueError(f"{card_path}: no {kind} variant with the sha256 of {variant_path}")
    variant.update(variant_validation(card, summary))
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    card_path.with_suffix(".md").write_text(markdown_card(card))
    return card


def variant_section(card: dict) -> list[str]:
    """Markdown lines on the card's INT8 variant (none without an evaluated one)."""
    q = card.get("variants", {}).get("int8")
    if not q or "validation" not in q:
        return []
    own = card["validation"]["sets"]
    chosen = q["psnr_drop_db"] <= INT8_MAX_PSNR_DROP
    lines = [
        "",
        f"## INT8 variant (`{q['file']}`)",
        "",
        f"`sidraw convert --precision int8` runs a quantised copy of these weights (sha256 "
        f"`{q['sha256']}`): INT8 QDQ, per-channel int8 weights and uint8 activations, layers in "
        f"float: {q.get('float_layers', 'none')}; calibration: {q.get('calibration', '')}. "
        f"Worst loss against float32 on the validation above: {q['psnr_drop_db']:.2f} dB sRGB, "
        f"{q['raw_psnr_drop_db']:.2f} dB raw; `--precision auto` uses it only at "
        f"{INT8_MAX_PSNR_DROP} dB or less, "
        + ("so it does, on CPUs." if chosen else "so it does not."),
        "",
        "| set | fp32 sRGB / raw | int8 sRGB / raw | int8 - fp32 | frames below naive (sRGB, "
        "raw) | min raw | bias | highlight tint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in q["validation"].items():
        f = own[name]["model"]
        lines.append(
            f"| {name} | {f['srgb_psnr']:.2f} / {f['raw_psnr']:.2f} | {m['srgb_psnr']:.2f} / "
            f"{m['raw_psnr']:.2f} | {m['srgb_psnr'] - f['srgb_psnr']:+.2f} / "
            f"{m['raw_psnr'] - f['raw_psnr']:+.2f} | {m['below_naive_srgb']}, "
            f"{m['below_naive_raw']} | {m['min_raw_psnr']:.2f} | {100 * m['colour_bias']:.2f} % "
            f"| {100 * m['highlight_tint']:.2f} % |"
        )
    if q.get("sweep"):
        lines += [
            "",
            "| gain sweep average | BM3D sRGB / SSIM | fp32 sRGB / SSIM | int8 sRGB / SSIM "
            "| int8 - BM3D |",
            "|---|---|---|---|---|",
        ]
        for ratio, m in q["sweep"].items():
            e = card["validation"]["sweep"][ratio]
            b, f = e["bm3d"], e["model"]
            lines.append(
                f"| {ratio} | {srgb_cell(b)} | {srgb_cell(f)} | {srgb_cell(m)} | "
                f"{gain_cell(m, b)} |"
            )
    if "speed" in q:
        lines += ["", q["speed"]]
    return lines


def update_validation(onnx_path: str | Path, summary: dict) -> dict:
    """Put an evaluation summary into the cards next to ``onnx_path`` (checks the sha256)."""
    onnx_path = Path(onnx_path)
    json_path = onnx_path.with_suffix(".json")
    card = json.loads(json_path.read_text())
    if card["sha256"] != sha256_file(onnx_path):
        raise ValueError(f"{json_path}: sha256 does not match {onnx_path.name}")
    card["validation"] = summary
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    onnx_path.with_suffix(".md").write_text(markdown_card(card))
    return card
