"""The conversion of one raw file: read, choose the ratio, pack, denoise in tiles, render, write.

:func:`convert_file` is the library entry point that ``sidraw convert`` calls for every file;
scripts can call it too.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import rawpy

from . import __version__, buffers, metadata
from .calibrate import file_profile_noise
from .calibration import CheckedNoise, calibration_for, check_estimate
from .color import Encoding, encoding_for, icc_profile
from .dng import DngMetadata, write_dng
from .embed import Embedded, into_tiff
from .errors import CorruptFileError, MetadataError, ModelError, OutputError
from .exposure import DEFAULT_MAX_RATIO, RatioDecision, choose_ratio
from .mean_correction import SATURATED, CorrectionStream, blown
from .model import Device, ModelCache, Network, choose_file
from .mosaic import denormalise_packed, pack_rows, unpack_rows_into
from .noise_estimate import PATCH_EDGE, NoiseEstimate, estimate_noise, noise_vector
from .output import ImageFormat, check_target, write_atomic, write_image_strips
from .preview import naive_mosaic, preview_path, side_by_side
from .raw import RawFile, _libraw_reason, open_raw
from .render import (
    DEFAULT_DEMOSAIC,
    Demosaic,
    Strips,
    demosaic_algorithm,
    render,
    render_strips,
)
from .staged import PaddedInput, Stages, padded_shape, run_staged_stream
from .tiling import reflect_index, run_tiled_stream, stream_reread_start

Tiling = Literal["auto", "staged", "tiles"]
#: Largest memory that ``auto`` lets staged inference hold between its passes (the input, skip
#: connections, features and deep answer grow with the frame): 124 bytes a packed pixel for the
#: bundled Bayer network and 144 for the X-Trans one, so Bayer frames up to about 17 MP and
#: X-Trans up to about 33 MP.
STAGED_MAX_HELD = 512 * 2**20

#: Packed rows that :func:`denoise` post-processes and writes back at a time.
TAKE_ROWS = 32
#: The noise fit reads bands of this many packed rows, up to NOISE_SAMPLE packed values in all.
NOISE_BAND = 32
NOISE_SAMPLE = 1_000_000


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of a conversion (the CLI options of ``sidraw convert``).

    Attributes:
        ratio: fixed amplification, or None.
        target_exposure: seconds the output should look exposed for, or None.
        max_ratio: upper clamp of the ratio.
        fmt: ``"tiff"``, ``"png"`` or ``"dng"`` (a denoised, brightened raw mosaic).
        linear: linear transfer curve instead of the colour space's own.
        color_space: output primaries (``srgb``, ``adobe``, ``p3``, ``rec2020`` (linear),
            ``prophoto``).
        demosaic: LibRaw's demosaic (``"ppg"``, ``"ahd"``, ``"dht"``; see
            :data:`sidraw.render.DEMOSAICS`).
        strip_gps: leave GPS tags out of the output.
        preview: also write a small before/after JPEG next to the output.
        tile, overlap: tiling in packed pixels (None: the model card's; its overlap is measured
            at export, its tile chosen for that overlap).
        tiling: ``"auto"``: staged inference (:mod:`sidraw.staged`) where the model card names
            a split level, no ``overlap`` is given and the frame is not too large (see
            :func:`staged_network`), overlapping tiles otherwise; ``"staged"``
            or ``"tiles"`` to choose (``"staged"`` falls back to tiles for models that cannot
            be cut). ``tile`` is the side of the full-resolution tiles in both.
        overwrite: replace existing outputs.
    """

    ratio: float | None = None
    target_exposure: float | None = None
    max_ratio: float = DEFAULT_MAX_RATIO
    fmt: ImageFormat = "tiff"
    linear: bool = False
    color_space: str = "srgb"
    demosaic: Demosaic = DEFAULT_DEMOSAIC
    strip_gps: bool = False
    preview: bool = False
    tile: int | None = None
    overlap: int | None = None
    tiling: Tiling = "auto"
    overwrite: bool = False


@dataclass
class ConvertResult:
    """What happened to one file.

    Attributes:
        input: the input path.
        output: the written file (None when nothing was written).
        decision: the amplification ratio and how it was chosen.
        model: the model name used.
        seconds: wall time of the whole conversion.
        timings: seconds per stage (decode, pack, inference, render, write).
        precision: the variant of the model that ran (``fp32``, ``int8``, ``fp16``).
        model_sha256: sha256 of the ONNX file that ran (fp16 is made from the fp32 file).
        noise: the frame's fitted noise in DN (``k_dn_per_electron``, ``read_dn``;
            noise-conditioned models only), or None.
    """

    input: str
    output: str | None
    decision: RatioDecision
    model: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    model_sha256: str = ""
    noise: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "ratio": round(self.decision.ratio, 4),
            "ratio_mode": self.decision.mode,
            "model": self.model,
            "precision": self.precision,
            "model_sha256": self.model_sha256,
            "noise": self.noise,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def denoise(
    raw: RawFile,
    network: Network,
    options: ConvertOptions,
    *,
    out: np.ndarray | None = None,
    decision: RatioDecision | None = None,
    noise: NoiseEstimate | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, RatioDecision]:
    """Denoise and brighten the mosaic of an open raw file.

    Args:
        raw: the open file.
        network: the model for its CFA.
        options: ratio settings, tile and overlap.
        out: (H, W) uint16 array that receives the clean mosaic; it may be ``raw.mosaic``
            itself (LibRaw's buffer, then rendered in place): rows are overwritten only after the
            last tile that reads them. None allocates a new array.
        decision: the ratio, if already chosen (:func:`choose_file_ratio`).
        noise: the frame's noise, if already fitted (:func:`estimate_file_noise`); only
            noise-conditioned models use it.
        progress: called with ``(tiles done, tiles total)``.
        timings: receives the seconds of the ``pack`` and ``inference`` stages.

    Returns:
        ((H, W) uint16 clean mosaic in DN with the file's black level (``out``), the ratio
        decision).
    """
    t = timings if timings is not None else {}
    start = time.perf_counter()
    info = raw.info
    layout = info.layout
    network.check_layout(layout, info.path)
    source = raw.mosaic
    target = np.empty_like(source) if out is None else out
    if target.shape != source.shape or target.dtype != np.uint16:
        raise ValueError(f"out must be {source.shape} uint16, got {target.shape} {target.dtype}")
    # Tiles are packed from the mosaic one band of rows at a time (2 bytes a photosite, uint16),
    # normalised and amplified as the network reads them; finished rows go straight back into
    # ``target`` as uint16. No packed, float or second copy of the frame is ever held.
    h, w, channels = layout.packed_shape(source.shape)
    black = np.asarray(info.black, dtype=np.float32)
    band: dict[str, np.ndarray] = {}

    def packed_rows(rows: np.ndarray) -> np.ndarray:
        # Every tile of a tile row reads the same rows: pack them once.
        cached = band.get("rows")
        if cached is None or not np.array_equal(cached, rows):
            band.clear()  # before packing the next rows: never two bands at once
            band["rows"], band["values"] = rows.copy(), pack_rows(source, layout, rows)
        return band["values"]

    def normalised(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return _normalise_at(packed_rows(rows), raw, rows, cols)

    if decision is None:
        decision = choose_file_ratio(raw, options)
    ratio = np.float32(decision.ratio)
    lo, hi = network.card.input_clip

    def amplified(x: np.ndarray) -> np.ndarray:
        x *= ratio
        np.clip(x, -1.0, 1.0, out=x)
        if (lo, hi) != (-1.0, 1.0):
            np.clip(x, lo, hi, out=x)
        return x

    def network_input(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return amplified(normalised(rows, cols))

    vector = None
    if network.card.noise_input is not None or network.card.mean_block:
        fitted = noise if noise is not None else estimate_file_noise(raw).estimate
        vector = noise_vector(fitted, float(ratio))
    model_noise = vector if network.card.noise_input is not None else None

    def run(batch: np.ndarray) -> np.ndarray:
        return network(batch, noise=model_noise)

    def run_last(batch: np.ndarray) -> np.ndarray:
        return network.release_after(batch, model_noise)

    tile = options.tile if options.tile is not None else network.card.tile
    overlap = options.overlap if options.overlap is not None else network.card.overlap
    multiple = network.card.downsample
    stages = staged_network(network, options, model_noise, (h, w))
    if stages is None and overlap >= tile:
        raise ModelError(f"tile overlap {overlap} is not smaller than the tile {tile}", info.path)
    if stages is not None and options.tile is None and network.card.staged_tile:
        tile = network.card.staged_tile
    # Rows are handed over when no later tile row reads them, except the bottom rows that the
    # last tile row reflects (and the bottom padding of the CFA blocks, one period up): those
    # are kept aside until the end, so that writing into the source buffer is safe. Staged
    # inference hands rows over only after their last read.
    reread = h if stages is not None else stream_reread_start(h, tile, overlap, multiple)
    keep_from = min(reread, h - 2)
    kept: list[tuple[int, np.ndarray]] = []
    all_cols = np.arange(w)

    def take_rows(row0: int, rows: np.ndarray) -> None:
        # A few rows at a time, so that the temporaries stay small however wide the image is.
        for r in range(0, rows.shape[0], TAKE_ROWS):
            take_slice(row0 + r, rows[r : r + TAKE_ROWS])
        if correction is not None:
            correction.wait()  # before the network runs again: never beside it

    def write_clean(row0: int, y: np.ndarray) -> None:
        clean = denormalise_packed(y, layout, black, info.white, origin=(row0, 0))
        now = max(0, min(keep_from - row0, clean.shape[0]))
        if now:
            unpack_rows_into(target, clean[:now], layout, row0)
        if now < clean.shape[0]:
            kept.append((row0 + now, clean[now:]))

    block = network.card.mean_block
    # Staged, with two or more threads, corrections are applied and written on a second thread
    # while the next rows are pushed (take_rows waits for it: the network's idle threads sleep).
    second = (
        ThreadPoolExecutor(1) if block and stages is not None and network.threads > 1 else None
    )
    correction = (
        CorrectionStream((h, w, channels), block, write_clean, vector, network.card.guard, second)
        if block
        else None
    )

    # Staged inference reads the whole amplified input, held once, twice and here again.
    held = (
        PaddedInput(
            amplified_planes(raw, padded_shape((h, w), multiple), float(ratio), network.threads),
            (max(lo, -1.0), min(hi, 1.0)),
        )
        if stages is not None
        else None
    )

    def take_slice(row0: int, rows: np.ndarray) -> None:
        index = np.arange(row0, row0 + rows.shape[0])
        y = np.clip(rows, 0.0, 1.0)
        if held is not None:
            x = held.planes[:, row0 : row0 + rows.shape[0], :w].transpose(1, 2, 0).copy()
        else:
            x = _normalise_at(pack_rows(source, layout, index), raw, index, all_cols)
            x *= ratio
        # Photosites clipped in every channel are blown highlights: make them exactly white so
        # that LibRaw's highlight clipping renders them neutral instead of tinted by the WB.
        white = blown(x, hi) if hi <= 1.0 else np.zeros((*x.shape[:2], 1), dtype=bool)
        if correction is None:
            y[white[..., 0]] = 1.0
            write_clean(row0, y)
            return
        y[white[..., 0]] = 1.0
        # The residual is made there, from the same noise scale as the guard's.
        correction.push(row0, y, None, (x < SATURATED * ratio) & ~white, x)

    t["pack"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        if stages is not None:
            # No reflect margin: the whole frame as the validation runs it (and as training's
            # crops end), padded only at the bottom and right to the downsampling factor.
            run_staged_stream(
                (h, w), held, stages, take_rows, tile=tile, out_channels=channels,
                multiple=multiple, margin=0, progress=progress,
            )
        else:
            run_tiled_stream(
                (h, w), network_input, run, take_rows, tile=tile, overlap=overlap,
                multiple=multiple, out_channels=channels, progress=progress, last_fn=run_last,
            )
        if correction is not None:
            correction.close()
    finally:
        if second is not None:
            second.shutdown(cancel_futures=True)
    for row0, clean in kept:
        unpack_rows_into(target, clean, layout, row0)
    band.clear()
    t["inference"] = time.perf_counter() - start
    return target, decision


def staged_network(
    network: Network, options: ConvertOptions, noise: np.ndarray | None, shape: tuple[int, int]
) -> Stages | None:
    """The network's stages where ``options.tiling`` asks for staged inference and its card
    allows it (see :class:`ConvertOptions`), else None (overlapping tiles). ``auto`` also keeps
    overlapping tiles for frames whose stages would hold more than :data:`STAGED_MAX_HELD`
    bytes between their passes, as their memory does not grow with the frame (``shape``: packed
    h, w). Frames that one overlapping tile covers run staged too: that tile is reflect-padded
    by half the overlap on every side (a 1 MP Bayer frame: 1.8 times its pixels)."""
    if options.tiling == "tiles" or (options.tiling == "auto" and options.overlap is not None):
        return None
    stages = network.stages(noise)
    if stages is not None and options.tiling == "auto":
        ph, pw = padded_shape(shape, network.card.downsample)
        # The stages' own arrays and the whole input, float32 (:func:`amplified_planes`).
        held = stages.held_bytes + 4 * len(network.card.channels)
        if held * ph * pw > STAGED_MAX_HELD:
            return None
    return stages


def choose_file_ratio(raw: RawFile, options: ConvertOptions) -> RatioDecision:
    """The amplification ratio of an open raw file under ``options`` (see :func:`choose_ratio`).

    Raises:
        MetadataError: ``--target-exposure`` is asked for but the file has no exposure time.
    """
    info = raw.info
    if options.target_exposure is not None and info.exif.exposure_time is None:
        raise MetadataError("no EXIF exposure time, so --target-exposure cannot work", info.path)
    sample = None
    if options.ratio is None:
        layout = info.layout
        h, w, channels = layout.packed_shape(raw.mosaic.shape)
        every = max(1, (h * w * channels) // 4_000_000)  # a row sample is enough
        rows, cols = np.arange(0, h, every), np.arange(w)
        sample = _normalise_at(pack_rows(raw.mosaic, layout, rows), raw, rows, cols)
    return choose_ratio(
        sample,
        ratio=options.ratio,
        target_exposure=options.target_exposure,
        exposure_time=info.exif.exposure_time,
        max_ratio=options.max_ratio,
    )


def estimate_file_noise(raw: RawFile) -> CheckedNoise:
    """The noise of an open raw file: from the photographer's camera profile where one applies
    (``sidraw calibrate``), else the frame's own fit, checked against the camera's published
    calibration where sidraw has one (:mod:`sidraw.calibration`)."""
    profile = file_profile_noise(raw.info, _white_range(raw))
    if profile is not None:
        return CheckedNoise(*profile)
    fitted = fit_file_noise(raw)
    calibration = calibration_for(raw.info.exif.model)
    if calibration is None:
        return CheckedNoise(fitted, "")
    return check_estimate(fitted, calibration, _white_range(raw))


def _white_range(raw: RawFile) -> float:
    return float(raw.info.white) - float(np.mean(raw.info.black))


def fit_file_noise(raw: RawFile) -> NoiseEstimate:
    """Fit the noise of an open raw file (:func:`sidraw.noise_estimate.estimate_noise`) on
    evenly spread bands of packed rows (all of them for frames up to NOISE_SAMPLE values)."""
    layout = raw.info.layout
    h, w, channels = layout.packed_shape(raw.mosaic.shape)
    if h * w * channels <= NOISE_SAMPLE or h < 2 * NOISE_BAND:
        rows = np.arange(h)
        whole = _normalise_at(pack_rows(raw.mosaic, layout, rows), raw, rows, np.arange(w))
        return estimate_noise(whole)
    # Fewer bands than fit in the frame, so they never overlap.
    bands = max(1, NOISE_SAMPLE // (NOISE_BAND * w * channels))
    starts = np.linspace(0, h - NOISE_BAND, bands).astype(int)
    # Bands are fitted side by side, cut to whole patches so that none straddles two bands.
    cols = np.arange(w // PATCH_EDGE * PATCH_EDGE or w)
    parts = [
        _normalise_at(pack_rows(raw.mosaic, layout, r), raw, r, cols)
        for r in (np.arange(s, s + NOISE_BAND) for s in starts)
    ]
    return estimate_noise(np.concatenate(parts, axis=1))


def noise_report(noise: CheckedNoise, raw: RawFile) -> dict[str, Any]:
    """A file's noise in its DN: ``k_dn_per_electron`` (gain), ``read_dn`` and, for a calibrated
    camera, what the ``calibration`` check found."""
    k, read = noise.estimate.in_dn(_white_range(raw))
    report: dict[str, Any] = {"k_dn_per_electron": round(k, 4), "read_dn": round(read, 3)}
    if noise.note:
        report["calibration"] = noise.note
    return report


#: Packed rows that :func:`amplified_planes` converts at a time.
_PLANE_ROWS = 64


def amplified_planes(
    raw: RawFile, padded: tuple[int, int], ratio: float, threads: int = 1
) -> np.ndarray:
    """The whole packed frame as the network reads it, before the input clip, for staged
    inference (:class:`sidraw.staged.PaddedInput`).

    Args:
        raw: the open file.
        padded: (h, w) to pad the packed frame to, by reflection at the bottom and right.
        ratio: the exposure ratio.
        threads: bands of rows converted at once (numpy releases the GIL while it copies).

    Returns:
        (C, h, w) float32, 0 at black and ``ratio`` at white.
    """
    layout = raw.info.layout
    h, w, channels = layout.packed_shape(raw.mosaic.shape)
    rows, cols = reflect_index(0, padded[0], h, 0), reflect_index(0, padded[1], w, 0)
    planes = buffers.empty((channels, *padded), np.float32)

    # In bands of rows: the uint16 and float copies stay small.
    def convert(start: int) -> None:
        band = rows[start : start + _PLANE_ROWS]
        values = _normalise_at(pack_rows(raw.mosaic, layout, band), raw, band, cols)
        np.multiply(values.transpose(2, 0, 1), np.float32(ratio),
                    out=planes[:, start : start + band.size])

    starts = range(0, padded[0], _PLANE_ROWS)
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(convert, starts))
    else:
        for start in starts:
            convert(start)
    return planes


def _normalise_at(
    values: np.ndarray, raw: RawFile, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Normalise packed values at any packed ``rows`` x ``cols`` (e.g. reflected at a border),
    each with the levels of its block type.

    Args:
        values: (n, w, C) packed rows ``rows`` of the image, all ``w`` columns (raw DN).
        raw: the open file (levels, layout).
        rows: (n,) packed row indices of ``values``.
        cols: (m,) packed column indices to return, in any order.

    Returns:
        (n, m, C) float32, 0 at black and 1 at white (as :func:`sidraw.mosaic.normalise_packed`).
    """
    info = raw.info
    t = info.layout.types
    levels = info.layout.channel_map(np.asarray(info.black, dtype=np.float32))  # (t, t, C)
    lo, hi = int(cols.min()), int(cols.max()) + 1
    v = values[:, lo:hi].astype(np.float32)
    # Columns keep their image order here, so a column type is a stride; the (n, t, C) levels of
    # each row broadcast over it. No (n, m, C) map of levels and no fancy indexing.
    row_levels = levels[rows % t]
    row_scale = 1.0 / (np.float32(info.white) - row_levels)
    for tj in range(t):
        view = v[:, (tj - lo) % t :: t]
        view -= row_levels[:, None, tj]
        view *= row_scale[:, None, tj]
    if cols.size == hi - lo and bool(np.all(np.diff(cols) == 1)):
        return v
    return v[:, cols - lo]


@dataclass
class _Rendered:
    """What leaves the LibRaw stage: RGB strips or, for DNG, the clean mosaic and its metadata.

    Both may still read from the open LibRaw handle, which is closed once they are written.
    """

    strips: Strips | None
    dng: tuple[np.ndarray, DngMetadata] | None
    encoding: Encoding | None
    preview: tuple[np.ndarray, np.ndarray] | None = None


def _render_stage(raw: RawFile, naive: np.ndarray | None, opts: ConvertOptions) -> _Rendered:
    """Render the clean mosaic in LibRaw's buffer (or keep it, for DNG output)."""
    if opts.fmt == "dng":
        return _Rendered(None, (raw.mosaic, _dng_metadata(raw)), None)
    encoding = encoding_for(opts.color_space, opts.linear)
    if naive is None:
        strips = render_strips(raw, encoding=encoding, demosaic=opts.demosaic)
        return _Rendered(strips, None, encoding)
    # A preview needs both whole frames (LibRaw's half-size mode changes the buffer's shape).
    after = render(raw.handle, encoding=encoding, demosaic=opts.demosaic)
    before = render(raw.handle, naive, demosaic=opts.demosaic)
    strips = Strips((after.shape[0], after.shape[1]), iter([after]), banded=False)
    return _Rendered(strips, None, encoding, preview=(before, after))


def _write_encoded(f: BinaryIO, rendered: _Rendered, fmt: ImageFormat, meta: Embedded) -> None:
    """Write the output with its metadata to ``f`` (seekable, open for reading and writing)."""
    if rendered.dng is not None:
        write_dng(f, *rendered.dng)
        into_tiff(f, meta)
    else:
        assert rendered.strips is not None
        strips = rendered.strips.strips
        try:
            write_image_strips(f, rendered.strips.shape, strips, fmt, meta)
        finally:
            # Also when the writer stopped early: a band still open in LibRaw is closed before
            # the file's own handle is.
            close = getattr(strips, "close", None)
            if close is not None:
                close()


def _timed(strips: Iterator[np.ndarray], timings: dict[str, float]) -> Iterator[np.ndarray]:
    """Pass strips on, adding the time spent making them to ``timings["render"]``."""
    while True:
        start = time.perf_counter()
        strip = next(strips, None)
        timings["render"] += time.perf_counter() - start
        if strip is None:
            return
        yield strip


def _dng_metadata(raw: RawFile) -> DngMetadata:
    info = raw.info
    wb = info.wb_multipliers
    return DngMetadata(
        pattern=info.layout.pattern,
        black=info.black,
        white=int(info.white),
        color_matrix=info.color_matrix,
        as_shot_neutral=(1 / wb[0], 1.0, 1 / wb[2]),
        make=info.exif.make or "Unknown",
        model=info.exif.model or "Camera",
        exposure_time=info.exif.exposure_time,
        f_number=info.exif.f_number,
        iso=int(info.exif.iso) if info.exif.iso else None,
        datetime_original=info.exif.datetime_original,
        orientation=info.exif.orientation or 1,
        software=f"sidraw {__version__}",
    )


@contextmanager
def _render_errors(name: str) -> Iterator[None]:
    """LibRaw errors after the decode (in rendering a damaged file) as the file's error."""
    try:
        yield
    except rawpy.LibRawError as exc:
        reason = f"damaged raw data, LibRaw cannot render it ({_libraw_reason(exc)})"
        raise CorruptFileError(reason, name) from None


class PreparedFile:
    """A file decoded and denoised, waiting to be rendered and written (:func:`finish_file`).

    It holds the open LibRaw handle, whose raw buffer now holds the clean mosaic (and, for a
    preview, the naively brightened mosaic);
    :func:`finish_file` releases them, and so does :meth:`close` for a file that is dropped.
    """

    def __init__(
        self,
        src_name: str,
        dst: str | os.PathLike[str] | BinaryIO,
        opts: ConvertOptions,
        stack: ExitStack,
        raw: RawFile,
        t0: float,
    ) -> None:
        self.src_name = src_name
        self.dst = dst
        self.opts = opts
        self.raw = raw
        self.timings: dict[str, float] = {}
        self.t0 = t0
        self.tags: dict[str, Any] = {}
        self.network: Network | None = None
        self.naive: np.ndarray | None = None
        self.decision: RatioDecision | None = None
        self.noise: CheckedNoise | None = None
        self._stack = stack

    def close(self) -> None:
        """Release the LibRaw handle and the preview's mosaic (idempotent)."""
        self.naive = None
        self._stack.close()


def prepare_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | BinaryIO,
    options: ConvertOptions | None = None,
    *,
    data: bytes | None = None,
    models: ModelCache | None = None,
    model: str | os.PathLike[str] | None = None,
    device: Device = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> PreparedFile:
    """First half of :func:`convert_file`: decode, choose the ratio, denoise (the network).

    Batch conversion runs it for the next file while :func:`finish_file` renders and writes the
    previous one in another thread. Arguments as for :func:`convert_file`.
    """
    opts = options or ConvertOptions()
    demosaic_algorithm(opts.demosaic)  # a caller's mistake: say so before any work is spent
    cache = models or ModelCache(model, device)
    t0 = time.perf_counter()
    src_name = os.fspath(src)
    if isinstance(dst, (str, os.PathLike)):
        check_target(dst, overwrite=opts.overwrite)  # before the decode and inference are spent
    stack = ExitStack()
    try:
        raw = stack.enter_context(open_raw(src_name, data))
        prepared = PreparedFile(src_name, dst, opts, stack, raw, t0)
        prepared.timings["decode"] = time.perf_counter() - t0
        with _render_errors(src_name):
            prepared.tags = metadata.select_tags(
                metadata.read_source(raw.data), strip_gps=opts.strip_gps
            )
            raw.drop_data()
            prepared.network = cache.get(raw.info.layout.kind)
            decision = choose_file_ratio(raw, opts)
            if opts.preview:
                # The preview's "before" needs the noisy photosites that denoising overwrites.
                prepared.naive = naive_mosaic(raw, decision.ratio)
            if prepared.network.card.noise_input is not None:
                prepared.noise = estimate_file_noise(raw)
            _, prepared.decision = denoise(
                raw,
                prepared.network,
                opts,
                out=raw.mosaic,
                decision=decision,
                noise=prepared.noise.estimate if prepared.noise else None,
                progress=progress,
                timings=prepared.timings,
            )
    except BaseException:
        stack.close()
        raise
    return prepared


def finish_file(prepared: PreparedFile) -> ConvertResult:
    """Second half of :func:`convert_file`: render through LibRaw and write the output.

    The prepared file is closed whatever happens.
    """
    try:
        return _finish(prepared)
    finally:
        prepared.close()


def _finish(prepared: PreparedFile) -> ConvertResult:
    opts, raw, src_name, dst = prepared.opts, prepared.raw, prepared.src_name, prepared.dst
    timings = prepared.timings
    decision, network = prepared.decision, prepared.network
    assert decision is not None and network is not None
    start = time.perf_counter()
    timings["render"] = 0.0
    with _render_errors(src_name):
        rendered = _render_stage(raw, prepared.naive, opts)
    prepared.naive = None
    timings["render"] += time.perf_counter() - start
    start = time.perf_counter()
    render_before = timings["render"]
    if rendered.strips is not None:
        # Bands are rendered as the writer asks for them: one band is in memory at a time.
        rendered.strips.strips = _timed(rendered.strips.strips, timings)
    record = metadata.SidrawRecord(
        ratio=decision.ratio,
        ratio_mode=decision.mode,
        model=network.card.name,
        model_sha256=_file_sha256(network),
        extra={"Precision": network.precision},
    )
    icc = icc_profile(rendered.encoding) if rendered.encoding is not None else None
    # A DNG keeps the camera's orientation (its pixels are not rotated); images are upright.
    orientation = None if rendered.dng is not None else 1
    meta = metadata.embedded(tags=prepared.tags, record=record, icc=icc, orientation=orientation)

    out_name: str | None
    if isinstance(dst, (str, os.PathLike)):
        with _render_errors(src_name):
            write_atomic(
                Path(dst),
                lambda f: _write_encoded(f, rendered, opts.fmt, meta),
                overwrite=opts.overwrite,
            )
        out_name = os.fspath(dst)
        prepared.close()
        if rendered.preview is not None:
            write_atomic(preview_path(Path(dst)), side_by_side(*rendered.preview), overwrite=True)
    else:
        buf = io.BytesIO()
        with _render_errors(src_name):
            _write_encoded(buf, rendered, opts.fmt, meta)
        prepared.close()
        try:
            dst.write(buf.getbuffer())
            dst.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the output stream ({exc})", "-") from None
        out_name = "-"
    timings["write"] = time.perf_counter() - start - (timings["render"] - render_before)
    return ConvertResult(
        input=src_name,
        output=out_name,
        decision=decision,
        model=network.card.name,
        seconds=time.perf_counter() - prepared.t0,
        timings=timings,
        precision=network.precision,
        model_sha256=_file_sha256(network),
        noise=noise_report(prepared.noise, prepared.raw) if prepared.noise else None,
    )


def _file_sha256(network: Network) -> str:
    """The sha256 of the ONNX file a network runs: its variant's, not always the card's."""
    return choose_file(network.card, network.precision, network.device)[1]  # type: ignore[arg-type]


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | BinaryIO,
    options: ConvertOptions | None = None,
    *,
    data: bytes | None = None,
    models: ModelCache | None = None,
    model: str | os.PathLike[str] | None = None,
    device: Device = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Convert one dark raw file into a bright, clean 16-bit image.

    Args:
        src: the raw file (any format LibRaw reads with a Bayer or X-Trans CFA); with ``data``,
            only the name used in messages (e.g. ``"-"`` for stdin).
        dst: the output file (written atomically; not overwritten unless ``options.overwrite``),
            or a binary stream (e.g. ``sys.stdout.buffer``).
        options: conversion settings (defaults: auto ratio, sRGB TIFF).
        data: the raw file's bytes, when they do not come from ``src`` (stdin).
        models: a model cache shared across files (default: a new one from ``model``/``device``).
        model: a model card, ONNX file or folder (default: the bundled models).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: called with ``(tiles done, tiles total)`` during inference.

    Raises:
        sidraw.SidrawError: bad input, missing model, or the output cannot be written.
    """
    prepared = prepare_file(
        src,
        dst,
        options,
        data=data,
        models=models,
        model=model,
        device=device,
        progress=progress,
    )
    return finish_file(prepared)
