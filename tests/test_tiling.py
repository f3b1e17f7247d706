import itertools
from pathlib import Path

import numpy as np
import pytest

from sidraw.model import Network, card_for, load_card
from sidraw.tiling import (
    DEFAULT_TILE,
    axis_weight,
    longest_tile,
    plan_axis,
    run_tiled,
    run_whole,
    tiling_error,
)


@pytest.mark.parametrize("length", [1, 15, 100, 512, 513, 2120, 4000])
def test_plan_covers_axis_with_aligned_tiles(length: int) -> None:
    plan = plan_axis(length, 512, 64, 16, 32)
    assert plan.padded >= length + 2 * plan.margin
    assert all(o % 16 == 0 for o in plan.origins)
    assert plan.origins[-1] + plan.size == plan.padded
    assert plan.size % 16 == 0


def test_weights_sum_to_one() -> None:
    plan = plan_axis(3000, 512, 64, 16, 32)
    total = np.zeros(plan.padded)
    for k, o in enumerate(plan.origins):
        total[o : o + plan.size] += axis_weight(plan, k)
    assert np.allclose(total, 1.0)


def test_pointwise_network_is_exact() -> None:
    x = np.random.default_rng(0).normal(size=(700, 1100, 4)).astype(np.float32)
    y = run_tiled(x, lambda b: 2 * b + 1)
    assert np.allclose(y, 2 * x + 1, atol=1e-6)


def test_memory_is_bounded_by_the_tile() -> None:
    seen: list[tuple[int, ...]] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch

    run_tiled(np.zeros((1500, 2200, 4), np.float32), fn, tile=256, overlap=48)
    longest = longest_tile(256, 16)
    assert len(seen) > 1 and all(s[2] <= longest and s[3] <= longest for s in seen)


@pytest.mark.parametrize("length", [900, 1416, 2120, 2832, 4000])
def test_plan_uses_slightly_longer_tiles_when_that_saves_one(length: int) -> None:
    tile, overlap, margin = 512, 48, 32
    plan = plan_axis(length, tile, overlap, 16, margin)
    body = length + 2 * margin
    assert plan.size <= longest_tile(tile, 16)
    # No plan with one tile fewer fits within the slack.
    fewer = len(plan.origins) - 1
    if fewer >= 1:
        needed = -(-(body - overlap) // fewer) + overlap
        assert needed > longest_tile(tile, 16)


def test_twelve_megapixel_bayer_frame_takes_fifteen_tiles() -> None:
    # 4240x2832 photosites pack to 1416x2120: 3 rows of 528 instead of 4 of 416.
    py, px = plan_axis(1416, 512, 48, 16, 32), plan_axis(2120, 512, 48, 16, 32)
    assert (len(py.origins), py.size, len(px.origins), px.size) == (3, 528, 5, 480)


def test_random_unet_tiled_matches_whole_at_default_settings(models_dir: Path) -> None:
    card = load_card(models_dir / "test-bayer.json")
    net = Network(card, "cpu")
    assert card.overlap >= 48
    # A different input and size from the one the overlap was measured on.
    err = tiling_error(net, 4, tile=DEFAULT_TILE, overlap=card.overlap, size=(900, 1000), seed=7)
    assert err <= 1e-3
    # Tiling is not trivially exact: with a small overlap the seams would show.
    assert tiling_error(net, 4, tile=DEFAULT_TILE, overlap=48, size=(900, 1000), seed=7) > 1e-3


def test_whole_reference_is_the_network_on_the_padded_image(models_dir: Path) -> None:
    net = Network(load_card(models_dir / "test-xtrans.json"), "cpu")
    x = np.random.default_rng(3).uniform(0, 1, (40, 50, 9)).astype(np.float32)
    y = run_whole(x, net)
    assert y.shape == x.shape
    assert np.allclose(run_tiled(x, net), y, atol=1e-5)  # one tile: identical


@pytest.mark.parametrize("cfa", ["bayer", "xtrans"])
def test_bundled_model_tiles_seamlessly(cfa: str) -> None:
    try:
        card = card_for(cfa)
    except Exception:
        pytest.skip("no bundled model")
    net = Network(card, "cpu")
    if card.noise_input is None:
        err = tiling_error(net, len(card.channels), overlap=card.overlap, size=(700, 900), seed=5)
        assert err <= 1e-3
        return
    # Noise-conditioned models are measured as export measures them, on another scene.
    seams = pytest.importorskip("sidraw.train.seams")
    image, noise = seams.overlap_frame(cfa, seed=5)
    err = tiling_error(
        lambda b: net(b, noise=noise), len(card.channels), overlap=card.overlap, image=image
    )
    assert err <= seams.OVERLAP_TOLERANCE


def _reference_tiled(x: np.ndarray, fn, tile: int, overlap: int, margin: int) -> np.ndarray:
    """Whole-frame padding and accumulation: what streaming must reproduce exactly."""
    from sidraw.tiling import iter_tiles, pad_reflect

    h, w, c = x.shape
    py = plan_axis(h, tile, overlap, 16, margin)
    px = plan_axis(w, tile, overlap, 16, margin)
    padded = pad_reflect(x, py, px)
    out = np.zeros((py.padded, px.padded, c), np.float32)
    for ky, kx, y0, x0 in iter_tiles(py, px):
        patch = padded[y0 : y0 + py.size, x0 : x0 + px.size].transpose(2, 0, 1)
        res = fn(np.ascontiguousarray(patch)[None])[0].transpose(1, 2, 0)
        wgt = axis_weight(py, ky)[:, None] * axis_weight(px, kx)[None, :]
        out[y0 : y0 + py.size, x0 : x0 + px.size] += res * wgt[:, :, None]
    return out[margin : margin + h, margin : margin + w]


@pytest.mark.parametrize(
    "shape,tile,overlap",
    [((700, 1100), 256, 64), ((1, 40), 64, 32), ((37, 500), 64, 48), ((300, 90), 96, 80)],
)
def test_streaming_reads_tiles_and_writes_rows_once(shape, tile: int, overlap: int) -> None:
    from sidraw.tiling import run_tiled_stream

    rng = np.random.default_rng(1)
    x = rng.normal(size=(*shape, 3)).astype(np.float32)

    def net(b: np.ndarray) -> np.ndarray:  # mixes neighbours, so seams and borders would show
        return (np.roll(b, 1, axis=2) + 0.5 * np.roll(b, -3, axis=3)).astype(np.float32)

    margin = -(-(overlap // 2) // 16) * 16
    out = np.full((*shape, 3), np.nan, np.float32)
    seen: list[tuple[int, int]] = []
    biggest_read = 0

    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        nonlocal biggest_read
        assert rows.min() >= 0 and rows.max() < shape[0] and cols.max() < shape[1]
        biggest_read = max(biggest_read, rows.size * cols.size)
        return x[np.ix_(rows, cols)]

    def write(row0: int, rows: np.ndarray) -> None:
        seen.append((row0, row0 + rows.shape[0]))
        assert np.isnan(out[row0 : row0 + rows.shape[0]]).all()  # each row exactly once
        out[row0 : row0 + rows.shape[0]] = rows

    run_tiled_stream(shape, read, net, write, tile=tile, overlap=overlap, out_channels=3)
    assert seen[0][0] == 0 and seen[-1][1] == shape[0]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(seen))  # in order, no gap
    assert biggest_read <= longest_tile(tile, 16) ** 2
    np.testing.assert_array_equal(out, _reference_tiled(x, net, tile, overlap, margin))
