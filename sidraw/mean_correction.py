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

from collections.abc import Callable
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
    # In place: this runs on every row of a frame.
    limit = expected_variance(output, noise)
    np.sqrt(limit, out=limit)
    limit *= np.float32(CLIP_SIGMAS)
    d = np.subtract(amplified, output, dtype=np.float32)
    np.minimum(d, limit, out=d)
    np.negative(limit, out=limit)
    np.maximum(d, limit, out=d)
    return d


@dataclass
class BlockMeans:
    """Running per-block sums of residuals over the rows of a packed image.

    Attributes:
        shape: (h, w, C) of the packed image.
        block: block edge, packed pixels.
        sums, counts: (ceil(h / block), ceil(w / block), C) float64.
        squares, variances: same shape: sums of squared residuals and of their expected
            variances (for the guard; zero when no variances are given).
        levels: same shape: sums of the output plus its limited residual, the amplified input
            (for the white level; zero when not given).
    """

    shape: tuple[int, int, int]
    block: int
    sums: np.ndarray
    counts: np.ndarray
    squares: np.ndarray
    variances: np.ndarray
    levels: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int], block: int) -> BlockMeans:
        h, w, c = shape
        grid = (-(-h // block), -(-w // block), c)
        return cls(shape, block, *(np.zeros(grid) for _ in range(5)))

    def add(
        self,
        row0: int,
        res: np.ndarray,
        valid: np.ndarray,
        var: np.ndarray | None = None,
        wide: np.ndarray | None = None,
        level: np.ndarray | None = None,
    ) -> None:
        """Add rows ``row0 .. row0 + n`` of residuals (n, w, C), counting only ``valid`` ones
        (bool, same shape), for the guard their expected variances ``var`` and the residuals
        limited at ``ENERGY_SIGMAS``, ``wide``, and for the white level the input ``level``.
        Each row is added once."""
        r = np.where(valid, res, np.float32(0.0))
        parts = [(self.sums, r), (self.counts, valid)]
        if var is not None and wide is not None:
            e = np.where(valid, wide, np.float32(0.0))
            parts += [(self.squares, e * e), (self.variances, np.where(valid, var, 0.0))]
        if level is not None:
            parts.append((self.levels, np.where(valid, level, np.float32(0.0))))
        n, b = res.shape[0], self.block
        wb = self.sums.shape[1]
        # Rows are summed per block row first (a slice spans one or two), then columns per block.
        for k in range(row0 // b, (row0 + n - 1) // b + 1):
            lo, hi = max(k * b, row0) - row0, min((k + 1) * b, row0 + n) - row0
            for total, values in parts:
                total[k] += _sum_columns(values[lo:hi].sum(axis=0, dtype=np.float64), wb, b)

    def grid_row(self, k: int) -> np.ndarray:
        """(w, C) float32: the means of block row ``k``, each block averaged with its 3 x 3
        neighbourhood (weighted by counts, so blocks with few valid photosites count little;
        edges repeated), interpolated linearly between block centres along the row (held
        beyond the outer ones). Block rows ``k - 1 .. k + 1`` must be complete."""
        s, n = self._neighbourhood(self.sums, k), self._neighbourhood(self.counts, k)
        return self._along_row((s / np.maximum(n, 1.0)).astype(np.float32))

    def gain_row(self, k: int, guard: float) -> np.ndarray:
        """(w, C) float32: the share ``min(1, guard * V / E)`` of the network's correction kept
        in block row ``k``, from the same 3 x 3 neighbourhoods, interpolated like
        :meth:`grid_row`. Blocks without valid photosites keep all of it."""
        n = np.maximum(self._neighbourhood(self.counts, k), 1.0)
        mean = self._neighbourhood(self.sums, k) / n
        energy = self._neighbourhood(self.squares, k) / n - mean * mean
        expected = self._neighbourhood(self.variances, k) / n
        gain = np.minimum(1.0, guard * expected / np.maximum(energy, 1e-20))
        return self._along_row(gain.astype(np.float32))

    def white_row(self, k: int, noise: np.ndarray) -> np.ndarray:
        """(w, C) float32: how far block row ``k`` is taken towards white, per channel: 0 where
        the neighbourhood mean of the input is ``WHITE_SIGMAS`` standard errors (from the noise
        fit ``[a, b]``) or more below white, 1 at white or above, linear between; interpolated
        like :meth:`grid_row`. Blocks without valid photosites: 0."""
        n = self._neighbourhood(self.counts, k)
        mean = self._neighbourhood(self.levels, k) / np.maximum(n, 1.0)
        a, b = (float(v) for v in np.asarray(noise, dtype=np.float64).reshape(-1)[:2])
        variance = (a * np.maximum(mean, 0.0) + max(b, 1e-12)) / np.maximum(n, 1.0)
        width = WHITE_SIGMAS * np.sqrt(variance)
        share = np.where(n > 0, np.clip((mean - 1.0) / width + 1.0, 0.0, 1.0), 0.0)
        return self._along_row(share.astype(np.float32))

    def _neighbourhood(self, totals: np.ndarray, k: int) -> np.ndarray:
        last = self.sums.shape[0] - 1
        return _box3_columns(totals[[max(k - 1, 0), k, min(k + 1, last)]].sum(axis=0))

    def _along_row(self, cells: np.ndarray) -> np.ndarray:
        x0, x1, fx = _interp_index(np.arange(self.shape[1]), self.block, cells.shape[0])
        return cells[x0] * (1 - fx)[:, None] + cells[x1] * fx[:, None]


class CorrectionStream:
    """The correction applied to output rows as they arrive, in order.

    A row's correction depends on the block rows around it, so rows are held back until the
    block rows they need are complete (about three blocks); :meth:`close` releases the rest.
    ``emit(row0, rows)`` receives corrected (n, w, C) float32 rows in order. With a ``guard``
    (above 0) and the model's ``noise`` input, blocks whose residual holds more than ``guard``
    times the expected noise variance get the excess back (module docstring).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        block: int,
        emit: Callable[[int, np.ndarray], None],
        noise: np.ndarray | None = None,
        guard: float = 0.0,
    ) -> None:
        if guard > 0 and noise is None:
            raise ValueError("the guard needs the noise input and the amplified input")
        self.means = BlockMeans.empty(shape, block)
        self.emit = emit
        self.noise, self.guard = noise, guard
        self.pending: list[tuple[int, list[np.ndarray]]] = []
        self.seen = 0
        self.done = 0
        self.cache: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def push(
        self,
        row0: int,
        output: np.ndarray,
        res: np.ndarray,
        valid: np.ndarray,
        amplified: np.ndarray | None = None,
    ) -> None:
        """Rows ``row0 ..`` of the (clipped) output, their :func:`residual` and validity, and
        for the guard the amplified input itself: residuals limited at ``ENERGY_SIGMAS``
        measure each block's energy (a hot pixel cannot sway it), whole ones go back."""
        if row0 != self.seen:
            raise ValueError(f"rows must come in order: expected {self.seen}, got {row0}")
        if self.guard > 0:
            if self.noise is None or amplified is None:
                raise ValueError("the guard needs the noise input and the amplified input")
            var = expected_variance(output, self.noise)
            whole = np.subtract(amplified, output, dtype=np.float32)
            limit = np.sqrt(var) * np.float32(ENERGY_SIGMAS)
            self.means.add(row0, res, valid, var, np.clip(whole, -limit, limit), output + res)
            held = [output, whole, valid]
        else:
            level = output + res if self.noise is not None else None
            self.means.add(row0, res, valid, level=level)
            held = [output]
        self.seen += output.shape[0]
        self.pending.append((row0, held))
        self._release(self._ready())

    def close(self) -> None:
        """Release every row still held (all rows must have been pushed)."""
        if self.seen != self.means.shape[0]:
            raise ValueError(f"{self.seen} of {self.means.shape[0]} rows pushed")
        self._release(self.seen)

    def _ready(self) -> int:
        """Rows ``< r`` whose correction no row still to come can change."""
        b, cells = self.means.block, self.means.sums.shape[0]
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
            self.emit(row0, self._apply(row0, held))
            self.done = row0 + n

    def _grid(self, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if k not in self.cache:
            gain = self.means.gain_row(k, self.guard) if self.guard > 0 else None
            white = self.means.white_row(k, self.noise) if self.noise is not None else None
            self.cache[k] = (self.means.grid_row(k), gain, white)
        return self.cache[k]

    def _apply(self, row0: int, held: list[np.ndarray]) -> np.ndarray:
        rows = held[0]
        index = np.arange(row0, row0 + rows.shape[0])
        y0, y1, fy = _interp_index(index, self.means.block, self.means.sums.shape[0])
        for k in [k for k in self.cache if k < y0[0]]:
            del self.cache[k]
        lo, hi = int(y0[0]), int(y1[-1]) + 1
        fy3 = fy[:, None, None]

        def interpolate(grid: np.ndarray) -> np.ndarray:
            return grid[y0 - lo] * (1 - fy3) + grid[y1 - lo] * fy3

        field = interpolate(np.stack([self._grid(k)[0] for k in range(lo, hi)]))
        corrected = rows + field
        if self.guard > 0:
            gain = interpolate(np.stack([self._grid(k)[1] for k in range(lo, hi)]))
            # The share 1 - g of the residual about its local mean goes back; not where the
            # input is near white, whose true value is unknown.
            corrected += np.where(held[2], (1 - gain) * (held[1] - field), np.float32(0.0))
        if self.noise is not None:
            white = interpolate(np.stack([self._grid(k)[2] for k in range(lo, hi)]))
            corrected += white * np.maximum(np.float32(1.0) - corrected, np.float32(0.0))
        blown = np.all(rows >= 1.0, axis=2, keepdims=True)
        return np.where(blown, rows, np.clip(corrected, 0.0, 1.0))


def _sum_columns(row: np.ndarray, cells: int, block: int) -> np.ndarray:
    """(w, C) -> (cells, C): sums over blocks of ``block`` columns (the last one may be short)."""
    w, c = row.shape
    if cells * block != w:
        row = np.pad(row, ((0, cells * block - w), (0, 0)))
    return row.reshape(cells, block, c).sum(axis=1)


def _box3_columns(a: np.ndarray) -> np.ndarray:
    """(wb, C): each element summed with its two neighbours (edges repeated)."""
    p = np.pad(a, ((1, 1), (0, 0)), mode="edge")
    return p[:-2] + p[1:-1] + p[2:]


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
