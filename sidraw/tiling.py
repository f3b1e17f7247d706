"""Overlapping tiles: run a network on an image of any size with bounded memory, without seams.

The packed image is reflect-padded by ``margin`` on every side (so border pixels see context like
inner ones) and at the end of each axis so that tiles of ``tile`` pixels with stride
``tile - overlap`` cover it exactly. ``tile`` and ``overlap`` are multiples of the network's
downsampling factor, so every tile origin is aligned to it. Neighbouring tiles are blended with
raised-cosine ramps over the overlap, whose weights add up to one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
#: Width of the cross-fade inside an overlap, in packed pixels.
DEFAULT_BLEND = 16
#: Tiles may be up to ``tile // TILE_SLACK`` longer than asked when that saves a tile on an axis.
TILE_SLACK = 8

#: A function from a (1, C, t, t') float32 NCHW batch to a (1, C', t, t') float32 batch.
TileFn = Callable[[np.ndarray], np.ndarray]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def default_margin(overlap: int, multiple: int) -> int:
    """Reflect padding around the image: half the overlap, aligned to ``multiple``."""
    return _round_up(overlap // 2, multiple) if overlap else 0


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis: ``origins`` in padded coordinates, of tiles ``size`` long."""

    length: int
    margin: int
    padded: int
    size: int
    overlap: int
    origins: tuple[int, ...]


def longest_tile(tile: int, multiple: int) -> int:
    """The longest tile side :func:`plan_axis` may choose when asked for ``tile``."""
    return tile + tile // TILE_SLACK // multiple * multiple


def plan_axis(length: int, tile: int, overlap: int, multiple: int, margin: int) -> AxisPlan:
    """Tile one axis of ``length`` pixels.

    Tiles are about ``tile`` long (at most ``tile // TILE_SLACK`` longer, rounded down to
    ``multiple``, when that saves one tile; or the whole padded axis when that is shorter),
    overlap by ``overlap`` and start at multiples of ``multiple``.
    """
    if tile % multiple or overlap % multiple:
        raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of {multiple}")
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be smaller than the tile")
    body = length + 2 * margin
    if body <= tile:
        size = _round_up(body, multiple)
        return AxisPlan(length, margin, size, size, 0, (0,))
    count = -(-(body - tile) // (tile - overlap)) + 1
    # As many tiles as full-size ones would need, shrunk to just cover the axis: the padding
    # beyond the image is then less than one alignment step per tile instead of up to a tile.
    size = min(tile, _round_up(-(-(body - overlap) // count) + overlap, multiple))
    # One tile fewer, if slightly longer tiles then cover the axis: the network's time follows
    # the pixels it is fed, and fewer tiles repeat fewer overlaps (a 12 MP Bayer frame: 15
    # tiles of 528x480 instead of 20 of 416x480, 5 % fewer pixels).
    if count > 1:
        fewer = _round_up(-(-(body - overlap) // (count - 1)) + overlap, multiple)
        if fewer <= longest_tile(tile, multiple):
            count, size = count - 1, fewer
    stride = size - overlap
    padded = size + (count - 1) * stride
    origins = tuple(i * stride for i in range(count))
    return AxisPlan(length, margin, padded, size, overlap, origins)


def _ramp(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / n)).astype(np.float32)


def _window_edge(overlap: int, blend: int) -> np.ndarray:
    """Weights over an overlap: 0 on the outer part, a raised-cosine ramp of ``blend``, then 1.

    The pixels nearest a tile's edge see zero padding instead of the image, so they get no
    weight; the ramp sits in the middle of the overlap, where both tiles have context.
    """
    blend = max(1, min(blend, overlap))
    lead = (overlap - blend) // 2
    edge = np.ones(overlap, dtype=np.float32)
    edge[:lead] = 0.0
    edge[lead : lead + blend] = _ramp(blend)
    return edge


def axis_weight(plan: AxisPlan, k: int, blend: int | None = None) -> np.ndarray:
    """(size,) float32 blending weight of tile ``k`` along one axis (weights sum to one)."""
    w = np.ones(plan.size, dtype=np.float32)
    if plan.overlap:
        edge = _window_edge(plan.overlap, blend if blend is not None else DEFAULT_BLEND)
        if k > 0:
            w[: plan.overlap] = edge
        if k < len(plan.origins) - 1:
            w[-plan.overlap :] = edge[::-1]
    return w


def iter_tiles(plan_y: AxisPlan, plan_x: AxisPlan) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(ky, kx, y0, x0)`` for every tile, row by row."""
    for ky, y0 in enumerate(plan_y.origins):
        for kx, x0 in enumerate(plan_x.origins):
            yield ky, kx, y0, x0


def pad_reflect(image: np.ndarray, plan_y: AxisPlan, plan_x: AxisPlan) -> np.ndarray:
    """Reflect-pad an (h, w, C) image to the padded size of the plans (an axis of length 1 is
    edge-padded, as it has nothing to reflect)."""
    out = image
    for axis, plan in enumerate((plan_y, plan_x)):
        pads = [(0, 0)] * 3
        pads[axis] = (plan.margin, plan.padded - plan.length - plan.margin)
        out = np.pad(out, pads, mode="reflect" if plan.length > 1 else "edge")
    return out


def reflect_index(start: int, stop: int, length: int, margin: int) -> np.ndarray:
    """Image indices of padded positions ``start..stop`` (padded = image shifted by ``margin``),
    reflected at the borders like ``np.pad(mode="reflect")`` (``"edge"`` for a length of 1)."""
    idx = np.arange(start - margin, stop - margin)
    if length == 1:
        return np.zeros(idx.shape, dtype=np.intp)
    period = 2 * (length - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= length, period - idx, idx).astype(np.intp)


def stream_reread_start(
    length: int, tile: int, overlap: int, multiple: int, margin: int | None = None
) -> int:
    """First image row that :func:`run_tiled_stream` may read again after handing it to
    ``write``: the last tile row reflects rows back up from the bottom border, so a caller that
    writes output over its input must keep rows from here on until the end."""
    if margin is None:
        margin = default_margin(overlap, multiple)
    plan = plan_axis(length, tile, overlap, multiple, margin)
    below = plan.padded - length - margin  # padded rows past the bottom, reflected back up
    return max(0, length - 1 - below)


#: Reads network input: ``read(rows, cols)`` -> (len(rows), len(cols), C) float32 at those image
#: indices (already reflected, so always inside the image).
ReadFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: Takes finished output: ``write(row0, rows)`` with rows (n, w, C') float32, in image order.
WriteFn = Callable[[int, np.ndarray], None]


def run_tiled_stream(
    shape: tuple[int, int],
    read: ReadFn,
    fn: TileFn,
    write: WriteFn,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    multiple: int = 16,
    out_channels: int,
    margin: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    last_fn: TileFn | None = None,
) -> None:
    """Apply ``fn`` tile by tile without holding the whole input or output.

    The input is read one tile at a time; the output is blended in a band of one tile row,
    and rows are handed to ``write`` as soon as no later tile touches them. Memory is one band
    (``tile`` rows of the image width) plus one tile, whatever the image height.

    Args:
        shape: (h, w) of the image, in packed pixels.
        read: the network input of a tile (see :data:`ReadFn`).
        fn: the network on one NCHW tile.
        write: receives finished rows (see :data:`WriteFn`); the array is reused afterwards.
        tile, overlap, multiple, margin, progress, last_fn: as for :func:`run_tiled`.
        out_channels: channels of the output.
    """
    h, w = shape
    if margin is None:
        margin = default_margin(overlap, multiple)
    py = plan_axis(h, tile, overlap, multiple, margin)
    px = plan_axis(w, tile, overlap, multiple, margin)
    wy = [axis_weight(py, k) for k in range(len(py.origins))]
    wx = [axis_weight(px, k) for k in range(len(px.origins))]
    cols = [reflect_index(x0, x0 + px.size, w, margin) for x0 in px.origins]
    band = np.zeros((py.size, px.padded, out_channels), dtype=np.float32)
    band_y0 = 0  # padded row of band[0]

    def emit(stop: int) -> None:
        """Hand over the band's rows above padded row ``stop`` and shift the rest up."""
        nonlocal band_y0
        lo, hi = max(band_y0, margin), min(stop, margin + h)
        if hi > lo:
            write(lo - margin, band[lo - band_y0 : hi - band_y0, margin : margin + w])
        done = stop - band_y0
        band[: py.size - done] = band[done:]
        band[py.size - done :] = 0.0
        band_y0 = stop

    total = len(py.origins) * len(px.origins)
    n = 0
    for ky, y0 in enumerate(py.origins):
        if y0 > band_y0:
            emit(y0)
        rows = reflect_index(y0, y0 + py.size, h, margin)
        for kx, x0 in enumerate(px.origins):
            n += 1
            patch = read(rows, cols[kx])
            batch = np.ascontiguousarray(patch.transpose(2, 0, 1)[None])
            result = (last_fn if (last_fn is not None and n == total) else fn)(batch)
            if result.shape != (1, out_channels, py.size, px.size):
                raise ValueError(
                    f"network returned shape {result.shape} for a tile of {batch.shape}"
                )
            weight = wy[ky][:, None] * wx[kx][None, :]
            region = band[:, x0 : x0 + px.size]
            region += result[0].transpose(1, 2, 0) * weight[:, :, None]
            if progress is not None:
                progress(n, total)
    emit(band_y0 + py.size)


def run_tiled(
    image: np.ndarray,
    fn: TileFn,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    multiple: int = 16,
    out_channels: int | None = None,
    margin: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    last_fn: TileFn | None = None,
) -> np.ndarray:
    """Apply ``fn`` to an in-memory image tile by tile and blend the results
    (:func:`run_tiled_stream` reading from and writing to arrays).

    Args:
        image: (h, w, C) float32 network input (packed, amplified).
        fn: the network on one NCHW tile.
        tile: tile edge in packed pixels (a multiple of ``multiple``).
        overlap: overlap of neighbouring tiles in packed pixels (a multiple of ``multiple``).
        multiple: the network's downsampling factor.
        out_channels: channels of the output (default: as the input).
        margin: reflect padding around the image (default: ``overlap // 2`` rounded up to
            ``multiple``).
        progress: called with ``(done, total)`` after each tile.
        last_fn: used instead of ``fn`` for the last tile (e.g. to release memory pools after it).

    Returns:
        (h, w, C') float32 network output.
    """
    h, w, c = image.shape
    out = np.empty((h, w, out_channels or c), dtype=np.float32)

    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return image[np.ix_(rows, cols)]

    def write(row0: int, rows: np.ndarray) -> None:
        out[row0 : row0 + rows.shape[0]] = rows

    run_tiled_stream(
        (h, w),
        read,
        fn,
        write,
        tile=tile,
        overlap=overlap,
        multiple=multiple,
        out_channels=out_channels or c,
        margin=margin,
        progress=progress,
        last_fn=last_fn,
    )
    return out


def run_whole(image: np.ndarray, fn: TileFn, *, multiple: int = 16, margin: int = 32) -> np.ndarray:
    """The network on the whole (reflect-padded) image at once: the reference for tiling."""
    h, w, _ = image.shape
    py = plan_axis(h, 1 << 30, 0, multiple, margin)
    px = plan_axis(w, 1 << 30, 0, multiple, margin)
    padded = pad_reflect(image, py, px)
    result = fn(np.ascontiguousarray(padded.transpose(2, 0, 1)[None]))
    return np.ascontiguousarray(
        result[0].transpose(1, 2, 0)[py.margin : py.margin + h, px.margin : px.margin + w]
    )


def tiling_error(
    fn: TileFn,
    channels: int,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    multiple: int = 16,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    image: np.ndarray | None = None,
) -> float:
    """Max relative error of tiled against whole-image inference on ``image`` (h, w, C), by
    default a random input of flat 8-pixel squares plus noise.

    The error is ``max |tiled - whole| / max |whole|`` over all pixels and channels.
    """
    if image is None:
        rng = np.random.default_rng(seed)
        h, w = size or (tile + tile // 2 + 8, 2 * tile - 24)
        coarse = rng.uniform(0.0, 1.0, (h // 8 + 2, w // 8 + 2, channels)).astype(np.float32)
        image = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w]
        image += rng.normal(0.0, 0.1, image.shape).astype(np.float32)
    margin = default_margin(overlap, multiple)
    tiled = run_tiled(image, fn, tile=tile, overlap=overlap, multiple=multiple, margin=margin)
    whole = run_whole(image, fn, multiple=multiple, margin=margin)
    return float(np.abs(tiled - whole).max() / max(float(np.abs(whole).max()), 1e-12))


def measure_overlap(
    fn: TileFn,
    channels: int,
    *,
    tile: int = DEFAULT_TILE,
    multiple: int = 16,
    tolerance: float = 1e-3,
    minimum: int = 48,
    image: np.ndarray | None = None,
) -> int:
    """Smallest overlap (a multiple of ``multiple``, at least ``minimum``) at which tiled
    inference matches whole-image inference within ``tolerance`` (see :func:`tiling_error`;
    ``image``: the input to measure on, default its random one).

    Model export stores it in the model card as the network's default overlap: it reflects the
    network's effective receptive field, which training usually makes much smaller than the
    architectural one.
    """
    candidates = list(range(_round_up(minimum, multiple), tile // 2 + 1, multiple))
    if not candidates:
        return tile // 2

    def good(overlap: int) -> bool:
        error = tiling_error(
            fn, channels, tile=tile, overlap=overlap, multiple=multiple, image=image
        )
        return error <= tolerance

    # The error falls as the overlap grows: bisect for the first candidate within tolerance.
    lo, hi = 0, len(candidates) - 1
    if not good(candidates[hi]):
        return candidates[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if good(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]
