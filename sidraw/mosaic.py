"""Packing of colour filter array mosaics into multi-channel images and back.

The network sees every CFA in one canonical channel order, whatever the phase of the sensor:

* Bayer (2x2 period): 4 channels ``(R, G1, G2, B)`` at half resolution, one packed pixel per 2x2
  block. ``G1`` is the green in the red row, ``G2`` the green in the blue row.
* X-Trans (6x6 period): 9 channels ``(G, G, G, G, G, R, R, B, B)`` at a third of the resolution,
  one packed pixel per 3x3 block (the layout of Chen et al. 2018). The 3x3 blocks of X-Trans hold
  5 green, 2 red and 2 blue photosites each; neighbouring blocks swap red and blue positions, so the
  red channels of a packed pixel always hold red photosites, in row-major order within the block.

Sizes that are not a multiple of the block, and X-Trans phases whose 3x3 blocks do not start at the
top-left photosite, are handled by padding with photosites of the same CFA colour one period away,
so the CFA phase is never shifted; :func:`unpack` removes the padding again, and
``unpack(pack(x), layout, x.shape) == x`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import UnsupportedFileError

CfaKind = Literal["bayer", "xtrans"]

BAYER_CHANNELS = ("R", "G", "G", "B")
XTRANS_CHANNELS = ("G", "G", "G", "G", "G", "R", "R", "B", "B")


@dataclass(frozen=True)
class Layout:
    """How one CFA pattern maps to packed channels.

    Attributes:
        kind: ``"bayer"`` or ``"xtrans"``.
        pattern: (P, P) array of colour letters ``"R"``, ``"G"``, ``"B"`` as seen from the top-left
            photosite of the visible image (P = 2 or 6).
        block: edge of the square block of photosites that makes one packed pixel (2 or 3).
        offset: (rows, cols) of padding added at the top and left so that blocks line up.
        index: (T, T, C) int array: for a packed pixel of block type ``(i % T, j % T)``, the
            row-major position inside its block of the photosite that feeds each channel.
    """

    kind: CfaKind
    pattern: np.ndarray = field(repr=False)
    block: int
    offset: tuple[int, int]
    index: np.ndarray = field(repr=False)

    @property
    def period(self) -> int:
        return int(self.pattern.shape[0])

    @property
    def channels(self) -> int:
        return int(self.index.shape[2])

    @property
    def types(self) -> int:
        """Number of block types along each axis (1 for Bayer, 2 for X-Trans)."""
        return int(self.index.shape[0])

    @property
    def channel_colors(self) -> tuple[str, ...]:
        return BAYER_CHANNELS if self.kind == "bayer" else XTRANS_CHANNELS

    def packed_shape(self, shape: tuple[int, int]) -> tuple[int, int, int]:
        """Shape ``(h, w, C)`` of the packed image of a mosaic of shape ``(H, W)``."""
        hp, wp = self._padded_size(shape)
        return hp // self.block, wp // self.block, self.channels

    def _padded_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        b = self.block
        hp = -(-(shape[0] + self.offset[0]) // b) * b
        wp = -(-(shape[1] + self.offset[1]) // b) * b
        return hp, wp

    def channel_map(self, per_position: np.ndarray) -> np.ndarray:
        """Per-channel values from a per-photosite map.

        Args:
            per_position: (P, P) values indexed like ``pattern`` (e.g. black levels per photosite).

        Returns:
            (T, T, C) array: the value of each packed channel for each block type.
        """
        per_position = np.asarray(per_position)
        tiled = self._padded_pattern_values(per_position)
        return self._pack_blocks(tiled)[: self.types, : self.types]

    def _padded_pattern_values(self, per_position: np.ndarray) -> np.ndarray:
        p = self.period
        rows = (np.arange(p) - self.offset[0]) % p
        cols = (np.arange(p) - self.offset[1]) % p
        return per_position[np.ix_(rows, cols)]

    def _pack_blocks(self, padded: np.ndarray) -> np.ndarray:
        b, t = self.block, self.types
        h, w = padded.shape[0] // b, padded.shape[1] // b
        blocks = padded.reshape(h, b, w, b).transpose(0, 2, 1, 3).reshape(h, w, b * b)
        out = np.empty((h, w, self.channels), dtype=padded.dtype)
        for ti in range(t):
            for tj in range(t):
                out[ti::t, tj::t] = blocks[ti::t, tj::t][..., self.index[ti, tj]]
        return out


def _colour_letters(raw_pattern: np.ndarray, color_desc: str) -> np.ndarray:
    letters = np.array(list(color_desc))[np.asarray(raw_pattern)]
    return letters


def layout_from_pattern(raw_pattern: np.ndarray, color_desc: str = "RGBG") -> Layout:
    """Build the packing layout for a CFA pattern as rawpy reports it.

    Args:
        raw_pattern: (2, 2) or (6, 6) int array of colour indices (rawpy ``raw_pattern``).
        color_desc: colour letter of each index (rawpy ``color_desc``, e.g. ``"RGBG"``).

    Raises:
        UnsupportedFileError: the pattern is neither a 2x2 Bayer nor a 6x6 X-Trans layout.
    """
    letters = _colour_letters(raw_pattern, color_desc)
    if letters.shape == (2, 2):
        return _bayer_layout(letters)
    if letters.shape == (6, 6):
        return _xtrans_layout(letters)
    raise UnsupportedFileError(
        f"unsupported sensor layout: {letters.shape[0]}x{letters.shape[1]} CFA pattern"
    )


def layout_from_letters(pattern: str | np.ndarray) -> Layout:
    """Layout from a pattern written as letters, e.g. ``"RGGB"`` or a (6, 6) letter array."""
    if isinstance(pattern, str):
        n = round(len(pattern) ** 0.5)
        if n * n != len(pattern):
            raise ValueError(f"pattern {pattern!r} is not square")
        arr = np.array(list(pattern.upper())).reshape(n, n)
    else:
        arr = np.asarray(pattern)
    desc = "RGB"
    idx = np.vectorize(desc.index)(arr)
    return layout_from_pattern(idx, desc)


def _bayer_layout(letters: np.ndarray) -> Layout:
    flat = [str(c) for c in letters.ravel()]
    if sorted(flat) != ["B", "G", "G", "R"]:
        raise UnsupportedFileError(f"unsupported 2x2 CFA pattern {''.join(flat)}")
    r = flat.index("R")
    b = flat.index("B")
    r_row, b_row = r // 2, b // 2
    if r_row == b_row or r % 2 == b % 2:  # red and blue must sit on a diagonal
        raise UnsupportedFileError(f"unsupported 2x2 CFA pattern {''.join(flat)}")
    g1 = next(i for i in range(4) if flat[i] == "G" and i // 2 == r_row)
    g2 = next(i for i in range(4) if flat[i] == "G" and i // 2 == b_row)
    index = np.array([r, g1, g2, b], dtype=np.intp).reshape(1, 1, 4)
    return Layout("bayer", letters, 2, (0, 0), index)


def _xtrans_layout(letters: np.ndarray) -> Layout:
    best: tuple[int, Layout] | None = None
    for oy in range(3):
        for ox in range(3):
            rows = (np.arange(6) - oy) % 6
            cols = (np.arange(6) - ox) % 6
            shifted = letters[np.ix_(rows, cols)]
            index = np.zeros((2, 2, 9), dtype=np.intp)
            greens: set[tuple[int, ...]] = set()
            ok = True
            for ti in range(2):
                for tj in range(2):
                    blk = [
                        str(c) for c in shifted[3 * ti : 3 * ti + 3, 3 * tj : 3 * tj + 3].ravel()
                    ]
                    g = [i for i, c in enumerate(blk) if c == "G"]
                    r = [i for i, c in enumerate(blk) if c == "R"]
                    b = [i for i, c in enumerate(blk) if c == "B"]
                    if (len(g), len(r), len(b)) != (5, 2, 2):
                        ok = False
                        break
                    greens.add(tuple(g))
                    index[ti, tj] = g + r + b
                if not ok:
                    break
            if not ok:
                continue
            # Prefer phases whose blocks share green positions (true X-Trans), then no padding.
            score = (len(greens) - 1) * 10 + oy + ox
            layout = Layout("xtrans", letters, 3, (oy, ox), index)
            if best is None or score < best[0]:
                best = (score, layout)
    if best is None:
        raise UnsupportedFileError("unsupported 6x6 CFA pattern (not an X-Trans layout)")
    return best[1]


def _pad_index(n: int, before: int, total: int, period: int) -> np.ndarray:
    """Source index for each padded position: same CFA phase, one period inside the image."""
    idx = np.arange(total) - before
    idx = np.where(idx < 0, idx + period, idx)
    idx = np.where(idx >= n, idx - period, idx)
    return idx


def _padded(mosaic: np.ndarray, layout: Layout) -> np.ndarray:
    h, w = mosaic.shape
    p = layout.period
    if h < p or w < p:
        raise UnsupportedFileError(f"image of {w}x{h} pixels is smaller than the CFA period")
    hp, wp = layout._padded_size((h, w))
    oy, ox = layout.offset
    if (hp, wp) == (h, w):
        return mosaic
    rows = _pad_index(h, oy, hp, p)
    cols = _pad_index(w, ox, wp, p)
    if oy == 0 and ox == 0:
        # Only bottom/right padding: keep the body as one copy and append the few extra lines.
        out = np.empty((hp, wp), dtype=mosaic.dtype)
        out[:h, :w] = mosaic
        out[h:, :w] = mosaic[rows[h:], :]
        out[:, w:] = out[:, cols[w:]]
        return out
    return mosaic[np.ix_(rows, cols)]


def pack(mosaic: np.ndarray, layout: Layout) -> np.ndarray:
    """Pack a CFA mosaic into channels.

    Args:
        mosaic: (H, W) array of photosite values, any dtype, as read from the visible raw area.
        layout: the file's :class:`Layout`.

    Returns:
        (h, w, C) array of the same dtype: C = 4 at h = ceil(H/2) for Bayer, C = 9 at about H/3 for
        X-Trans (see :meth:`Layout.packed_shape`).
    """
    if mosaic.ndim != 2:
        raise ValueError(f"mosaic must be 2-D, got shape {mosaic.shape}")
    return layout._pack_blocks(_padded(mosaic, layout))


def pack_rows(mosaic: np.ndarray, layout: Layout, rows: np.ndarray) -> np.ndarray:
    """Some rows of the packed image, without packing the whole mosaic.

    Args:
        mosaic: (H, W) array of photosite values, as for :func:`pack`.
        layout: the file's :class:`Layout`.
        rows: (n,) int indices of packed rows, in any order (e.g. reflected at a border).

    Returns:
        (n, w, C) array of ``mosaic.dtype``, equal to ``pack(mosaic, layout)[rows]``.
    """
    h, w = mosaic.shape
    p, b, t = layout.period, layout.block, layout.types
    hp, wp = layout._padded_size((h, w))
    rows = np.asarray(rows, dtype=np.intp)
    block_rows = _pad_index(h, layout.offset[0], hp, p).reshape(-1, b)
    src_cols = _pad_index(w, layout.offset[1], wp, p)
    n, wq = rows.size, wp // b
    out = np.empty((n, wq, layout.channels), dtype=mosaic.dtype)
    # A few rows at a time: the gathered and reordered copies stay small for wide images.
    for start in range(0, n, _PACK_ROWS):
        chunk = rows[start : start + _PACK_ROWS]
        src_rows = block_rows[chunk].ravel()
        gathered = mosaic[src_rows] if wp == w else mosaic[np.ix_(src_rows, src_cols)]
        m = chunk.size
        blocks = gathered.reshape(m, b, wq, b).transpose(0, 2, 1, 3).reshape(m, wq, b * b)
        part = out[start : start + m]
        for ti in range(t):
            pick = np.flatnonzero(chunk % t == ti)
            for tj in range(t):
                part[pick, tj::t] = blocks[pick, tj::t][..., layout.index[ti, tj]]
    return out


_PACK_ROWS = 32


def unpack_rows_into(
    mosaic: np.ndarray, packed_rows: np.ndarray, layout: Layout, row0: int
) -> None:
    """Write consecutive packed rows back into their place in a mosaic (the inverse of
    :func:`pack_rows`; photosites that packing padded in are dropped).

    Args:
        mosaic: (H, W) array to write into (e.g. LibRaw's raw buffer).
        packed_rows: (n, w, C) packed rows ``row0 .. row0 + n - 1``.
        layout: the layout used to pack them.
        row0: index of the first packed row.
    """
    h, w = mosaic.shape
    b, t = layout.block, layout.types
    n, wq, _ = packed_rows.shape
    if wq != layout.packed_shape((h, w))[1]:
        raise ValueError(f"packed width {wq} does not match a mosaic {w} wide")
    blocks = np.empty((n, wq, b * b), dtype=packed_rows.dtype)
    for ti in range(t):
        first = (ti - row0) % t
        for tj in range(t):
            blocks[first::t, tj::t][..., layout.index[ti, tj]] = packed_rows[first::t, tj::t]
    padded = blocks.reshape(n, wq, b, b).transpose(0, 2, 1, 3).reshape(n * b, wq * b)
    oy, ox = layout.offset
    top = row0 * b - oy  # mosaic row of padded[0]
    lo, hi = max(top, 0), min(top + n * b, h)
    if hi > lo:
        mosaic[lo:hi] = padded[lo - top : hi - top, ox : ox + w]


def unpack(packed: np.ndarray, layout: Layout, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`pack`.

    Args:
        packed: (h, w, C) array as returned by :func:`pack` (any dtype).
        layout: the layout used to pack it.
        shape: (H, W) of the original mosaic.

    Returns:
        (H, W) mosaic of ``packed.dtype``.
    """
    expected = layout.packed_shape(shape)
    if packed.shape != expected:
        raise ValueError(f"packed shape {packed.shape} does not match {expected} for {shape}")
    b, t = layout.block, layout.types
    h, w, _ = packed.shape
    blocks = np.empty((h, w, b * b), dtype=packed.dtype)
    for ti in range(t):
        for tj in range(t):
            blocks[ti::t, tj::t][..., layout.index[ti, tj]] = packed[ti::t, tj::t]
    padded = blocks.reshape(h, w, b, b).transpose(0, 2, 1, 3).reshape(h * b, w * b)
    oy, ox = layout.offset
    return np.ascontiguousarray(padded[oy : oy + shape[0], ox : ox + shape[1]])


def normalise_packed(
    packed: np.ndarray,
    layout: Layout,
    black: np.ndarray,
    white: float,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Black-subtract and scale packed photosite values.

    Args:
        packed: (h, w, C) raw values (integer DN) from :func:`pack`, or a window of them.
        layout: its layout.
        black: (P, P) black level of each CFA position in DN.
        white: white (saturation) level in DN.
        origin: (row, col) of ``packed[0, 0]`` in the whole packed image (a window's block types
            depend on where it starts).

    Returns:
        (h, w, C) float32, 0 at black and 1 at white; values below black stay negative.
    """
    levels = layout.channel_map(np.asarray(black, dtype=np.float32))
    out = packed.astype(np.float32)
    t = layout.types
    for ti in range(t):
        for tj in range(t):
            lv = levels[(origin[0] + ti) % t, (origin[1] + tj) % t]
            view = out[ti::t, tj::t]
            view -= lv
            view *= 1.0 / (np.float32(white) - lv)
    return out


def denormalise_packed(
    packed: np.ndarray,
    layout: Layout,
    black: np.ndarray,
    white: float,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Inverse of :func:`normalise_packed`, clipped to the valid range and rounded.

    Args:
        packed: (h, w, C) float32, 0 at black and 1 at white.
        origin: as for :func:`normalise_packed`.

    Returns:
        (h, w, C) uint16 DN in ``[0, white]``.
    """
    levels = layout.channel_map(np.asarray(black, dtype=np.float32))
    out = np.empty(packed.shape, dtype=np.float32)
    t = layout.types
    for ti in range(t):
        for tj in range(t):
            lv = levels[(origin[0] + ti) % t, (origin[1] + tj) % t]
            np.multiply(packed[ti::t, tj::t], np.float32(white) - lv, out=out[ti::t, tj::t])
            out[ti::t, tj::t] += lv
    np.clip(out, 0, white, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint16)
