"""``sidraw train`` and ``sidraw eval``: command functions registered by the main app.

The logic lives in :mod:`sidraw.train`; torch is imported only when a command runs, so ``sidraw``
works without the ``train`` extra.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

_TRAIN_MODULES = ("torch", "onnx", "scipy", "PIL", "bm3d")


def _require_train_extra(modules: tuple[str, ...] = _TRAIN_MODULES) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        typer.echo(
            f"error: training needs {', '.join(missing)}; install sidraw[train] "
            "(pip install 'sidraw[train]').",
            err=True,
        )
        raise typer.Exit(code=2)


def train_command(
    cfa: Annotated[str, typer.Option(help="Sensor layout: bayer or xtrans.")] = "bayer",
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, history.jsonl.")] = Path(
        "runs/bayer"
    ),
    width: Annotated[int, typer.Option(help="Channels of the first U-Net level.")] = 24,
    first_width: Annotated[
        int, typer.Option(help="Channels of the full-resolution level, if not --width.")
    ] = 0,
    max_mult: Annotated[
        int, typer.Option(help="Cap on the width multiplier of the deepest levels (SID: 16).")
    ] = 8,
    patch: Annotated[int, typer.Option(help="Packed patch edge (grow it on resume).")] = 128,
    batch: Annotated[int, typer.Option(help="Patches per step.")] = 8,
    steps: Annotated[int, typer.Option(help="Stop after this many steps in all.")] = 100_000,
    minutes: Annotated[
        float, typer.Option(help="Stop after this much training time in all (0: no limit).")
    ] = 0.0,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-4,
    residual: Annotated[
        bool, typer.Option(help="Output = input + correction (head starts at zero).")
    ] = True,
    noise_map: Annotated[
        bool, typer.Option(help="Condition on the frame's fitted noise (second input).")
    ] = True,
    loss: Annotated[str, typer.Option(help="l1, or l2 for a final phase.")] = "l1",
    workers: Annotated[int, typer.Option(help="Processes that make training pairs.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoint.pt.")] = False,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Warm-start from an ONNX model (matching tensors) or checkpoint; the network "
            "takes its shape (from the model card beside an ONNX file)."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Data folder holding clean/ (default ../shared/data).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="PyTorch CPU threads.")] = 2,
    checkpoint_minutes: Annotated[float, typer.Option(help="Minutes between checkpoints.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune on real short/long pairs (SID list, short/+long/ folder or CSV), "
            "from the bundled model or --init (its architecture is kept)."
        ),
    ] = None,
    held_out: Annotated[
        Path | None,
        typer.Option(help="With --pairs: pairs for the early stop (default: a share of scenes)."),
    ] = None,
    held_out_share: Annotated[
        float, typer.Option(help="With --pairs: share of scenes held out for the early stop.")
    ] = 0.2,
    few_shot: Annotated[
        bool, typer.Option(help="With --pairs: train only the first and last layers and biases.")
    ] = False,
    synthetic_mix: Annotated[
        float, typer.Option(help="With --pairs: share of synthetic pairs in each batch.")
    ] = 0.0,
    name: Annotated[
        str, typer.Option(help="With --pairs: name of the tuned model (card and ONNX file).")
    ] = "sidraw-tuned",
    eval_every: Annotated[
        int, typer.Option(help="With --pairs: steps between held-out evaluations.")
    ] = 25,
    patience: Annotated[
        int, typer.Option(help="With --pairs: evaluations without gain before stopping.")
    ] = 4,
    cache: Annotated[
        Path | None,
        typer.Option(help="With --pairs: folder for packed crops (default <out>/cache)."),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="With --pairs: camera profile (sidraw calibrate) for the noise."),
    ] = None,
) -> None:
    """Train a denoising U-Net on synthetic low-light raw pairs, or fine-tune one on real pairs
    (--pairs): the result is a folder that sidraw convert --model DIR uses."""
    if pairs is not None:
        _require_train_extra(("torch", "onnx"))
        _train_pairs(
            pairs, held_out, out, init, _PairOptions(
                patch=patch, batch=batch, steps=steps, minutes=minutes, lr=lr, seed=seed,
                device=device, threads=threads, held_out_share=held_out_share,
                few_shot=few_shot, synthetic_mix=synthetic_mix, name=name,
                eval_every=eval_every, patience=patience, cache=cache, data=data,
                profile=profile,
            ),
        )
        return
    _require_train_extra()
    from .train.loop import TrainConfig, Trainer

    cfg = TrainConfig(
        cfa=cfa, width=width, max_mult=max_mult, patch=patch, batch=batch, steps=steps,
        minutes=minutes, lr=lr, seed=seed, device=device, threads=threads,
        checkpoint_minutes=checkpoint_minutes, data=str(data) if data else None,
        init=str(init) if init else None, residual=residual, noise_map=noise_map, loss=loss,
        workers=workers, first_width=first_width,
    )
    if init is not None and not resume:
        from .train.loop import with_shape_of_file

        cfg = with_shape_of_file(cfg, init)
    out.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, out, resume=resume).run()


def eval_command(
    models: Annotated[
        list[Path] | None,
        typer.Argument(help="ONNX models to evaluate; the CFA is read from each JSON card."),
    ] = None,
    cfa: Annotated[
        str | None, typer.Option(help="Evaluate only the baselines for this CFA (no model).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for tables, JSON and baseline cache.")] = Path(
        "runs/eval"
    ),
    images: Annotated[
        int | None, typer.Option(help="Validation photos (default 32 Bayer, 4 X-Trans).")
    ] = None,
    bm3d_images: Annotated[
        int | None, typer.Option(help="Run the (slow) BM3D baseline on this many photos only.")
    ] = None,
    noise_scale: Annotated[
        float, typer.Option(help="Scale the model's noise input (robustness check).")
    ] = 1.0,
    data: Annotated[
        Path | None, typer.Option(help="Data folder holding clean/ (default ../shared/data).")
    ] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 2,
    update_card: Annotated[
        bool, typer.Option(help="Write each model's table into its JSON and Markdown cards.")
    ] = False,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="Score on real short/long pairs instead: a SID list, a folder with short/ and "
            "long/, or a CSV with short,long columns."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="With --pairs: model card, ONNX file or folder (default: bundled)."),
    ] = None,
    crops: Annotated[
        int, typer.Option(help="With --pairs: before/after JPEGs for this many pairs.")
    ] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --pairs: print the results as JSON.")
    ] = False,
    naive_only: Annotated[
        bool, typer.Option(help="With --pairs: score naive amplification only.")
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(help="With --pairs: camera profile (sidraw calibrate) for the noise input."),
    ] = None,
    bm3d: Annotated[
        bool, typer.Option("--bm3d", help="With --pairs: also score BM3D (slow: minutes a frame).")
    ] = False,
) -> None:
    """Evaluate models against naive amplification and BM3D on held-out photos, or with --pairs
    on real short/long exposure pairs."""
    if pairs is not None:
        _eval_pairs(pairs, model or (models[0] if models else None), out, threads, crops,
                    as_json, naive_only, profile, bm3d)
        return
    _require_train_extra(("onnx", "scipy", "PIL", "bm3d"))
    import json

    from .train.evaluate import evaluate, markdown_table

    jobs: list[tuple[str, Path | None]] = []
    for m in models or []:
        card = m.with_suffix(".json")
        kind = json.loads(card.read_text())["cfa"] if card.exists() else cfa
        if kind not in ("bayer", "xtrans"):
            raise typer.BadParameter(f"{m}: no model card and no --cfa")
        jobs.append((kind, m))
    if not jobs:
        if cfa is None:
            raise typer.BadParameter("give model files or --cfa")
        jobs.append((cfa, None))
    for kind, model in jobs:
        n = images or (32 if kind == "bayer" else 4)
        summary = evaluate(
            kind, model, out, str(data) if data else None, n, threads, typer.echo,
            bm3d_images=bm3d_images, noise_scale=noise_scale,
        )
        if update_card and model is not None:
            from .train.cards import update_validation

            update_validation(model, summary)
        typer.echo(f"\n{model or kind}\n")
        typer.echo(markdown_table(summary))


def _eval_pairs(
    pairs: Path, model: Path | None, out: Path, threads: int, crops: int, as_json: bool,
    naive_only: bool, profile: Path | None = None, bm3d: bool = False,
) -> None:
    """``sidraw eval --pairs``: the table per ratio bucket (or JSON); exit 1 if a pair failed."""
    _require_train_extra(("scipy", "PIL", "bm3d") if bm3d else ("scipy", "PIL"))
    import json

    from .calibrate import load_profile
    from .errors import SidrawError
    from .pair_eval import evaluate_pairs, markdown_table
    from .pairs import load_pairs

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    try:
        camera = load_profile(profile) if profile is not None else None
        found = load_pairs(pairs)
        for line in found.refused:
            log(f"✗ {line}")
        if not found.pairs:
            log(f"error: no usable pairs in {pairs}")
            raise typer.Exit(1)
        summary = evaluate_pairs(
            found, model=model, use_model=not naive_only, device="cpu", threads=threads,
            crops=crops, out=out, profile=camera, with_bm3d=bm3d, log=log,
        )
    except SidrawError as exc:
        log(f"error: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"\n{summary['model'] or 'naive only'} on {len(summary['pairs'])} pairs "
                   f"of {pairs} (tables and crops in {out})\n")
        typer.echo(markdown_table(summary))
    if summary["refused"]:
        raise typer.Exit(1)


def calibrate_command(
    dark: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="PATH", help="Dark frame (lens cap on) or folder of them; repeat for more."
        ),
    ] = None,
    flat: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="PATH", help="Flat frame or folder; two per ISO (or more, in pairs by name)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Profile JSON to write (default: the profile folder, by camera)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """Measure your camera's noise per ISO: read and row noise from dark frames, gain from pairs
    of flat frames (photon transfer). Writes a camera profile that sidraw info reports."""
    import json

    from .calibrate import calibrate, profile_dir, profile_name, raw_files, save_profile
    from .errors import SidrawError

    try:
        profile = calibrate(raw_files(dark or []), raw_files(flat or []))
    except SidrawError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    path = out or profile_dir() / profile_name(profile.camera)
    save_profile(profile, path)
    if as_json:
        typer.echo(json.dumps({**profile.to_dict(), "profile": str(path)}))
        return
    typer.echo(f"{profile.camera}: wrote {path}")
    for iso, n in profile.isos.items():
        parts = [f"ISO {iso}:"]
        if n.k_dn_per_electron is not None:
            parts.append(f"K {n.k_dn_per_electron:.4g} DN/e- ({n.tiles} tiles)")
        if n.read_dn is not None:
            parts.append(f"read {n.read_dn:.3g} DN, row {n.row_dn:.3g} DN "
                         f"({n.dark_frames} dark frame{'s' if n.dark_frames > 1 else ''})")
        typer.echo("  " + "  ".join(parts))


@dataclass(frozen=True)
class _PairOptions:
    """The options of ``sidraw train --pairs`` (see :func:`train_command`)."""

    patch: int
    batch: int
    steps: int
    minutes: float
    lr: float
    seed: int
    device: str
    threads: int
    held_out_share: float
    few_shot: bool
    synthetic_mix: float
    name: str
    eval_every: int
    patience: int
    cache: Path | None
    data: Path | None
    profile: Path | None = None


def _usable_pairs(path: Path) -> list:
    from .pairs import load_pairs

    found = load_pairs(path)
    for line in found.refused:
        typer.echo(f"✗ {line}", err=True)
    return found.pairs


def _train_pairs(
    pairs: Path, held_out: Path | None, out: Path, init: Path | None, o: _PairOptions
) -> None:
    """``sidraw train --pairs``: fine-tune and export into ``out``."""
    from .errors import SidrawError
    from .train.loop import TrainConfig
    from .train.real_pairs import PairTrainingError, PairTuneConfig, fine_tune

    try:
        train = _usable_pairs(pairs)
        held = _usable_pairs(held_out) if held_out is not None else None
        base = TrainConfig(
            patch=o.patch, batch=o.batch, steps=o.steps, minutes=o.minutes, lr=o.lr,
            seed=o.seed, device=o.device, threads=o.threads, data=str(o.data) if o.data else None,
        )
        tune = PairTuneConfig(
            name=o.name, init=str(init) if init else None, few_shot=o.few_shot,
            synthetic_mix=o.synthetic_mix, eval_every=o.eval_every, patience=o.patience,
            cache=str(o.cache) if o.cache else None,
            profile=str(o.profile) if o.profile else None,
        )
        trainer = fine_tune(train, out, base, tune, held_out=held,
                            held_out_share=o.held_out_share)
    except (SidrawError, PairTrainingError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"tuned model in {out} (sidraw convert --model {out}): L1 on the training pairs "
               f"{trainer.history[0]['train_l1']:.5f} -> {trainer.final_train_l1:.5f}")
