import numpy as np
import pytest

from sidraw.exposure import AUTO_TARGET_MEAN, amplify, brightness_statistic, choose_ratio


def frame(mean: float, lights: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, mean * 0.5 + 1e-4, (300, 400, 4)).astype(np.float32)
    if lights:
        n = int(lights * x.size)
        x.reshape(-1)[rng.choice(x.size, n, replace=False)] = 1.0
    return x


def test_fixed_ratio_and_clamp() -> None:
    assert choose_ratio(None, ratio=150).ratio == 150
    d = choose_ratio(None, ratio=1000, max_ratio=300)
    assert d.ratio == 300 and d.unclamped == 1000 and "clamped" in d.notes[0]
    assert choose_ratio(None, ratio=0.5).ratio == 1


def test_target_exposure_is_target_over_exif_time() -> None:
    d = choose_ratio(None, target_exposure=10, exposure_time=0.1)
    assert d.ratio == pytest.approx(100) and d.mode == "target"
    assert d.equivalent_exposure == pytest.approx(10)
    with pytest.raises(ValueError, match="EXIF"):
        choose_ratio(None, target_exposure=10, exposure_time=None)
    with pytest.raises(ValueError):
        choose_ratio(None, ratio=2, target_exposure=1, exposure_time=1)


def test_auto_brings_trimmed_mean_to_target() -> None:
    d = choose_ratio(frame(0.001), exposure_time=1 / 30)
    assert d.ratio == pytest.approx(AUTO_TARGET_MEAN / 0.001, rel=0.05)
    assert d.mode == "auto" and d.statistic == pytest.approx(0.001, rel=0.05)


def test_auto_ignores_a_few_bright_lights() -> None:
    dark = choose_ratio(frame(0.001)).ratio
    lit = choose_ratio(frame(0.001, lights=0.005)).ratio
    assert lit == pytest.approx(dark, rel=0.1)
    # A plain mean would have been dragged up more than fivefold by the lights.
    assert float(frame(0.001, lights=0.005).mean()) > 5 * 0.001


def test_auto_bright_frame_and_black_frame() -> None:
    assert choose_ratio(frame(0.3)).ratio == 1.0
    black = np.random.default_rng(0).normal(0, 1e-4, (100, 100, 4)).astype(np.float32)
    assert choose_ratio(black, max_ratio=250).ratio == 250


def test_auto_flags_implausible_equivalent_exposure() -> None:
    d = choose_ratio(frame(0.0005), exposure_time=2.0)
    assert any("unusually long" in n for n in d.notes)


def test_statistic_is_trimmed() -> None:
    x = np.zeros((100, 100, 4), np.float32)
    x[:1] = 1000.0
    assert brightness_statistic(x) < 1.0


def test_amplify_clips_to_network_range() -> None:
    x = np.array([-0.1, 0.001, 0.5], np.float32)
    assert np.allclose(amplify(x.copy(), 100), [-1.0, 0.1, 1.0])
