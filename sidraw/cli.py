"""Command line: parses options, calls the library, reports. No image logic lives here.

Exit codes: 0 when every file succeeded (or was skipped because its output exists), 1 when some
file failed, 2 on usage errors, 130 when interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .batch import DEFAULT_NAME, InputFile, Job, Outcome, collect_inputs, plan_jobs, run_jobs
from .errors import SidrawError
from .exposure import DEFAULT_MAX_RATIO
from .model import ModelCache
from .pipeline import (
    ConvertOptions,
    ConvertResult,
    PreparedFile,
    convert_file,
    finish_file,
    prepare_file,
)
from .tiling import DEFAULT_TILE

app = typer.Typer(
    name="sidraw",
    help="Turn raw photos shot in near darkness into clean, bright 16-bit images.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Format(str, Enum):
    tiff = "tiff"
    png = "png"
    dng = "dng"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    int8 = "int8"
    fp16 = "fp16"


class DemosaicChoice(str, Enum):
    ppg = "ppg"
    ahd = "ahd"
    dht = "dht"


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
        bool | None,
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


STDIN = "-"


def _read_file_list(source: str) -> list[str]:
    try:
        text = sys.stdin.read() if source == STDIN else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise _usage_error(f"cannot read the file list {source}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _json_line(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


@app.command()
def convert(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Raw files, folders or glob patterns; '-' reads one raw from stdin."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help="Output folder (default: beside each input); '-': stdout."
        ),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option("--recursive", "-r", help="Search folders recursively; keeps their layout."),
    ] = False,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="16-bit TIFF or PNG, or a denoised DNG.")
    ] = Format.tiff,
    ratio: Annotated[
        str, typer.Option("--ratio", help="Amplification: 'auto' or a number, e.g. 100.")
    ] = "auto",
    target_exposure: Annotated[
        float | None,
        typer.Option(
            "--target-exposure", help="Seconds the result should look exposed for (uses EXIF)."
        ),
    ] = None,
    max_ratio: Annotated[
        float, typer.Option("--max-ratio", help="Upper limit of the amplification.")
    ] = DEFAULT_MAX_RATIO,
    linear: Annotated[bool, typer.Option("--linear", help="Linear output, no tone curve.")] = False,
    color_space: Annotated[
        ColorSpaceChoice,
        typer.Option("--color-space", help="Output primaries (rec2020 is linear Rec. 2020)."),
    ] = ColorSpaceChoice.srgb,
    demosaic: Annotated[
        DemosaicChoice,
        typer.Option(
            "--demosaic",
            help="LibRaw demosaic: ppg is fastest; ahd and dht are slower, dht a little sharper "
            "(X-Trans: ppg = 1-pass Markesteijn, the others 3-pass).",
        ),
    ] = DemosaicChoice.ppg,
    strip_gps: Annotated[
        bool, typer.Option("--strip-gps", help="Do not copy GPS position into the outputs.")
    ] = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write NAME.preview.jpg: before | after.")
    ] = False,
    model: Annotated[
        Path | None, typer.Option("--model", help="Model card (.json), ONNX file or folder.")
    ] = None,
    device: Annotated[
        DeviceChoice, typer.Option("--device", help="Inference device.")
    ] = DeviceChoice.auto,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Inference threads (default: cores).")
    ] = None,
    precision: Annotated[
        PrecisionChoice,
        typer.Option(
            "--precision",
            help="auto: INT8 on CPUs, float16 on GPUs, when the model validated it; "
            "int8 is for CPUs, fp16 for GPUs.",
        ),
    ] = PrecisionChoice.auto,
    tile: Annotated[
        int,
        typer.Option(
            "--tile",
            min=64,
            help="Tile size in packed pixels (up to 1/8 longer when that saves a tile).",
        ),
    ] = DEFAULT_TILE,
    overlap: Annotated[
        int | None,
        typer.Option(
            "--overlap", min=0, help="Tile overlap in packed pixels (default: the model's)."
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="Output name template: {stem}, {ext}, {name}.")
    ] = DEFAULT_NAME,
    files_from: Annotated[
        str | None,
        typer.Option(
            "--files-from", "-@", help="Read input paths from a file, one per line ('-': stdin)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be done, convert nothing.")
    ] = False,
    serial: Annotated[
        bool,
        typer.Option(
            "--serial",
            help="One file at a time (default: render and write a file while the next one is "
            "denoised; uses about one more file's memory).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per file on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only report errors.")] = False,
) -> None:
    """Denoise and brighten dark raw files into 16-bit TIFF, PNG or DNG files."""
    console = _err_console()
    items = list(inputs or [])
    if files_from is not None:
        if files_from == STDIN and STDIN in items:
            raise _usage_error("stdin cannot hold both a raw file and the file list")
        items += _read_file_list(files_from)
    if not items:
        raise _usage_error("no input given")
    fixed_ratio = _parse_ratio(ratio)
    if fixed_ratio is not None and target_exposure is not None:
        raise _usage_error("give either --ratio or --target-exposure, not both")
    if max_ratio < 1:
        raise _usage_error("--max-ratio must be at least 1")
    if tile % 16:
        raise _usage_error("--tile must be a multiple of 16")
    if overlap is not None and (overlap % 16 or overlap >= tile):
        raise _usage_error("--overlap must be a multiple of 16 and smaller than --tile")
    if items.count(STDIN) > 1:
        raise _usage_error("'-' (stdin) can be given once")
    to_stdout = out == STDIN
    if to_stdout and (as_json or preview):
        raise _usage_error("--out - writes the image to stdout: no --json or --preview with it")
    options = ConvertOptions(
        ratio=fixed_ratio,
        target_exposure=target_exposure,
        max_ratio=max_ratio,
        fmt=fmt.value,
        linear=linear,
        color_space=color_space.value,
        demosaic=demosaic.value,
        strip_gps=strip_gps,
        preview=preview,
        tile=tile,
        overlap=overlap,
        overwrite=overwrite,
    )
    stdin_data: bytes | None = None
    if STDIN in items:
        items.remove(STDIN)
        stdin_data = sys.stdin.buffer.read()
    found, errors = collect_inputs(items, recursive)
    if stdin_data is not None:
        found.insert(0, InputFile(Path(STDIN), Path("stdin")))
    if to_stdout and len(found) + len(errors) != 1:
        raise _usage_error("--out - needs exactly one input file")
    out_dir = None if (out is None or to_stdout) else Path(out)
    try:
        plan = plan_jobs(found, out_dir=out_dir, fmt=fmt.value, name=name)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    errors += plan.errors

    def report_error(err: SidrawError) -> None:
        console.print(f"[red]✗[/] {err}", markup=True)
        if as_json:
            _json_line({"input": err.path, "output": None, "status": "failed", "error": err.reason})

    for err in errors:
        report_error(err)

    if dry_run:
        for job in plan.jobs:
            exists = job.dst.exists() and not overwrite
            action = "skip (exists)" if exists else "convert"
            if as_json:
                _json_line(
                    {
                        "input": str(job.src),
                        "output": str(job.dst),
                        "status": "would-skip" if exists else "would-convert",
                    }
                )
            else:
                console.print(f"{action}: {job.src} → {job.dst}")
        raise typer.Exit(EXIT_FAILED if errors else EXIT_OK)

    models = ModelCache(model, device.value, threads, precision.value)
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
        data = stdin_data if str(job.src) == STDIN else None
        if to_stdout:
            return convert_file(job.src, sys.stdout.buffer, options, data=data, models=models)
        return convert_file(job.src, job.dst, options, data=data, models=models)

    def prepare_one(job: Job) -> PreparedFile:
        progress.update(files_task, description=job.src.name)
        data = stdin_data if str(job.src) == STDIN else None
        return prepare_file(job.src, job.dst, options, data=data, models=models)

    pipelined = not (serial or to_stdout) and len(plan.jobs) > 1

    def report(outcome: Outcome) -> None:
        progress.advance(files_task)
        src = outcome.job.src
        if outcome.status == "ok":
            res = outcome.result
            assert isinstance(res, ConvertResult)
            if as_json:
                _json_line({**res.to_dict(), "status": "ok", "error": None})
            if not quiet:
                console.print(
                    f"[green]✓[/] {src} → {res.output}  {res.decision.describe()}  "
                    f"{res.seconds:.1f} s",
                    markup=True,
                )
        elif outcome.status == "skipped":
            if as_json:
                _json_line(
                    {
                        "input": str(src),
                        "output": str(outcome.job.dst),
                        "status": "skipped",
                        "error": None,
                    }
                )
            if not quiet:
                console.print(
                    f"[yellow]-[/] {src}: skipped, {outcome.job.dst} exists (--overwrite replaces)",
                    markup=True,
                )
        elif outcome.error is not None:
            report_error(outcome.error)

    finished: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        finished.append(outcome)
        report(outcome)

    try:
        with progress:
            outcomes = run_jobs(
                plan.jobs,
                prepare_one if pipelined else run_one,
                finish=finish_file if pipelined else None,
                overwrite=overwrite or to_stdout,
                on_outcome=record,
            )
    except KeyboardInterrupt:
        done = sum(o.status == "ok" for o in finished)
        console.print(
            f"interrupted: {done} converted; run the same command again to resume", style="yellow"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
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
    table.add_row(
        "levels", f"black {', '.join(f'{b:g}' for b in lv['black'])}, white {lv['white']:g}"
    )
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
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per file on stdout.")
    ] = False,
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
        write_atomic(
            path,
            lambda f: write_sample(
                f, pattern=cfa, width=width, height=height, ratio=ratio, seed=seed
            ),
        )
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    except SidrawError as exc:
        _err_console().print(f"[red]✗[/] {exc}", markup=True)
        raise typer.Exit(EXIT_FAILED) from None
    _err_console().print(f"wrote {path} ({cfa}, {width}x{height}, x{ratio:g} darker)")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the installation: versions, GPU support, bundled models and their sha256."""
    from .doctor import report

    rep = report()
    if as_json:
        sys.stdout.write(json.dumps(rep) + "\n")
    else:
        console = Console(highlight=False)
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key in ("sidraw", "python", "platform", "libraw", "rawpy", "onnxruntime"):
            table.add_row(key, str(rep[key]))
        table.add_row("providers", ", ".join(rep["providers"]))
        table.add_row("inference on", f"{rep['device']} ({rep['cpu_cores']} physical cores)")
        table.add_row("weights", rep["weights_dir"])
        for m in rep["models"]:
            table.add_row(f"model {m['name']}", f"{m['cfa']}: {m['status']}")
        if not rep["models"]:
            table.add_row("models", "none found")
        console.print(table)
        console.print("[green]all good[/]" if rep["ok"] else "[red]problems found[/]")
    raise typer.Exit(EXIT_OK if rep["ok"] else EXIT_FAILED)


@app.command()
def compare(
    file: Annotated[Path, typer.Argument(help="A raw file.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="JPEG to write (default: FILE.compare.jpg).")
    ] = None,
    ratio: Annotated[str, typer.Option("--ratio", help="'auto' or a number.")] = "auto",
    model: Annotated[Path | None, typer.Option("--model")] = None,
    device: Annotated[DeviceChoice, typer.Option("--device")] = DeviceChoice.auto,
) -> None:
    """Write a before/after JPEG: the naively brightened raw beside sidraw's result."""
    from .preview import compare_file

    dst = out or file.with_name(file.stem + ".compare.jpg")
    try:
        decision = compare_file(
            file, dst, ratio=_parse_ratio(ratio), model=model, device=device.value
        )
    except SidrawError as exc:
        _err_console().print(f"[red]✗[/] {exc}", markup=True)
        raise typer.Exit(EXIT_FAILED) from None
    _err_console().print(f"wrote {dst}  {decision.describe()}")


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
