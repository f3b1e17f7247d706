"""Command line: parses options, calls the library, reports. No image logic lives here.

``convert`` is three named steps: its options are checked (:mod:`sidraw.cli_options`), the batch is
planned (:mod:`sidraw.cli_plan`), then run here, with every outcome reported through
:class:`sidraw.report.Reporter`, which every verb uses.

Exit codes: 0 when every file succeeded or was skipped (its output exists, another process is
converting it or wrote it meanwhile), 1 when some file failed, 2 on usage errors, 130 when
interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from . import cli_options as opt
from .batch import DEFAULT_NAME, Job, Outcome, run_jobs
from .cli_options import ConvertArgs, UsageError
from .cli_plan import STDIN, BatchPlan, gather_items, output_target, plan_batch
from .errors import ClusterError, SidrawError
from .exposure import DEFAULT_MAX_RATIO
from .model import ModelCache, physical_cores
from .pipeline import (
    ConvertOptions,
    ConvertResult,
    PreparedFile,
    convert_file,
    finish_file,
    prepare_file,
)
from .report import Reporter, json_text, shown

app = typer.Typer(
    name="sidraw",
    help="Turn raw photos shot in near darkness into clean, bright 16-bit images.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    cls=opt.Group,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


@contextmanager
def _usage_errors(reporter: Reporter) -> Iterator[None]:
    """Turn a :class:`UsageError` into ``error: ...`` and exit code 2."""
    try:
        yield
    except UsageError as exc:
        reporter.usage(str(exc))
        raise typer.Exit(EXIT_USAGE) from None


@app.command(cls=opt.Command)
def convert(
    inputs: opt.Inputs = None,
    out: opt.Out = None,
    recursive: opt.Recursive = False,
    fmt: opt.FormatOpt = None,
    name: opt.Name = DEFAULT_NAME,
    files_from: opt.FilesFrom = None,
    force: opt.Force = False,
    strip_gps: opt.StripGps = False,
    preview: opt.Preview = False,
    ratio: opt.Ratio = "auto",
    target_exposure: opt.TargetExposure = None,
    max_ratio: opt.MaxRatio = DEFAULT_MAX_RATIO,
    linear: opt.Linear = False,
    color_space: opt.ColorSpace = opt.ColorSpaceChoice.srgb,
    demosaic: opt.DemosaicOpt = opt.DemosaicChoice.ppg,
    model: opt.Model = None,
    device: opt.Device = opt.DeviceChoice.auto,
    threads: opt.Threads = None,
    precision: opt.PrecisionOpt = opt.PrecisionChoice.auto,
    tile: opt.Tile = None,
    overlap: opt.Overlap = None,
    serial: opt.Serial = False,
    overwrite: opt.Overwrite = False,
    dry_run: opt.DryRun = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    workers: opt.Workers = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Denoise and brighten dark raw files into 16-bit TIFF, PNG or DNG files."""
    # typer hands every option over as an argument; one record carries them from here on.
    args = ConvertArgs(**locals())
    reporter = Reporter(as_json=as_json, quiet=quiet)
    with _usage_errors(reporter):
        plan, options = _prepare_batch(args)
    for err in plan.errors:
        reporter.failed(err)
    if dry_run:
        _dry_run(plan, overwrite, reporter)
        raise typer.Exit(EXIT_FAILED if plan.errors else EXIT_OK)
    batch = _Batch(plan, options, args, reporter)
    raise typer.Exit(batch.run())


def _prepare_batch(args: ConvertArgs) -> tuple[BatchPlan, ConvertOptions]:
    """Check the options, then plan the batch (reads stdin when an input is ``-``).

    Raises:
        UsageError: anything wrong with the command line, before any file is converted.
    """
    items = gather_items(args.inputs, args.files_from)
    target = output_target(args.out, args.fmt.value if args.fmt is not None else None)
    options = opt.convert_options(args, target.fmt)
    if target.kind == "stdout":
        _check_stdout(args)
    opt.check_device(args.device.value)
    opt.check_model(args.model)
    opt.check_cluster(args, stdin=STDIN in items, stdout=target.kind == "stdout")
    return plan_batch(items, recursive=args.recursive, target=target, name=args.name), options


def _check_stdout(args: ConvertArgs) -> None:
    if args.as_json or args.preview:
        raise UsageError("--out - writes the image to stdout: no --json or --preview with it")
    if sys.stdout.isatty() and not args.force:
        raise UsageError(
            "stdout is a terminal: redirect it or give --out DIR (--force writes anyway)"
        )


def _dry_run(plan: BatchPlan, overwrite: bool, reporter: Reporter) -> None:
    for job in plan.jobs:
        reporter.planned(job.src, job.dst, exists=job.dst.exists() and not overwrite)


class _Batch:
    """One run of planned jobs: the model cache, the progress bar, the outcomes so far."""

    def __init__(
        self, plan: BatchPlan, options: ConvertOptions, args: ConvertArgs, reporter: Reporter
    ) -> None:
        self.plan = plan
        self.options = options
        self.reporter = reporter
        self.to_stdout = plan.target.kind == "stdout"
        self.pipelined = not (args.serial or self.to_stdout) and len(plan.jobs) > 1
        self.args = args
        self.models = ModelCache(args.model, args.device.value, args.threads, args.precision.value)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=reporter.err,
            disable=args.quiet or not reporter.err.is_terminal,
            transient=True,
        )
        self.task = self.progress.add_task("files", total=len(plan.jobs))
        self.finished: list[Outcome] = []

    def run(self) -> int:
        """Convert every job; returns the exit code."""
        try:
            with self.progress:
                if self.args.workers is not None or self.args.scheduler is not None:
                    self._run_cluster()
                else:
                    self._run_local()
        except KeyboardInterrupt:
            self.reporter.interrupted(self._count("ok"))
            return EXIT_INTERRUPTED
        except ClusterError as exc:
            self.reporter.failure(exc)
            return EXIT_FAILED
        failed = len(self.plan.errors) + self._count("failed")
        self.reporter.summary(self._count("ok"), self._count("skipped"), failed)
        return EXIT_FAILED if failed else EXIT_OK

    def _run_local(self) -> None:
        run_jobs(
            self.plan.jobs,
            self._prepare if self.pipelined else self._convert,
            finish=finish_file if self.pipelined else None,
            overwrite=self.options.overwrite or self.to_stdout,
            on_outcome=self._report,
            claims=not self.to_stdout,
        )

    def _run_cluster(self) -> None:
        """The batch as Dask tasks: ``--workers N`` local processes, or ``--scheduler``'s
        cluster (:mod:`sidraw.distributed`); outcomes are reported as files finish."""
        from .distributed import ModelSpec, local_client, remote_client, run_cluster

        args = self.args
        threads = args.threads
        if args.workers is not None:
            threads = threads or max(1, physical_cores() // args.workers)
            client_context = local_client(args.workers)
        else:
            assert args.scheduler is not None
            client_context = remote_client(args.scheduler)
        spec = ModelSpec(
            None if args.model is None else str(args.model.resolve()),
            args.device.value,
            threads,
            args.precision.value,
        )
        with client_context as client:
            run_cluster(self.plan.jobs, client, self.options, spec, on_outcome=self._finished)

    def _finished(self, outcome: Outcome) -> None:
        """A cluster task's outcome: the bar names the file that finished last."""
        self.progress.update(self.task, description=shown(outcome.job.src.name))
        self._report(outcome)

    def _count(self, status: str) -> int:
        return sum(o.status == status for o in self.finished)

    def _data(self, job: Job) -> bytes | None:
        self.progress.update(self.task, description=shown(job.src.name))
        return self.plan.stdin_data if str(job.src) == STDIN else None

    def _convert(self, job: Job) -> ConvertResult:
        data = self._data(job)
        dst: Any = sys.stdout.buffer if self.to_stdout else job.dst
        return convert_file(job.src, dst, self.options, data=data, models=self.models)

    def _prepare(self, job: Job) -> PreparedFile:
        data = self._data(job)
        return prepare_file(job.src, job.dst, self.options, data=data, models=self.models)

    def _report(self, outcome: Outcome) -> None:
        self.finished.append(outcome)
        self.progress.advance(self.task)
        if outcome.status == "ok":
            res = outcome.result
            assert isinstance(res, ConvertResult)
            record = res.to_dict()
            self.reporter.converted(outcome.job.src, record, res.decision.describe(), res.seconds)
        elif outcome.status == "skipped":
            self.reporter.skipped(outcome.job.src, outcome.job.dst, outcome.reason or "exists")
        elif outcome.error is not None:
            self.reporter.failed(outcome.error)


def _info_rows(report: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The lines of ``sidraw info`` for one file."""
    cam, exp, cfa, auto = report["camera"], report["exposure"], report["cfa"], report["auto_ratio"]
    yield "file", report["file"]
    yield "format", report["format"]
    yield "camera", _camera(cam)
    yield "sensor", f"{cfa['kind']}, pattern {cfa['phase']}"
    yield "size", f"{report['size']['width']} x {report['size']['height']} photosites"
    lv = report["levels"]
    yield "levels", f"black {', '.join(f'{b:g}' for b in lv['black'])}, white {lv['white']:g}"
    t = exp["exposure_time"]
    yield (
        "exposure",
        ", ".join(
            [
                _seconds(t) if t else "time unknown",
                f"f/{round(exp['f_number'], 1):g}" if exp["f_number"] else "f/?",
                f"ISO {exp['iso']:g}" if exp["iso"] else "ISO ?",
            ]
        ),
    )
    if exp["datetime_original"]:
        yield "taken", exp["datetime_original"]
    wb = report["white_balance"]["multipliers"]
    yield "white balance", f"R x{wb[0]:.3f}, G x1, B x{wb[2]:.3f}"
    if noise := report.get("noise"):
        yield (
            "noise",
            f"gain {noise['k_dn_per_electron']:.3g} DN/e-, read {noise['read_dn']:.3g} DN",
        )
        if noise.get("calibration"):
            yield "calibration", noise["calibration"]
    if profile := report.get("profile"):
        yield "profile", _profile_row(profile)
    yield "auto ratio", auto["why"]
    if auto["equivalent_exposure"]:
        yield "looks like", f"a {_seconds(auto['equivalent_exposure'])} exposure"


def _profile_row(profile: dict[str, Any]) -> str:
    """The camera profile (``sidraw calibrate``) that applies to a file, or why none does."""
    noise = profile.get("noise")
    if not noise:
        measured = ", ".join(profile["measured_isos"])
        return f"{profile['file']}: no ISO match (measured ISO {measured})"
    parts = [f"ISO {profile['iso']}"]
    if noise["k_dn_per_electron"] is not None:
        parts.append(f"K {noise['k_dn_per_electron']:.3g} DN/e-")
    if noise["read_dn"] is not None:
        parts.append(f"read {noise['read_dn']:.3g} DN, row {noise['row_dn']:.3g} DN")
    return f"{', '.join(parts)} ({profile['file']})"


def _camera(cam: dict[str, Any]) -> str:
    make, model = cam["make"] or "", cam["model"] or ""
    # Many cameras repeat the make in the model ("Canon" + "Canon EOS D30"): say it once.
    name = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    return (name or "unknown") + (f" ({cam['lens']})" if cam["lens"] else "")


def _seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.4g} s"
    return f"1/{round(1 / t):d} s"


@app.command(cls=opt.Command)
def info(
    files: Annotated[list[Path], typer.Argument(help="Raw files to describe.")],
    as_json: Annotated[
        bool, opt.option("--json", help="A JSON object per file on stdout.")
    ] = False,
    max_ratio: Annotated[
        float, opt.option("--max-ratio", help="Largest ratio auto may pick.")
    ] = DEFAULT_MAX_RATIO,
) -> None:
    """Explain what sidraw sees in a raw file: camera, sensor, levels, exposure, auto ratio."""
    from .inspect import describe_file

    reporter = Reporter(as_json=as_json)
    failed = 0
    for f in files:
        try:
            report = describe_file(f, max_ratio=max_ratio)
        except SidrawError as exc:
            failed += 1
            reporter.failure(exc)
            reporter.record(
                {"file": json_text(f), "status": "failed", "error": json_text(exc.reason)}
            )
            continue
        if as_json:
            reporter.json({**report, "file": json_text(report["file"]), "status": "ok"})
        else:
            reporter.table(_info_rows(report))
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@app.command(cls=opt.Command)
def sample(
    path: Annotated[
        Path, typer.Argument(help="DNG file to write (name ending in .dng), or a folder.")
    ],
    cfa: Annotated[str, opt.option("--cfa", help="RGGB, GRBG, GBRG, BGGR or xtrans.")] = "RGGB",
    width: Annotated[int, opt.option("--width", help="Photosites across.", min=64)] = 1200,
    height: Annotated[int, opt.option("--height", help="Photosites down.", min=64)] = 800,
    ratio: Annotated[
        float, opt.option("--ratio", help="How much less light than a normal exposure.", min=1)
    ] = 100.0,
    seed: Annotated[int, opt.option("--seed", help="Scene and noise seed.")] = 0,
) -> None:
    """Write a synthetic dark raw (DNG, with camera, lens and GPS tags) to try sidraw on."""
    from .output import write_atomic
    from .sample import write_sample

    reporter = Reporter()
    if path.is_dir():
        path = path / "sample.dng"
    if path.suffix.lower() != ".dng":
        # The file is a DNG whatever its name; another raw extension would misname it.
        reporter.usage(f"sidraw sample writes DNG files: name it {path.with_suffix('.dng')}")
        raise typer.Exit(EXIT_USAGE)

    def write(f: Any) -> None:
        write_sample(
            f, pattern=cfa, width=width, height=height, ratio=ratio, seed=seed, realistic=True
        )

    try:
        write_atomic(path, write)
    except ValueError as exc:
        reporter.usage(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except SidrawError as exc:
        reporter.failure(exc)
        raise typer.Exit(EXIT_FAILED) from None
    reporter.line(f"wrote {shown(path)} ({cfa}, {width}x{height}, x{ratio:g} darker than normal)")


@app.command(cls=opt.Command)
def doctor(
    as_json: Annotated[bool, opt.option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the installation: versions, GPU support, bundled models and their sha256."""
    from .doctor import report

    rep = report()
    reporter = Reporter()
    if as_json:
        reporter.json(rep)
    else:
        reporter.table(_doctor_rows(rep))
        reporter.verdict(rep["ok"], "all good", "problems found")
    raise typer.Exit(EXIT_OK if rep["ok"] else EXIT_FAILED)


def _doctor_rows(rep: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key in ("sidraw", "python", "platform", "libraw", "rawpy", "onnxruntime"):
        yield key, str(rep[key])
    yield "providers", ", ".join(rep["providers"])
    yield "inference on", f"{rep['device']} ({rep['cpu_cores']} physical cores)"
    yield "weights", rep["weights_dir"]
    for m in rep["models"]:
        variants = "".join(f", {kind} {status}" for kind, status in m.get("variants", {}).items())
        yield f"model {m['name']}", f"{m['cfa']}: {m['status']}{variants}"
    if not rep["models"]:
        yield "models", "none found"


# The model options of the verbs that convert without the batch panels (compare, serve).
_ModelOpt = Annotated[Path | None, opt.option("--model", help="Model card, ONNX file or folder.")]
_DeviceOpt = Annotated[opt.DeviceChoice, opt.option("--device", help="Inference device.")]


@app.command(cls=opt.Command)
def compare(
    file: Annotated[Path, typer.Argument(help="A raw file.")],
    out: Annotated[
        Path | None, opt.option("--out", "-o", help="JPEG to write (default: FILE.compare.jpg).")
    ] = None,
    ratio: Annotated[str, opt.option("--ratio", help="'auto' or a number.")] = "auto",
    model: _ModelOpt = None,
    device: _DeviceOpt = opt.DeviceChoice.auto,
) -> None:
    """Write a before/after JPEG: the naively brightened raw beside sidraw's result."""
    from .preview import compare_file

    reporter = Reporter()
    dst = out or file.with_name(file.stem + ".compare.jpg")
    with _usage_errors(reporter):
        fixed = opt.parse_ratio(ratio)
        opt.check_device(device.value)
        opt.check_model(model)
    try:
        decision = compare_file(file, dst, ratio=fixed, model=model, device=device.value)
    except SidrawError as exc:
        reporter.failure(exc)
        raise typer.Exit(EXIT_FAILED) from None
    reporter.line(f"wrote {shown(dst)}  {decision.describe()}")


@app.command(cls=opt.Command)
def serve(
    host: Annotated[
        str,
        opt.option(
            "--host",
            help="Address to listen on; beyond loopback it needs a token.",
            metavar="ADDRESS",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, opt.option("--port", help="Port (0: a free one).")] = 8000,
    open_browser: Annotated[
        bool, opt.option("--open", help="Open the page in the default browser.")
    ] = False,
    max_upload: Annotated[
        float, opt.option("--max-upload", help="Largest file, in MB.", metavar="MB")
    ] = 200,
    max_request: Annotated[
        float, opt.option("--max-request", help="Largest upload request, in MB.", metavar="MB")
    ] = 1000,
    keep: Annotated[
        float, opt.option("--keep", help="Minutes results are kept.", metavar="MINUTES")
    ] = 30,
    token: Annotated[
        str | None,
        opt.option(
            "--token",
            help="Secret every request needs (made up beyond loopback).",
            metavar="SECRET",
        ),
    ] = None,
    model: _ModelOpt = None,
    device: _DeviceOpt = opt.DeviceChoice.auto,
    threads: Annotated[
        int | None, opt.option("--threads", help="Threads (default: cores).", metavar="N")
    ] = None,
) -> None:
    """A local web page (and JSON API) that converts raw files from a browser (web extra)."""
    from .serve import INSTALL_HINT, missing_web_extra
    from .serve.config import config_from_options

    reporter = Reporter()
    missing = missing_web_extra()
    if missing is not None:
        reporter.usage(f"sidraw serve needs the web extra ({missing} is missing): {INSTALL_HINT}")
        raise typer.Exit(EXIT_USAGE)
    with _usage_errors(reporter):
        config = config_from_options(
            host=host, port=port, max_upload_mb=max_upload, max_request_mb=max_request,
            keep_minutes=keep, token=token, model=model, device=device.value, threads=threads,
        )  # fmt: skip
        opt.check_device(device.value)
        opt.check_model(model)
    from .serve.server import run_server

    try:
        run_server(
            config,
            lambda text: reporter.line(text),
            lambda text: reporter.line(("warning:", "yellow"), " ", text),
            open_browser=open_browser,
        )
    except OSError as exc:
        reporter.usage(f"cannot listen on {host} port {port}: {exc.strerror or exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        reporter.line("sidraw serve stopped: every upload and result is deleted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _register_training() -> None:
    try:
        from .cli_train import calibrate_command, eval_command, train_command
    except ImportError:
        return
    app.command("train", cls=opt.Command)(train_command)
    app.command("eval", cls=opt.Command)(eval_command)
    app.command("calibrate", cls=opt.Command)(calibrate_command)


_register_training()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
