from pathlib import Path

import numpy as np
import pytest

from sidraw.model import Network, card_for, load_card
from sidraw.tiling import (
    DEFAULT_TILE,
    axis_weight,
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
    assert len(seen) > 1 and all(s[2] <= 256 and s[3] <= 256 for s in seen)


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
    err = tiling_error(net, len(card.channels), overlap=card.overlap, size=(700, 900), seed=5)
    assert err <= 1e-3
