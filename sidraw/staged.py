"""Staged inference: a U-Net's full-resolution levels in tiles, its deep levels on the whole frame.

Overlapping tiles (:mod:`sidraw.tiling`) must overlap by all of the network's reach, and a
trained U-Net reaches far: sidraw-bayer version 3 needs 160 packed pixels, so its 960-pixel
tiles feed a 12 MP frame 1.55 times its pixels. That reach comes from the deep levels, which
work on a frame ``2**L`` times smaller along each axis. Staged inference cuts the network at
level ``L`` (:mod:`sidraw.unet_split`) and runs it in three passes:

1. ``encode``: the ``L`` full-resolution levels, in tiles that overlap only by those levels'
   own small reach (``context``), filling the features of the whole frame at ``1/2**L`` size
   and keeping the levels' skip connections (they are the largest arrays held: float16 halves
   them);
2. ``deep``: the deep levels on those features, in one piece up to ``deep_tile`` pixels a
   side (a 12 MP Bayer frame at ``L = 2``), else in overlapping tiles as in
   :func:`sidraw.tiling.run_tiled`;
3. ``decode``: the decoder's full-resolution levels, in the same small-overlap tiles, each
   with its part of the deep answer and of the skip connections. Rows are handed on in order
   as soon as no later tile reads them, so output may go into the input's buffer.

Where the deep stage runs in one piece, the result is the network on the whole reflect-padded
frame (:func:`sidraw.tiling.run_whole` with the same margin) up to float rounding, or to the
rounding of the skip connections where they are held as float16 (about 1e-4 of the output's
range; :func:`sidraw.unet_split.split_unet`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np

from . import buffers
from .tiling import AxisPlan, ReadFn, WriteFn, plan_axis, reflect_index, run_tiled

#: Largest side, in pixels of the deep stage's input, that it runs in one piece (with the
#: tiling slack, 576): at level 2 a 12 MP Bayer or 24 MP X-Trans frame.
DEEP_TILE = 512
#: Reflect padding around the frame (packed pixels), as :func:`sidraw.tiling.run_whole`.
DEFAULT_MARGIN = 32


class StageFn(Protocol):
    def __call__(self, *inputs: np.ndarray, last: bool = False) -> np.ndarray: ...


class EncodeFn(Protocol):
    def __call__(self, x: np.ndarray, *, last: bool = False) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Stages:
    """The three stages of a network cut at level ``log2(scale)``.

    Attributes:
        encode: (1, C, h, w) float32 input -> [(1, F, h/scale, w/scale) features, then the skip
            connections (1, S_k, h/2**k, w/2**k) of levels k = 0 .. L-1], float32.
        deep: (1, F, a, b) features -> (1, A, a, b) deep answer.
        decode: (1, C, h, w) input, (1, A, h/scale, w/scale) answer and the skip connections
            -> (1, C', h, w) output.
        scale: ``2**L``.
        context: packed pixels each encode or decode tile reads beyond its own part on every
            side (a multiple of the network's downsampling, at least the reach of those levels).
        deep_overlap: overlap of deep tiles, in deep pixels, when the frame needs several.
        answer_channels: ``A``.
        held_bytes: bytes held between the passes per packed pixel of the padded frame (the
            features, the skip connections and the deep answer).

    Each function takes ``last=True`` on its stage's last call (to release memory pools).
    """

    encode: EncodeFn
    deep: StageFn
    decode: StageFn
    scale: int
    context: int
    deep_overlap: int
    answer_channels: int
    held_bytes: float = 0.0


@dataclass(frozen=True)
class Window:
    """One tile of an axis in padded coordinates: it answers for ``lo..hi`` and reads
    ``read_lo..read_hi`` (``lo..hi`` widened by the context, inside the padded frame)."""

    lo: int
    hi: int
    read_lo: int
    read_hi: int


@dataclass(frozen=True)
class PaddedInput:
    """The network input of a whole frame, held: what :func:`run_staged_stream` reads its
    windows from when the caller has the frame in memory anyway, instead of a :data:`ReadFn`.

    Attributes:
        planes: (C, padded h, padded w) float32, padded as :func:`plan_stages` pads the frame
            with ``margin=0`` (:func:`padded_shape`; reflected at the bottom and right, as
            :func:`sidraw.pipeline.amplified_planes` does); values before the clip.
        clip: the network reads ``clip(planes, *clip)``.
    """

    planes: np.ndarray
    clip: tuple[float, float]

    @classmethod
    def of_image(
        cls, image: np.ndarray, multiple: int, clip: tuple[float, float] = (-1.0, 1.0)
    ) -> PaddedInput:
        """The held input of an in-memory (h, w, C) float32 image, padded to multiples of
        ``multiple`` by reflection at the bottom and right."""
        h, w, _ = image.shape
        ph, pw = padded_shape((h, w), multiple)
        rows, cols = reflect_index(0, ph, h, 0), reflect_index(0, pw, w, 0)
        return cls(np.ascontiguousarray(image[np.ix_(rows, cols)].transpose(2, 0, 1)), clip)

    def window(self, y: Window, x: Window) -> np.ndarray:
        """(1, C, h, w) float32 contiguous network input of a window's read range."""
        part = self.planes[:, y.read_lo : y.read_hi, x.read_lo : x.read_hi]
        out = np.empty((1, *part.shape), dtype=np.float32)
        np.clip(part, *self.clip, out=out[0])
        return out


def padded_shape(shape: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(h, w) of an (h, w) frame padded, without a margin, to multiples of ``multiple`` (as
    :func:`plan_stages` pads it with ``margin=0``)."""
    h, w = (plan_axis(n, 1 << 30, 0, multiple, 0).padded for n in shape)
    return h, w


def plan_windows(
    padded: int, tile: int, context: int, multiple: int, scale: int | None = None
) -> list[Window]:
    """Cut a padded axis (a multiple of ``multiple`` long) into about equal parts of at most
    ``tile`` pixels, aligned to ``multiple``, each read with ``context`` on both sides.

    ``context`` must be a multiple of ``scale`` (default ``multiple``): the stages' own
    downsampling, which the read ranges must keep aligned to (a window's features and skip
    connections start at whole pixels of their levels), not the whole network's."""
    scale = multiple if scale is None else scale
    if padded % multiple or context % scale or multiple % scale or tile < multiple:
        raise ValueError(
            f"axis {padded} and tile {tile} need {multiple}s, context {context} {scale}s"
        )
    n = -(-padded // tile)
    cuts = sorted({min(padded, -(-(i * padded) // (n * multiple)) * multiple) for i in range(n)})
    bounds = [*cuts, padded]
    return [
        Window(lo, hi, max(0, lo - context), min(padded, hi + context))
        for lo, hi in pairwise(bounds)
        if hi > lo
    ]


def _batch(values: np.ndarray) -> np.ndarray:
    """(h, w, C) -> contiguous (1, C, h, w)."""
    return np.ascontiguousarray(values.transpose(2, 0, 1)[None])


def _last_reads(windows: list[Window], length: int, margin: int) -> list[int]:
    """For each tile row, the first image row that a later tile row reads (``length``: none)."""
    firsts = [int(reflect_index(w.read_lo, w.read_hi, length, margin).min()) for w in windows]
    later = [length] * len(windows)
    for k in range(len(windows) - 2, -1, -1):
        later[k] = min(later[k + 1], firsts[k + 1])
    return later


def deep_overlap_for(overlap: int, scale: int, multiple: int) -> int:
    """Overlap of deep tiles (deep pixels) for a network whose overlapping tiles need
    ``overlap`` packed pixels: a ``scale``-th of it, rounded up to ``multiple // scale``."""
    step = multiple // scale
    return -(-overlap // scale // step) * step


@dataclass(frozen=True)
class StagePlan:
    """Where the passes of :func:`run_staged_stream` run on a frame.

    Attributes:
        padded: (h, w) of the frame padded by the margin and to multiples of the downsampling.
        rows, cols: the full-resolution windows of each axis (:func:`plan_windows`).
        deep_tile, deep_multiple: the deep stage's tile and alignment, in deep pixels.
        deep_rows, deep_cols: its tiling of the features (one origin each: one piece).
    """

    padded: tuple[int, int]
    rows: list[Window]
    cols: list[Window]
    deep_tile: int
    deep_multiple: int
    deep_rows: AxisPlan
    deep_cols: AxisPlan

    @property
    def deep_tiles(self) -> int:
        return len(self.deep_rows.origins) * len(self.deep_cols.origins)

    @property
    def steps(self) -> int:
        """Progress steps: every window twice, every deep tile once."""
        return 2 * len(self.rows) * len(self.cols) + self.deep_tiles


def plan_stages(
    shape: tuple[int, int],
    *,
    tile: int,
    context: int,
    scale: int,
    deep_overlap: int,
    multiple: int = 16,
    margin: int = DEFAULT_MARGIN,
    deep_tile: int = DEEP_TILE,
) -> StagePlan:
    """The :class:`StagePlan` of an (h, w) packed frame (arguments as for
    :func:`run_staged_stream` and :class:`Stages`)."""
    py, px = (plan_axis(n, 1 << 30, 0, multiple, margin) for n in shape)
    deep_multiple = multiple // scale
    deep_tile = -(-deep_tile // deep_multiple) * deep_multiple
    dy, dx = (
        plan_axis(p.padded // scale, deep_tile, deep_overlap, deep_multiple, 0) for p in (py, px)
    )
    return StagePlan(
        padded=(py.padded, px.padded),
        rows=plan_windows(py.padded, tile, context, multiple, scale),
        cols=plan_windows(px.padded, tile, context, multiple, scale),
        deep_tile=deep_tile,
        deep_multiple=deep_multiple,
        deep_rows=dy,
        deep_cols=dx,
    )


def run_staged_stream(
    shape: tuple[int, int],
    read: ReadFn | PaddedInput,
    stages: Stages,
    write: WriteFn,
    *,
    tile: int,
    out_channels: int,
    multiple: int = 16,
    margin: int = DEFAULT_MARGIN,
    deep_tile: int = DEEP_TILE,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run a staged network over an image read and written in rows (as
    :func:`sidraw.tiling.run_tiled_stream`).

    Args:
        shape: (h, w) of the image in packed pixels.
        read: the network input at image indices (see :data:`sidraw.tiling.ReadFn`; each
            position is read twice, once per full-resolution pass), or the whole input held
            (:class:`PaddedInput`, padded for ``margin=0``).
        stages: the cut network.
        write: receives finished rows in image order, each only after the last read of it.
        tile: largest side of an encode or decode tile (packed pixels, a multiple of
            ``multiple``).
        out_channels: channels of the output.
        multiple: the whole network's downsampling factor.
        margin: reflect padding around the image (a multiple of ``multiple``).
        deep_tile: largest side of a deep tile, in deep pixels.
        progress: called with ``(done, total)`` after each tile of each pass.
    """
    plan = plan_stages(
        shape, tile=tile, context=stages.context, scale=stages.scale,
        deep_overlap=stages.deep_overlap, multiple=multiple, margin=margin, deep_tile=deep_tile,
    )
    h, w = shape
    if isinstance(read, PaddedInput):
        if margin or read.planes.shape[1:] != plan.padded:
            raise ValueError(f"held input {read.planes.shape[1:]} is not the padded {plan.padded}")
        load = read.window
    else:
        load = _reader(read, shape, margin)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, plan.steps)

    features, *skips = _encode_pass(load, stages, plan, tick)
    answer = _deep_pass(stages, plan, features, tick)
    del features
    _decode_pass(load, stages, plan, [answer, *skips], write, (h, w, margin), out_channels, tick)


WindowFn = Callable[[Window, Window], np.ndarray]
"""The (1, C, h, w) float32 network input of a row window and a column window (their read
ranges, padded coordinates)."""


def _reader(read: ReadFn, shape: tuple[int, int], margin: int) -> WindowFn:
    """A :data:`WindowFn` over a :data:`sidraw.tiling.ReadFn` of an (h, w) image: padded
    positions reflected into the image."""
    h, w = shape

    def window(y: Window, x: Window) -> np.ndarray:
        rows = reflect_index(y.read_lo, y.read_hi, h, margin)
        return _batch(read(rows, reflect_index(x.read_lo, x.read_hi, w, margin)))

    return window


def _deep_pass(
    stages: Stages, plan: StagePlan, features: np.ndarray, tick: Callable[[], None]
) -> np.ndarray:
    """(A, h / s, w / s) deep answer of the (F, h / s, w / s) features: in one piece, or in
    overlapping tiles (:func:`sidraw.tiling.run_tiled`, on (h, w, C) views)."""

    def deep(batch: np.ndarray, last: bool = False) -> np.ndarray:
        tick()
        return stages.deep(batch, last=last)

    if plan.deep_tiles == 1:
        return deep(features[None], last=True)[0]
    answer = run_tiled(
        features.transpose(1, 2, 0), deep, tile=plan.deep_tile, overlap=stages.deep_overlap,
        multiple=plan.deep_multiple, margin=0, out_channels=stages.answer_channels,
        last_fn=lambda batch: deep(batch, last=True),
    )
    return answer.transpose(2, 0, 1)


def _encode_pass(
    load: WindowFn, stages: Stages, plan: StagePlan, tick: Callable[[], None]
) -> list[np.ndarray]:
    """The features of the whole padded frame, (F, padded h / s, padded w / s) float32, then its
    skip connections, (S_k, padded h / 2**k, padded w / 2**k) for k < L in the dtype the encode
    stage gives them. All held (C, h, w), as the stages give and take them, so that storing and
    reading a window needs no transposing copy."""
    held: list[np.ndarray] = []
    last_window = (len(plan.rows) - 1, len(plan.cols) - 1)
    for ky, y in enumerate(plan.rows):
        for kx, x in enumerate(plan.cols):
            outs = stages.encode(load(y, x), last=(ky, kx) == last_window)
            scales = [stages.scale] + [2**k for k in range(len(outs) - 1)]
            if not held:
                held = [
                    buffers.empty((out.shape[1], plan.padded[0] // f, plan.padded[1] // f),
                                  out.dtype)
                    for out, f in zip(outs, scales, strict=True)
                ]
            for out, f, into in zip(outs, scales, held, strict=True):
                into[:, y.lo // f : y.hi // f, x.lo // f : x.hi // f] = out[
                    0, :, (y.lo - y.read_lo) // f : (y.hi - y.read_lo) // f,
                    (x.lo - x.read_lo) // f : (x.hi - x.read_lo) // f
                ]
            tick()
    return held


def _decode_pass(
    load: WindowFn,
    stages: Stages,
    plan: StagePlan,
    held: list[np.ndarray],
    write: WriteFn,
    frame: tuple[int, int, int],
    out_channels: int,
    tick: Callable[[], None],
) -> None:
    """``held``: the deep answer, then the skip connections, each (C, h, w) at its scale;
    ``frame``: the image's h, w and margin."""
    h, w, margin = frame
    scales = [stages.scale] + [2**k for k in range(len(held) - 1)]
    later = _last_reads(plan.rows, h, margin)
    pending: list[tuple[int, np.ndarray]] = []  # finished image rows not yet safe to hand on

    def flush(limit: int) -> None:
        while pending and pending[0][0] < limit:
            row0, rows = pending.pop(0)
            n = min(rows.shape[0], limit - row0)
            write(row0, rows[:n])
            if n < rows.shape[0]:
                pending.insert(0, (row0 + n, rows[n:]))

    last_window = (len(plan.rows) - 1, len(plan.cols) - 1)
    for ky, y in enumerate(plan.rows):
        band = buffers.empty((y.hi - y.lo, w, out_channels), np.float32)
        for kx, x in enumerate(plan.cols):
            parts = [
                np.ascontiguousarray(
                    a[:, y.read_lo // f : y.read_hi // f, x.read_lo // f : x.read_hi // f]
                )[None]
                for a, f in zip(held, scales, strict=True)
            ]
            out = stages.decode(load(y, x), *parts, last=(ky, kx) == last_window)[0]
            if out.shape[0] != out_channels:
                raise ValueError(f"network returned {out.shape[0]} channels, not {out_channels}")
            # The part of this tile's core inside the image (not the reflect padding).
            lo, hi = max(x.lo, margin), min(x.hi, margin + w)
            if hi > lo:
                part = out[:, y.lo - y.read_lo : y.hi - y.read_lo, lo - x.read_lo : hi - x.read_lo]
                band[:, lo - margin : hi - margin] = part.transpose(1, 2, 0)
            tick()
        top, bottom = max(y.lo, margin), min(y.hi, margin + h)
        if bottom > top:
            pending.append((top - margin, band[top - y.lo : bottom - y.lo]))
        flush(later[ky])
    flush(h)


def run_staged(
    image: np.ndarray,
    stages: Stages,
    *,
    tile: int,
    multiple: int = 16,
    margin: int = DEFAULT_MARGIN,
    deep_tile: int = DEEP_TILE,
) -> np.ndarray:
    """:func:`run_staged_stream` on an in-memory (h, w, C) float32 image; returns the
    (h, w, C') float32 output (C' = C)."""
    h, w, c = image.shape
    out = np.empty((h, w, c), dtype=np.float32)

    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return image[np.ix_(rows, cols)]

    def write(row0: int, rows: np.ndarray) -> None:
        out[row0 : row0 + rows.shape[0]] = rows

    run_staged_stream(
        (h, w), read, stages, write, tile=tile, out_channels=c, multiple=multiple,
        margin=margin, deep_tile=deep_tile,
    )
    return out


#: Largest relative difference between staged and whole-frame inference that :func:`measure_context`
#: accepts: float rounding, far below a 16-bit step.
CONTEXT_TOLERANCE = 1e-5
#: The full-resolution tiles :func:`measure_context` uses: small, so the frame has many seams.
CONTEXT_TILE = 64


def measure_context(
    whole: Callable[[np.ndarray], np.ndarray],
    stages: Stages,
    image: np.ndarray,
    *,
    multiple: int = 16,
    largest: int = 128,
) -> int:
    """Smallest context (a multiple of ``stages.scale``) at which staged inference with small tiles
    reproduces the network on the whole frame (``whole``: (1, C, h, w) -> (1, C, h, w)) within
    :data:`CONTEXT_TOLERANCE` on ``image`` (h, w, C), the deep stage in one piece (``stages``
    with float32 skip connections, or the rounding to float16 exceeds the tolerance).

    Raises:
        ValueError: no context up to ``largest`` does (the cut is wrong for this network).
    """
    from dataclasses import replace

    from .tiling import run_whole

    reference = run_whole(image, whole, multiple=multiple, margin=DEFAULT_MARGIN)
    scale = max(float(np.abs(reference).max()), 1e-12)
    deep_tile = max(image.shape[:2]) + 2 * DEFAULT_MARGIN + multiple
    error = float("inf")
    for context in range(stages.scale, largest + 1, stages.scale):
        staged = run_staged(
            image, replace(stages, context=context), tile=CONTEXT_TILE, multiple=multiple,
            deep_tile=deep_tile,
        )
        error = float(np.abs(staged - reference).max()) / scale
        if error <= CONTEXT_TOLERANCE:
            return context
    raise ValueError(f"staged inference differs from the whole frame by {error:.2g} at context "
                     f"{largest}")
