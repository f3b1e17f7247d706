"""Low-frequency mean correction: the denoised mosaic keeps the local means of its input.

A denoiser trained for the smallest error shrinks a weak, noisy signal towards what it saw most
often in training, and the input clip at white cuts the top off the noise of bright areas: at
high ratios both show as a colour shift of several per cent on flat patches. The amplified input,
unclipped, is an unbiased estimate of the clean signal, and its mean over a block of ``b x b``
packed pixels has ``1/b`` of the pixel noise. So the block means of ``input - output`` measure the
network's low-frequency error; smoothed over neighbouring blocks and interpolated back to every
pixel, they are added to the output. Where the network is unbiased the correction is
low-frequency noise far below the pixel noise; where it is biased the bias goes.

Outliers (hot pixels, lights beyond the white clip) would drag a block mean: each residual is
limited to ``CLIP_SIGMAS`` standard deviations of the expected noise, and photosites at or near
the sensor's white level (whose true value is unknown) do not count.

The same blocks also guard against the opposite failure, a network that smooths away texture it
takes for noise (fine grids, a clean frame at ratio 1). Where the output is right, the residual
is the input's noise, whose variance ``V`` the noise fit predicts; where the network also took
signal away, the residual's variance ``E`` (about its block mean) exceeds ``V`` by what was lost.
With the noise and the lost signal independent, handing back the share ``1 - g`` of the residual
with ``g = V / E`` gives the least squared error, so with a guard ``c`` each block keeps
``g = min(1, c V / E)`` of the network's correction (``c`` above 1 leaves room for a slightly
low noise fit); ``g`` is smoothed and interpolated like the means.

The clip at white has a bias of its own: where the scene is at white after amplification (a sky
blown in the source, a lamp's rim), the output, however well denoised, keeps some noise, and the
clip cuts off its upper half, so such areas come out a little darker than white, and since the
renderer's white balance clips the other channels first, slightly tinted. The block means tell
where that is: a channel whose neighbourhood mean of the amplified input is within
``WHITE_SIGMAS`` standard errors of white (or above it) is taken towards white, fully at white
and not at all ``WHITE_SIGMAS`` standard errors below, so levels just below white move by a
small fraction of that standard error only.

Everything here works on packed, normalised arrays: ``(h, w, C) float32, 0 at black and 1 at
white``, amplified by the ratio.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

#: Residuals are limited to this many standard deviations of the expected noise.
CLIP_SIGMAS = 5.0
#: For the guard's energies residuals are limited further out: a network that smoothed a clean
#: frame leaves residuals of many sigmas, while one hot photosite in a 3 x 3 neighbourhood of
#: 8 x 8 blocks still adds less than a fifth of the expected energy.
ENERGY_SIGMAS = 10.0
#: Photosites at or above this fraction of white (before amplification) are treated as clipped.
SATURATED = 0.98
#: A channel whose neighbourhood mean is this many of its standard errors below white or closer
#: starts to be taken towards white (module docstring).
WHITE_SIGMAS = 2.0


def expected_variance(output: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """(n, w, C) float32 variance ``a * max(output, 0) + b`` of the amplified input's noise."""
    a, b = (np.float32(v) for v in np.asarray(noise, dtype=np.float32).reshape(-1)[:2])
    v = np.maximum(output, np.float32(0.0))
    v *= a
    v += max(b, np.float32(1e-12))
    return v


def residual(
    amplified: np.ndarray, output: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """``amplified - output``, limited to ``CLIP_SIGMAS`` noise standard deviations.

    Args:
        amplified: (n, w, C) float32 network input before its clip (normalised x ratio).
        output: (n, w, C) float32 denoised output, 0..1.
        noise: (1, 2) or (2,) float32 ``[a, b]``: the variance of the amplified input at signal
            ``s`` is ``a * s + b`` (:func:`sidraw.noise_estimate.noise_vector`).

    Returns:
        (n, w, C) float32.
    """
    sd = expected_variance(output, noise)
    np.sqrt(sd, out=sd)
    return _within(np.subtract(amplified, output, dtype=np.float32), sd, CLIP_SIGMAS)


def _within(d: np.ndarray, sd: np.ndarray, sigmas: float) -> np.ndarray:
    """A new (n, w, C) float32 array: ``d`` limited to ``sigmas`` times ``sd`` either way."""
    limit = sd * np.float32(sigmas)
    out = np.minimum(d, limit)
    np.negative(limit, out=limit)
    np.maximum(out, limit, out=out)
    return out


#: Rows of :attr:`BlockMeans.totals`: per block, the sums over its valid photosites of the
#: limited residuals, of 1 (their count), of the output, and of the squared residuals limited at
#: ``ENERGY_SIGMAS``. The guard's expected variances and the white check's input levels follow
#: from them: ``a * outputs + b * counts`` and ``outputs + sums``, as the output is 0..1.
SUMS, COUNTS, OUTPUTS, SQUARES = range(4)


@dataclass
class BlockMeans:
    """Running per-block sums over the rows of a packed image.

    Attributes:
        shape: (h, w, C) of the packed image.
        block: block edge, packed pixels.
        totals: (4, ceil(h / block), ceil(w / block), C) float64, rows :data:`SUMS`,
            :data:`COUNTS`, :data:`OUTPUTS` and :data:`SQUARES` (zero where not given).
    """

    shape: tuple[int, int, int]
    block: int
    totals: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int], block: int) -> BlockMeans:
        h, w, c = shape
        return cls(shape, block, np.zeros((4, -(-h // block), -(-w // block), c)))

    @property
    def sums(self) -> np.ndarray:
        return self.totals[SUMS]

    @property
    def counts(self) -> np.ndarray:
        return self.totals[COUNTS]

    def add(
        self,
        row0: int,
        res: np.ndarray,
        valid: np.ndarray,
        output: np.ndarray | None = None,
        wide: np.ndarray | None = None,
    ) -> None:
        """Add rows ``row0 .. row0 + n`` of residuals (n, w, C), counting only ``valid`` ones
        (bool, or float32 0 / 1, same shape), for the white level and the guard their
        ``output`` (0..1), and for the guard the residuals limited at ``ENERGY_SIGMAS``,
        ``wide``. Each row is added once."""
        mask = valid if valid.dtype == np.float32 else valid.astype(np.float32)
        n, b = res.shape[0], self.block
        # Per block row (a slice spans one or two): masked sums down the rows, then across
        # each block's columns, all totals at once.
        for k in range(row0 // b, (row0 + n - 1) // b + 1):
            lo, hi = max(k * b, row0) - row0, min((k + 1) * b, row0 + n) - row0
            m = mask[lo:hi]
            rows = np.zeros((4, *res.shape[1:]), dtype=np.float32)
            np.einsum("nwc,nwc->wc", res[lo:hi], m, out=rows[SUMS])
            np.sum(m, axis=0, out=rows[COUNTS])
            if output is not None:
                np.einsum("nwc,nwc->wc", output[lo:hi], m, out=rows[OUTPUTS])
            if wide is not None:
                np.einsum("nwc,nwc,nwc->wc", wide[lo:hi], wide[lo:hi], m, out=rows[SQUARES])
            self.totals[:, k] += _sum_columns(rows, self.totals.shape[2], b)

    def grid_rows(self, k: int, noise: np.ndarray | None, guard: float) -> np.ndarray:
        """(3, w, C) float32 for block row ``k`` (block rows ``k - 1 .. k + 1`` complete), each
        block taken with its 3 x 3 neighbourhood (edges repeated), interpolated linearly between
        block centres along the row (held beyond the outer ones):

        0. the mean residual (weighted by counts, so blocks with few valid photosites count
           little);
        1. the share ``min(1, guard * V / E)`` of the network's correction kept (1 where
           ``guard`` is 0, and in blocks without valid photosites);
        2. how far the block is taken towards white, per channel: 0 where the mean input is
           ``WHITE_SIGMAS`` standard errors (from the noise fit ``[a, b]``) or more below white,
           1 at white or above, linear between (0 without ``noise`` and in empty blocks).
        """
        last = self.totals.shape[1] - 1
        near = self.totals[:, [max(k - 1, 0), k, min(k + 1, last)]].sum(axis=1)
        sums, counts, outputs, squares = _box3_columns(near)
        n = np.maximum(counts, 1.0)
        mean = sums / n
        grids = np.zeros((3, *mean.shape), dtype=np.float32)
        grids[0] = mean
        grids[1] = 1.0
        if noise is not None:
            a, b = (float(v) for v in np.asarray(noise, dtype=np.float64).reshape(-1)[:2])
            b = max(b, 1e-12)
            if guard > 0:
                energy = squares / n - mean * mean
                expected = (a * outputs + b * counts) / n
                grids[1] = np.minimum(1.0, guard * expected / np.maximum(energy, 1e-20))
            level = (outputs + sums) / n
            width = WHITE_SIGMAS * np.sqrt((a * np.maximum(level, 0.0) + b) / n)
            share = np.clip((level - 1.0) / width + 1.0, 0.0, 1.0)
            grids[2] = np.where(counts > 0, share, 0.0)
        x0, x1, fx = self._columns
        return grids[:, x0] * (1 - fx)[:, None] + grids[:, x1] * fx[:, None]

    @functools.cached_property
    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`_interp_index` of every column (the same for every block row)."""
        return _interp_index(np.arange(self.shape[1]), self.block, self.totals.shape[2])


class CorrectionStream:
    """The correction applied to output rows as they arrive, in order.

    A row's correction depends on the block rows around it, so rows are held back until the
    block rows they need are complete (about three blocks); :meth:`close` releases the rest.
    ``emit(row0, rows)`` receives corrected (n, w, C) float32 rows in order. With a ``guard``
    (above 0) and the model's ``noise`` input, blocks whose residual holds more than ``guard``
    times the expected noise variance get the excess back (module docstring).

    With an ``apply_in`` executor of one worker, corrections are applied and emitted there, in
    order, while the caller pushes the next rows (numpy releases the GIL); :meth:`wait` waits
    for them (and raises what they raised), as :meth:`close` does.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        block: int,
        emit: Callable[[int, np.ndarray], None],
        noise: np.ndarray | None = None,
        guard: float = 0.0,
        apply_in: Executor | None = None,
    ) -> None:
        if guard > 0 and noise is None:
            raise ValueError("the guard needs the noise input and the amplified input")
        self.means = BlockMeans.empty(shape, block)
        self.emit = emit
        self.noise, self.guard = noise, guard
        self.pending: list[tuple[int, list[np.ndarray]]] = []
        self.seen = 0
        self.done = 0
        self.cache: dict[int, np.ndarray] = {}
        self.apply_in = apply_in
        self.applying: list[Future[None]] = []

    def push(
        self,
        row0: int,
        output: np.ndarray,
        res: np.ndarray | None,
        valid: np.ndarray,
        amplified: np.ndarray | None = None,
    ) -> None:
        """Rows ``row0 ..`` of the (clipped, 0..1) output, their :func:`residual` (None: made
        here from ``amplified``, sharing its noise scale with the guard's) and validity, and for
        the guard the amplified input itself: residuals limited at ``ENERGY_SIGMAS`` measure
        each block's energy (a hot pixel cannot sway it), whole ones go back."""
        if row0 != self.seen:
            raise ValueError(f"rows must come in order: expected {self.seen}, got {row0}")
        mask = valid.astype(np.float32)
        if res is None or self.guard > 0:
            if self.noise is None or amplified is None:
                raise ValueError("the guard and the residual need the noise and amplified input")
            whole = np.subtract(amplified, output, dtype=np.float32)
            sd = expected_variance(output, self.noise)
            np.sqrt(sd, out=sd)
            if res is None:
                res = _within(whole, sd, CLIP_SIGMAS)
        if self.guard > 0:
            self.means.add(row0, res, mask, output, _within(whole, sd, ENERGY_SIGMAS))
            held = [output, whole, mask]
        else:
            self.means.add(row0, res, mask, output if self.noise is not None else None)
            held = [output]
        self.seen += output.shape[0]
        self.pending.append((row0, held))
        self._release(self._ready())

    def close(self) -> None:
        """Release every row still held (all rows must have been pushed)."""
        if self.seen != self.means.shape[0]:
            raise ValueError(f"{self.seen} of {self.means.shape[0]} rows pushed")
        self._release(self.seen)
        self.wait()

    def wait(self) -> None:
        """Wait until every released row has been emitted (with an ``apply_in`` executor)."""
        while self.applying:
            self.applying.pop(0).result()

    def _ready(self) -> int:
        """Rows ``< r`` whose correction no row still to come can change."""
        b, cells = self.means.block, self.means.totals.shape[1]
        if self.seen >= self.means.shape[0]:
            return self.seen
        complete = self.seen // b  # block rows all of whose rows are in
        last_grid = complete - 2  # grid rows that need no incomplete block row
        rows = np.arange(self.done, self.seen)
        _, y1, _ = _interp_index(rows, b, cells)
        return self.done + int(np.searchsorted(y1, last_grid, side="right"))

    def _release(self, upto: int) -> None:
        while self.pending and self.done < upto:
            row0, held = self.pending[0]
            size = held[0].shape[0]
            n = min(size, upto - row0)
            if n < size:
                self.pending[0] = (row0 + n, [a[n:] for a in held])
                held = [a[:n] for a in held]
            else:
                self.pending.pop(0)
            if self.apply_in is None:
                self._emit(row0, held)
            else:
                # Only the worker reads the grid cache; the block rows these rows need are
                # complete, and later pushes add to other block rows only.
                self.applying.append(self.apply_in.submit(self._emit, row0, held))
            self.done = row0 + n

    def _emit(self, row0: int, held: list[np.ndarray]) -> None:
        self.emit(row0, self._apply(row0, held))

    def _grid(self, k: int) -> np.ndarray:
        if k not in self.cache:
            self.cache[k] = self.means.grid_rows(k, self.noise, self.guard)
        return self.cache[k]

    def _apply(self, row0: int, held: list[np.ndarray]) -> np.ndarray:
        rows = held[0]
        index = np.arange(row0, row0 + rows.shape[0])
        y0, y1, fy = _interp_index(index, self.means.block, self.means.totals.shape[1])
        for k in [k for k in self.cache if k < y0[0]]:
            del self.cache[k]
        lo, hi = int(y0[0]), int(y1[-1]) + 1
        grids = np.stack([self._grid(k) for k in range(lo, hi)])  # (K, 3, w, C)
        f = fy[:, None, None, None]
        # (n, 3, w, C): the mean residual, the share kept and the pull to white at each row.
        at = grids[y0 - lo] * (1 - f) + grids[y1 - lo] * f
        field, gain, white = at[:, 0], at[:, 1], at[:, 2]
        corrected = rows + field
        if self.guard > 0:
            # The share 1 - g of the residual about its local mean goes back; not where the
            # input is near white, whose true value is unknown.
            back = np.subtract(held[1], field)
            back *= 1 - gain
            back *= held[2]
            corrected += back
        if self.noise is not None:
            up = np.subtract(np.float32(1.0), corrected)
            np.maximum(up, np.float32(0.0), out=up)
            up *= white
            corrected += up
        np.minimum(corrected, np.float32(1.0), out=corrected)
        np.maximum(corrected, np.float32(0.0), out=corrected)
        np.copyto(corrected, rows, where=blown(rows))
        return corrected


def blown(rows: np.ndarray, white: float = 1.0) -> np.ndarray:
    """(n, w, 1) bool: the packed pixels of (n, w, C) rows at ``white`` or above in every
    channel (as ``np.all(rows >= white, axis=2, keepdims=True)``, several times faster)."""
    low = rows[..., :1].copy()
    for c in range(1, rows.shape[-1]):
        np.minimum(low, rows[..., c : c + 1], out=low)
    return low >= white


def _sum_columns(rows: np.ndarray, cells: int, block: int) -> np.ndarray:
    """(..., w, C) -> (..., cells, C) float64: sums over blocks of ``block`` columns (the last
    one may be short)."""
    *lead, w, c = rows.shape
    if cells * block != w:
        pad = [(0, 0)] * len(lead) + [(0, cells * block - w), (0, 0)]
        rows = np.pad(rows, pad)
    blocks = rows.reshape(*lead, cells, block, c)
    # Column by column: numpy's reduction over a short inner axis is several times slower.
    total = blocks[..., 0, :].astype(np.float64)
    for j in range(1, block):
        total += blocks[..., j, :]
    return total


def _box3_columns(a: np.ndarray) -> np.ndarray:
    """(..., wb, C): each element summed with its two neighbours along ``wb`` (edges
    repeated)."""
    out = a.copy()
    out[..., 1:, :] += a[..., :-1, :]
    out[..., :-1, :] += a[..., 1:, :]
    out[..., :1, :] += a[..., :1, :]
    out[..., -1:, :] += a[..., -1:, :]
    return out


def _interp_index(
    pos: np.ndarray, block: int, cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbouring block indices and the weight of the second, for pixel positions ``pos``."""
    t = np.clip((pos.astype(np.float32) + 0.5) / block - 0.5, 0.0, cells - 1)
    i0 = np.floor(t).astype(np.intp)
    i1 = np.minimum(i0 + 1, cells - 1)
    return i0, i1, (t - i0).astype(np.float32)


def correct(
    output: np.ndarray,
    amplified: np.ndarray,
    normalised: np.ndarray,
    noise: np.ndarray,
    block: int,
    guard: float = 0.0,
) -> np.ndarray:
    """The mean correction of a whole packed image (what ``sidraw convert`` does band by band).

    Args:
        output: (h, w, C) float32 network output, clipped to 0..1.
        amplified: (h, w, C) float32 unclipped network input (``normalised * ratio``).
        normalised: (h, w, C) float32 input before amplification (for the white check).
        noise: the model's noise input ``[a, b]``.
        block: block edge in packed pixels.
        guard: residual guard ``c`` (0: none), see the module docstring.

    Returns:
        (h, w, C) float32 in 0..1; pixels that are white in every channel (blown highlights)
        stay white.
    """
    out = np.empty_like(output, dtype=np.float32)

    def take(row0: int, rows: np.ndarray) -> None:
        out[row0 : row0 + rows.shape[0]] = rows

    stream = CorrectionStream(output.shape, block, take, noise, guard)
    blown = np.all(output >= 1.0, axis=2, keepdims=True)
    stream.push(
        0, output, residual(amplified, output, noise), (normalised < SATURATED) & ~blown,
        amplified,
    )
    stream.close()
    return out
