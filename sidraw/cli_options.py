"""The options of ``sidraw convert``: their declarations, grouped in help panels, and their checks.

Each option is an ``Annotated`` type declared once here, so the command's signature in
:mod:`sidraw.cli` stays a list of names. Help lines are kept short (``--help`` should fit a
screen); flags carry an empty metavar so that help shows ``--linear``, not ``--linear <bool>``.
Help texts never contain square brackets: typer renders them as rich markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .pipeline import ConvertOptions

PANEL_IO = "Input and output"
PANEL_EXPOSURE = "Exposure"
PANEL_COLOUR = "Colour"
PANEL_MODEL = "Model and speed"
PANEL_BATCH = "Batch"


class UsageError(Exception):
    """A bad command line: reported as ``error: ...`` with exit code 2, before any work."""


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


def option(*names: str, help: str, panel: str | None = None, **kwargs: Any) -> Any:
    """An option in a help panel."""
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


class _PlainFlags:
    """Help shows flags without a type: ``--linear``, not ``--linear <bool>``.

    typer prints a flag's metavar, or its Python type when it has none; an empty metavar prints
    nothing. Set here for every flag of a command, ``--help`` itself included.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """The command class of every ``sidraw`` verb."""


class Group(_PlainFlags, TyperGroup):
    """The command class of ``sidraw`` itself."""


Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        help="Raw files, folders or globs; '-' reads a raw file from stdin.",
        metavar="INPUT",
        show_default=False,
    ),
]
Out = Annotated[
    str | None,
    option(
        "--out", "-o", help="Folder, one .tif/.png/.dng, or - (stdout).", panel=PANEL_IO,
        metavar="PATH",
    ),
]  # fmt: skip
Recursive = Annotated[
    bool, option("--recursive", "-r", help="Search folders recursively.", panel=PANEL_IO)
]
FormatOpt = Annotated[
    Format | None,
    option("--format", "-f", help="tiff (default), png or denoised dng.", panel=PANEL_IO),
]
Name = Annotated[
    str,
    option(
        "--name", help="Output name: {stem}, {ext}, {name}.", panel=PANEL_IO,
        metavar="TEMPLATE", show_default=False,
    ),
]  # fmt: skip
FilesFrom = Annotated[
    str | None,
    option(
        "--files-from", "-@", help="Read inputs from a file (- : stdin).", panel=PANEL_IO,
        metavar="FILE",
    ),
]  # fmt: skip
Force = Annotated[bool, option("--force", help="Write --out - even to a terminal.", panel=PANEL_IO)]
StripGps = Annotated[bool, option("--strip-gps", help="Leave GPS out of outputs.", panel=PANEL_IO)]
Preview = Annotated[
    bool, option("--preview", help="Also write a before/after JPEG.", panel=PANEL_IO)
]
Ratio = Annotated[
    str,
    option("--ratio", help="auto, or a number such as 100.", panel=PANEL_EXPOSURE, metavar="N"),
]
TargetExposure = Annotated[
    float | None,
    option(
        "--target-exposure", help="Look exposed this long (needs EXIF).", panel=PANEL_EXPOSURE,
        metavar="SECONDS",
    ),
]  # fmt: skip
MaxRatio = Annotated[
    float, option("--max-ratio", help="Largest ratio.", panel=PANEL_EXPOSURE, metavar="N")
]
Linear = Annotated[
    bool, option("--linear", help="Linear output, no tone curve.", panel=PANEL_COLOUR)
]
ColorSpace = Annotated[
    ColorSpaceChoice,
    option(
        "--color-space", help="srgb adobe p3 prophoto rec2020 (linear)", panel=PANEL_COLOUR,
        metavar="NAME",
    ),
]  # fmt: skip
DemosaicOpt = Annotated[
    DemosaicChoice,
    option("--demosaic", help="ppg is fastest; ahd, dht sharper.", panel=PANEL_COLOUR),
]
Model = Annotated[
    Path | None,
    option("--model", help="Model card, ONNX file or folder.", panel=PANEL_MODEL, metavar="PATH"),
]
Device = Annotated[
    DeviceChoice, option("--device", help="Where the network runs.", panel=PANEL_MODEL)
]
Threads = Annotated[
    int | None,
    option("--threads", help="Threads (default: cores).", panel=PANEL_MODEL, metavar="N"),
]
PrecisionOpt = Annotated[
    PrecisionChoice,
    option(
        "--precision",
        help="auto: fp16 on GPUs; int8 on CPUs if validated, else fp32.",
        panel=PANEL_MODEL,
    ),
]
Tile = Annotated[
    int | None,
    option("--tile", help="Tile size in packed pixels (default: model's).", panel=PANEL_MODEL,
           metavar="N"),
]
Overlap = Annotated[
    int | None,
    option("--overlap", help="Tile overlap (default: staged).", panel=PANEL_MODEL, metavar="N"),
]
Serial = Annotated[
    bool, option("--serial", help="One file at a time (less memory).", panel=PANEL_MODEL)
]
Overwrite = Annotated[
    bool, option("--overwrite", help="Replace existing outputs.", panel=PANEL_BATCH)
]
DryRun = Annotated[bool, option("--dry-run", help="Show what would be done.", panel=PANEL_BATCH)]
Json = Annotated[
    bool, option("--json", help="A JSON object per file on stdout.", panel=PANEL_BATCH)
]
Quiet = Annotated[bool, option("--quiet", "-q", help="Only report errors.", panel=PANEL_BATCH)]
Workers = Annotated[
    int | None,
    option(
        "--workers", help="N local worker processes (needs sidraw with the dask extra).",
        panel=PANEL_BATCH, metavar="N",
    ),
]  # fmt: skip
Scheduler = Annotated[
    str | None,
    option(
        "--scheduler", help="Run on a Dask cluster: its scheduler's address.",
        panel=PANEL_BATCH, metavar="ADDRESS",
    ),
]  # fmt: skip


@dataclass(frozen=True)
class ConvertArgs:
    """Every option of ``sidraw convert``, as typer parsed them."""

    inputs: list[str] | None
    out: str | None
    recursive: bool
    fmt: Format | None
    name: str
    files_from: str | None
    force: bool
    strip_gps: bool
    preview: bool
    ratio: str
    target_exposure: float | None
    max_ratio: float
    linear: bool
    color_space: ColorSpaceChoice
    demosaic: DemosaicChoice
    model: Path | None
    device: DeviceChoice
    threads: int | None
    precision: PrecisionChoice
    tile: int | None
    overlap: int | None
    serial: bool
    overwrite: bool
    dry_run: bool
    as_json: bool
    quiet: bool
    workers: int | None = None
    scheduler: str | None = None


def parse_ratio(text: str) -> float | None:
    """``auto`` (None) or a positive number."""
    if text.lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--ratio {text!r} is neither 'auto' nor a number") from None
    if not value > 0:
        raise UsageError("--ratio must be positive")
    return value


def convert_options(args: ConvertArgs, fmt: str) -> ConvertOptions:
    """The library's options for a batch (``fmt``: the format the output target settled on).

    Raises:
        UsageError: contradictory or out-of-range values.
    """
    fixed_ratio = parse_ratio(args.ratio)
    if fixed_ratio is not None and args.target_exposure is not None:
        raise UsageError("give either --ratio or --target-exposure, not both")
    if args.max_ratio < 1:
        raise UsageError("--max-ratio must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.tile is not None and (args.tile < 64 or args.tile % 16):
        raise UsageError("--tile must be a multiple of 16, at least 64")
    if args.overlap is not None and (
        args.overlap < 0
        or args.overlap % 16
        or (args.tile is not None and args.overlap >= args.tile)
    ):
        raise UsageError("--overlap must be a multiple of 16 and smaller than --tile")
    return ConvertOptions(
        ratio=fixed_ratio,
        target_exposure=args.target_exposure,
        max_ratio=args.max_ratio,
        fmt=fmt,  # type: ignore[arg-type]  # one of the Format values
        linear=args.linear,
        color_space=args.color_space.value,
        demosaic=args.demosaic.value,  # type: ignore[arg-type]
        strip_gps=args.strip_gps,
        preview=args.preview,
        tile=args.tile,
        overlap=args.overlap,
        overwrite=args.overwrite,
    )


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` without a CUDA-capable onnxruntime, once, before a batch."""
    if device != "cuda":
        return
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UsageError(
            "--device cuda needs onnxruntime-gpu and a CUDA GPU (pip install 'sidraw[gpu]'); "
            "--device cpu or auto runs on the CPU"
        )


def check_model(model: Path | None) -> None:
    """Refuse a ``--model`` that cannot work, naming the path that was given.

    A folder must hold model cards; a file must be a card, or an ONNX file with its card
    (same name, ``.json``) beside it. Whether a card fits a file's CFA is decided per file.
    """
    if model is None:
        return
    from .errors import ModelError
    from .model import find_cards, load_card

    if not model.exists():
        raise UsageError(f"--model {model}: no such file or folder")
    if model.is_dir():
        if not find_cards(model):
            raise UsageError(f"--model {model}: no model card (.json) in this folder")
        return
    card = model if model.suffix.lower() == ".json" else model.with_suffix(".json")
    if card != model and not card.exists():
        raise UsageError(f"--model {model}: its model card {card.name} is not beside it")
    try:
        load_card(card)
    except ModelError as exc:
        raise UsageError(f"--model {model}: {exc.reason}") from None


def check_cluster(args: ConvertArgs, stdin: bool, stdout: bool) -> None:
    """Refuse ``--workers`` / ``--scheduler`` where they cannot work, before any file.

    Args:
        stdin: an input is ``-``; stdout: the output is ``--out -`` (neither is a shared file).
    """
    if args.workers is None and args.scheduler is None:
        return
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give either --workers or --scheduler, not both")
    flag = "--workers" if args.workers is not None else "--scheduler"
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if stdin or stdout:
        raise UsageError(f"{flag} converts files: no '-' (stdin or stdout) with it")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(f'{flag} needs Dask: pip install "sidraw[dask]"') from None
