"""One job's work, through the library: :func:`sidraw.convert_file` and its before/after preview.

This module is to the server what :mod:`sidraw.cli` is to the command line: it turns the client's
choices into :class:`~sidraw.pipeline.ConvertOptions` with the checks the CLI uses
(:mod:`sidraw.cli_options`), and calls the pipeline. The preview is the picture of ``sidraw
compare`` (:mod:`sidraw.preview`): TIFF and PNG jobs get it from the conversion itself
(``ConvertOptions.preview``, no second inference); a denoised DNG has no rendered image, so its
preview is made by :func:`sidraw.preview.compare_file` at the ratio the conversion chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cli_options import ColorSpaceChoice, Format, UsageError, parse_ratio
from ..model import ModelCache
from ..output import EXTENSIONS
from ..pipeline import ConvertOptions, ConvertResult, convert_file
from ..preview import compare_file, preview_path
from ..signature import looks_like_raw, what_it_looks_like

RESULT_STEM = "result"


class Cancelled(Exception):
    """The job was cancelled while it ran (its client left, or the server is stopping)."""


@dataclass(frozen=True)
class Settings:
    """What the client chose for a job.

    Attributes:
        ratio: a fixed ratio, or None (auto or target exposure).
        target_exposure: seconds the result should look exposed for, or None.
        fmt: ``tiff``, ``png`` or ``dng``.
        color_space: ``srgb``, ``adobe``, ``p3``, ``rec2020`` or ``prophoto``.
    """

    ratio: float | None = None
    target_exposure: float | None = None
    fmt: str = "tiff"
    color_space: str = "srgb"

    def options(self) -> ConvertOptions:
        """The library's options (a preview beside TIFF and PNG results)."""
        return ConvertOptions(
            ratio=self.ratio,
            target_exposure=self.target_exposure,
            fmt=self.fmt,  # type: ignore[arg-type]  # checked by parse_settings
            color_space=self.color_space,
            preview=self.fmt != "dng",
        )

    def to_dict(self) -> dict[str, object]:
        ratio = self.ratio if self.ratio is not None else "auto"
        return {"ratio": ratio, "target_exposure": self.target_exposure, "format": self.fmt,
                "color_space": self.color_space}  # fmt: skip


def _choice(fields: dict[str, str], key: str, choices: type[Format | ColorSpaceChoice]) -> str:
    value = (fields.get(key) or "").strip().lower()
    allowed = [c.value for c in choices]
    if not value:
        return allowed[0]
    if value not in allowed:
        raise UsageError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def parse_settings(fields: dict[str, str]) -> Settings:
    """Settings from an upload's form fields ``ratio`` (``auto`` or a number),
    ``target_exposure`` (seconds), ``format`` and ``color_space``; missing ones take the CLI's
    defaults.

    Raises:
        UsageError: a value the CLI would refuse too, said in one line.
    """
    ratio = parse_ratio((fields.get("ratio") or "auto").strip())
    target = (fields.get("target_exposure") or "").strip()
    target_exposure = None
    if target:
        try:
            target_exposure = float(target)
        except ValueError:
            raise UsageError(f"target_exposure {target!r} is not a number of seconds") from None
        if not target_exposure > 0:
            raise UsageError("target_exposure must be positive")
    if ratio is not None and target_exposure is not None:
        raise UsageError("give either ratio or target_exposure, not both")
    return Settings(
        ratio=ratio,
        target_exposure=target_exposure,
        fmt=_choice(fields, "format", Format),
        color_space=_choice(fields, "color_space", ColorSpaceChoice),
    )


@dataclass(frozen=True)
class Converted:
    """A finished conversion: the library's result, the result file and its preview JPEG."""

    result: ConvertResult
    output: Path
    preview: Path | None


def convert_job(
    source: Path,
    settings: Settings,
    models: ModelCache,
    *,
    stopped: Callable[[], bool],
    progress: Callable[[float], None],
) -> Converted:
    """Convert one uploaded raw file into ``result.<ext>`` beside it, with its preview.

    Args:
        source: the stored upload.
        settings: the client's choices.
        models: the server's model cache (one worker thread uses it).
        stopped: polled after every tile; True cancels the job.
        progress: receives the fraction of the network's tiles done (0 to 1).

    Raises:
        sidraw.SidrawError: the file cannot be converted (its one-line reason is the job's error).
        Cancelled: ``stopped()`` became true; no result is left.
    """

    def tiles(done: int, total: int) -> None:
        if stopped():
            raise Cancelled
        progress(done / total)

    output = source.with_name(RESULT_STEM + EXTENSIONS[settings.fmt])
    result = convert_file(source, output, settings.options(), models=models, progress=tiles)
    preview = preview_path(output)
    if settings.fmt == "dng":
        if stopped():
            raise Cancelled
        # The bundled cache cannot be handed over: compare_file loads the model once more.
        compare_file(source, preview, ratio=result.decision.ratio, model=models.model,
                     device=models.device)  # fmt: skip
    return Converted(result, output, preview if preview.is_file() else None)


def content_problem(head: bytes, size: int) -> str | None:
    """Why an upload is no raw file, from its first bytes (None: it starts like one).

    The check of :func:`sidraw.raw.open_raw`, made before the file waits in the queue: a text
    note or a JPEG fails at once with the CLI's words, and a file that starts like a raw file but
    is damaged fails when LibRaw opens it.
    """
    if size == 0:
        return "empty file"
    if looks_like_raw(head):
        return None
    looks = what_it_looks_like(head) or f"{size} bytes that no raw format starts with"
    return f"not a raw file ({looks})"
