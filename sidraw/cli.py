"""Command line: parses options, calls the library, reports. No image logic lives here.

Exit codes: 0 when every file succeeded (or was skipped because its output exists), 1 when some
file failed, 2 on usage errors.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .batch import DEFAULT_NAME, Job, Outcome, collect_inputs, plan_jobs, run_jobs
from .errors import SidrawError
from .exposure import DEFAULT_MAX_RATIO
from .model import ModelCache
from .pipeline import ConvertOptions, ConvertResult, convert_file
from .tiling import DEFAULT_TILE

app = typer.Typer(
    name="sidraw",
    help="Turn raw photos shot in near darkness into clean, bright 16-bit images.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Format(str, Enum):
    tiff = "tiff"
    png = "png"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ColorSpaceChoice(str, Enum):
    srgb = "srgb"
    adobe = "adobe"
    p3 = "p3"
    rec2020 = "rec2020"
    prophoto = "prophoto"


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sidraw {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """sidraw: Learning-to-See-in-the-Dark denoising for raw files, on a CPU."""


def _parse_ratio(text: str) -> float | None:
    if text.lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither 'auto' nor a number") from None
    if not value > 0:
        raise typer.BadParameter("the ratio must be positive")
    return value


def _usage_error(message: str) -> typer.Exit:
    _err_console().print(f"[red]error:[/] {message}", markup=True)
    return typer.Exit(EXIT_USAGE)


@app.command()
def convert(
    inputs: Annotated[list[str], typer.Argument(help="Raw files, folders or glob patterns.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder (default: beside each input).")
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Search folders recursively; keeps their layout.")
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format (16-bit).")] = Format.tiff,
    ratio: Annotated[
        str, typer.Option("--ratio", help="Amplification: 'auto' or a number, e.g. 100.")
    ] = "auto",
    target_exposure: Annotated[
        Optional[float],
        typer.Option(
            "--target-exposure", help="Seconds the result should look exposed for (uses EXIF)."
        ),
    ] = None,
    max_ratio: Annotated[
        float, typer.Option("--max-ratio", help="Upper limit of the amplification.")
    ] = DEFAULT_MAX_RATIO,
    linear: Annotated[bool, typer.Option("--linear", help="Linear output, no tone curve.")] = False,
    color_space: Annotated[
        ColorSpaceChoice, typer.Option("--color-space", help="Output primaries.")
    ] = ColorSpaceChoice.srgb,
    model: Annotated[
        Optional[Path], typer.Option("--model", help="Model card (.json), ONNX file or folder.")
    ] = None,
    device: Annotated[
        DeviceChoice, typer.Option("--device", help="Inference device.")
    ] = DeviceChoice.auto,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help="Inference threads (default: cores).")
    ] = None,
    tile: Annotated[
        int, typer.Option("--tile", min=64, help="Tile size in packed pixels.")
    ] = DEFAULT_TILE,
    overlap: Annotated[
        Optional[int],
        typer.Option("--overlap", min=0, help="Tile overlap in packed pixels (default: the model's)."),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="Output name template: {stem}, {ext}, {name}.")
    ] = DEFAULT_NAME,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only report errors.")] = False,
) -> None:
    """Denoise and brighten dark raw files into 16-bit TIFF or PNG images."""
    console = _err_console()
    fixed_ratio = _parse_ratio(ratio)
    if fixed_ratio is not None and target_exposure is not None:
        raise _usage_error("give either --ratio or --target-exposure, not both")
    if max_ratio < 1:
        raise _usage_error("--max-ratio must be at least 1")
    if tile % 16:
        raise _usage_error("--tile must be a multiple of 16")
    if overlap is not None and (overlap % 16 or overlap >= tile):
        raise _usage_error("--overlap must be a multiple of 16 and smaller than --tile")
    options = ConvertOptions(
        ratio=fixed_ratio,
        target_exposure=target_exposure,
        max_ratio=max_ratio,
        fmt=fmt.value,
        linear=linear,
        color_space=color_space.value,
        tile=tile,
        overlap=overlap,
        overwrite=overwrite,
    )
    found, errors = collect_inputs(inputs, recursive)
    try:
        plan = plan_jobs(found, out_dir=out, fmt=fmt.value, name=name)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    errors += plan.errors
    for err in errors:
        console.print(f"[red]✗[/] {err}", markup=True)
    models = ModelCache(model, device.value, threads)

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    files_task = progress.add_task("files", total=len(plan.jobs))

    def run_one(job: Job) -> ConvertResult:
        progress.update(files_task, description=job.src.name)
        return convert_file(job.src, job.dst, options, models=models)

    def report(outcome: Outcome) -> None:
        progress.advance(files_task)
        src = outcome.job.src
        if outcome.status == "ok":
            res = outcome.result
            assert isinstance(res, ConvertResult)
            if not quiet:
                console.print(
                    f"[green]✓[/] {src} → {outcome.job.dst}  {res.decision.describe()}  "
                    f"{res.seconds:.1f} s",
                    markup=True,
                )
        elif outcome.status == "skipped":
            if not quiet:
                console.print(
                    f"[yellow]-[/] {src}: skipped, {outcome.job.dst} exists (--overwrite replaces)",
                    markup=True,
                )
        else:
            console.print(f"[red]✗[/] {outcome.error}", markup=True)

    with progress:
        outcomes = run_jobs(plan.jobs, run_one, overwrite=overwrite, on_outcome=report)
    failed = len(errors) + sum(o.status == "failed" for o in outcomes)
    done = sum(o.status == "ok" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    if not quiet or failed:
        console.print(f"{done} converted, {skipped} skipped, {failed} failed")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _print_info(report: dict, console: Console) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    cam = report["camera"]
    exp = report["exposure"]
    cfa = report["cfa"]
    auto = report["auto_ratio"]
    camera = " ".join(v for v in (cam["make"], cam["model"]) if v) or "unknown"
    table.add_row("file", report["file"])
    table.add_row("format", report["format"])
    table.add_row("camera", camera + (f" ({cam['lens']})" if cam["lens"] else ""))
    table.add_row("sensor", f"{cfa['kind']}, pattern {cfa['phase']}")
    table.add_row("size", f"{report['size']['width']} x {report['size']['height']} photosites")
    lv = report["levels"]
    table.add_row("levels", f"black {', '.join(f'{b:g}' for b in lv['black'])}, white {lv['white']:g}")
    t = exp["exposure_time"]
    table.add_row(
        "exposure",
        ", ".join(
            [
                f"{_seconds(t)}" if t else "time unknown",
                f"f/{exp['f_number']:g}" if exp["f_number"] else "f/?",
                f"ISO {exp['iso']:g}" if exp["iso"] else "ISO ?",
            ]
        ),
    )
    if exp["datetime_original"]:
        table.add_row("taken", exp["datetime_original"])
    wb = report["white_balance"]["multipliers"]
    table.add_row("white balance", f"R x{wb[0]:.3f}, G x1, B x{wb[2]:.3f}")
    table.add_row("auto ratio", auto["why"])
    eq = auto["equivalent_exposure"]
    if eq:
        table.add_row("looks like", f"a {_seconds(eq)} exposure")
    console.print(table)


def _seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.4g} s"
    return f"1/{round(1 / t):d} s"


@app.command()
def info(
    files: Annotated[list[Path], typer.Argument(help="Raw files to describe.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file on stdout.")] = False,
    max_ratio: Annotated[float, typer.Option("--max-ratio")] = DEFAULT_MAX_RATIO,
) -> None:
    """Explain what sidraw sees in a raw file: camera, sensor, levels, exposure, auto ratio."""
    from .inspect import describe_file

    console = Console(highlight=False)
    err = _err_console()
    failed = 0
    for f in files:
        try:
            report = describe_file(f, max_ratio=max_ratio)
        except SidrawError as exc:
            err.print(f"[red]✗[/] {exc}", markup=True)
            failed += 1
            continue
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
        else:
            _print_info(report, console)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@app.command()
def sample(
    path: Annotated[Path, typer.Argument(help="DNG file to write.")],
    cfa: Annotated[str, typer.Option("--cfa", help="RGGB, GRBG, GBRG, BGGR or xtrans.")] = "RGGB",
    width: Annotated[int, typer.Option(min=64)] = 1200,
    height: Annotated[int, typer.Option(min=64)] = 800,
    ratio: Annotated[float, typer.Option(help="How much darker than a normal exposure.")] = 100.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a synthetic dark raw (DNG) to try sidraw on."""
    from .output import write_atomic
    from .sample import write_sample

    try:
        write_atomic(path, lambda f: write_sample(f, pattern=cfa, width=width, height=height,
                                                  ratio=ratio, seed=seed))
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    except SidrawError as exc:
        _err_console().print(f"[red]✗[/] {exc}", markup=True)
        raise typer.Exit(EXIT_FAILED) from None
    _err_console().print(f"wrote {path} ({cfa}, {width}x{height}, x{ratio:g} darker)")


def _register_training() -> None:
    try:
        from .cli_train import eval_command, train_command
    except ImportError:
        return
    app.command("train")(train_command)
    app.command("eval")(eval_command)


_register_training()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
