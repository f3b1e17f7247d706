"""The low-frequency mean correction of the network output (sidraw.mean_correction)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidraw.errors import ModelError
from sidraw.mean_correction import (
    CLIP_SIGMAS,
    BlockMeans,
    CorrectionStream,
    blown,
    correct,
    residual,
)
from sidraw.model import ModelCache, load_card
from sidraw.mosaic import normalise_packed, pack
from sidraw.noise_estimate import noise_vector
from sidraw.pipeline import ConvertOptions, denoise, estimate_file_noise
from sidraw.raw import open_raw

NOISE = np.array([[0.02, 0.001]], dtype=np.float32)  # variance 0.02 s + 0.001 (amplified)


def _noisy(clean: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sd = np.sqrt(NOISE[0, 0] * clean + NOISE[0, 1])
    return (clean + sd * rng.standard_normal(clean.shape)).astype(np.float32)


def _flat(h: int = 128, w: int = 160) -> np.ndarray:
    colour = np.array([0.6, 0.3, 0.32, 0.15], dtype=np.float32)
    return np.broadcast_to(colour, (h, w, 4)).copy()


def test_a_biased_output_gets_its_level_back() -> None:
    clean = _flat()
    x = _noisy(clean)
    # A denoiser that shrinks colours towards grey by 8 %: a hue shift on a flat patch.
    biased = np.clip(clean + 0.08 * (clean.mean() - clean), 0, 1)
    fixed = correct(biased, x, x, NOISE, 16)
    before = np.abs(biased.mean(axis=(0, 1)) / clean[0, 0] - 1)
    after = np.abs(fixed.mean(axis=(0, 1)) / clean[0, 0] - 1)
    assert before.max() > 0.05
    assert after.max() < 0.01, after
    # The correction is smooth: it adds far less noise than the input has.
    assert np.std(fixed - biased - (fixed - biased).mean(axis=(0, 1))) < 0.1 * np.std(x - clean)


def test_an_unbiased_output_is_left_almost_alone() -> None:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:128, 0:160].astype(np.float32)
    clean = np.clip(0.4 + 0.3 * np.sin(x / 7)[..., None] * np.cos(y / 11)[..., None]
                    + 0.05 * rng.standard_normal((128, 160, 4)), 0, 1).astype(np.float32)
    noisy = _noisy(clean, seed=4)
    fixed = correct(clean, noisy, noisy, NOISE, 16)
    # The correction is the block means of the noise: about sd / 16 per block, never more than
    # a few per cent of white.
    assert np.abs(fixed - clean).max() < 0.03
    assert np.sqrt(np.mean((fixed - clean) ** 2)) < np.sqrt(np.mean((noisy - clean) ** 2)) / 8


def test_a_hot_pixel_does_not_drag_its_block() -> None:
    clean = _flat()
    x = _noisy(clean)
    x[40, 50, 1] = 300.0  # a hot photosite amplified x300, beyond any clip
    limit = CLIP_SIGMAS * np.sqrt(NOISE[0, 0] * 0.3 + NOISE[0, 1])
    fixed = correct(clean, x, x, NOISE, 16)
    assert np.abs(fixed - clean)[:, :, 1].max() < limit / 100
    # Nor does it make the guard hand the block's residual back.
    guarded = correct(clean, x, x, NOISE, 16, guard=1.5)
    assert np.abs(guarded - fixed).max() < limit / 100


def test_clipped_photosites_and_blown_highlights() -> None:
    clean = _flat()
    normalised = clean / 100
    amplified = clean.copy()
    normalised[:64] = 1.0  # the sensor's white: the true value is unknown
    amplified[:64] = 100.0
    out = clean.copy()
    out[:64] = 1.0  # blown: white in every channel
    fixed = correct(out, amplified, normalised, NOISE, 16)
    np.testing.assert_array_equal(fixed[:64], 1.0)
    # The blown half must not pull the rest up.
    np.testing.assert_allclose(fixed[64:], clean[64:], atol=1e-6)


def test_rows_added_in_bands_give_the_same_means() -> None:
    rng = np.random.default_rng(1)
    res = rng.standard_normal((100, 70, 4)).astype(np.float32)
    valid = rng.random((100, 70, 4)) > 0.2
    whole = BlockMeans.empty(res.shape, 16)
    whole.add(0, res, valid)
    banded = BlockMeans.empty(res.shape, 16)
    for r0 in range(0, 100, 7):
        banded.add(r0, res[r0 : r0 + 7], valid[r0 : r0 + 7])
    # Each block row's rows are summed in float32 (at most 16 here), then totalled in float64: a
    # band boundary moves rounding at 1e-7 of the summed magnitudes; a lost or doubled row would
    # move a sum by whole residuals.
    np.testing.assert_allclose(banded.sums, whole.sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(banded.counts, whole.counts)


def test_streamed_rows_get_the_whole_frame_correction() -> None:
    rng = np.random.default_rng(2)
    clean = np.clip(rng.uniform(0.1, 0.9, (13, 11, 4)).repeat(8, 0).repeat(8, 1)[:101, :83],
                    0, 1).astype(np.float32)
    noisy = _noisy(clean, seed=5)
    out = np.clip(clean * 0.9, 0, 1)
    want = correct(out, noisy, noisy, NOISE, 8)
    got: list[tuple[int, np.ndarray]] = []
    stream = CorrectionStream(out.shape, 8, lambda r0, rows: got.append((r0, rows.copy())))
    res = residual(noisy, out, NOISE)
    valid = noisy < 0.98
    row = 0
    for n in (5, 1, 17, 32, 9, 30, 7):  # uneven slices, as tiles hand rows over
        stream.push(row, out[row : row + n], res[row : row + n], valid[row : row + n])
        row += n
        # Held back: about three blocks, never the whole frame.
        assert row - sum(r.shape[0] for _, r in got) <= 3 * 8 + n
    stream.close()
    assert [r0 for r0, _ in got] == list(np.cumsum([0] + [r.shape[0] for _, r in got])[:-1])
    np.testing.assert_allclose(np.concatenate([r for _, r in got]), want, atol=1e-6)
    with pytest.raises(ValueError, match="order"):
        stream.push(3, out[:2], res[:2], valid[:2])


def _texture(h: int = 128, w: int = 160, seed: int = 3) -> np.ndarray:
    """(h, w, 4) float32 0..1: a fine grating (period 3 px) over smooth shading."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grating = 0.15 * np.sign(np.sin(2 * np.pi * (x + 0.4 * y) / 3.0))
    base = 0.45 + 0.1 * np.sin(x / 23)[..., None] * np.ones(4, np.float32)
    return np.clip(base + grating[..., None], 0, 1).astype(np.float32)


def _smoothed(img: np.ndarray, k: int = 5) -> np.ndarray:
    """A box blur of every channel: a network that takes the texture for noise."""
    pad = np.pad(img, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    h, w, _ = img.shape
    return (sum(pad[i : i + h, j : j + w] for i in range(k) for j in range(k)) / k**2).astype(
        np.float32
    )


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_the_guard_gives_back_texture_smoothed_away_from_a_clean_frame() -> None:
    """Ratio 1, almost no noise: a network that blurs loses the grating; guarded, the output
    comes back to the input within its noise."""
    clean = _texture()
    quiet = np.array([[2e-5, 1e-6]], np.float32)
    rng = np.random.default_rng(1)
    x = (clean + np.sqrt(quiet[0, 0] * clean + quiet[0, 1]) * rng.standard_normal(clean.shape))
    x = x.astype(np.float32)
    blurred = _smoothed(clean)
    plain = correct(blurred, x, x, quiet, 8)
    guarded = correct(blurred, x, x, quiet, 8, guard=1.5)
    assert _rmse(plain, clean) > 0.1
    assert _rmse(guarded, clean) < 2 * _rmse(x, clean)


def test_the_guard_leaves_a_good_denoiser_alone() -> None:
    """An output that is the clean frame: its residual is the noise, so the guard (which only
    acts above 1.5 times the expected energy) changes next to nothing."""
    clean = _texture()
    x = _noisy(clean, seed=6)
    plain = correct(clean, x, x, NOISE, 8)
    guarded = correct(clean, x, x, NOISE, 8, guard=1.5)
    assert _rmse(guarded, plain) < 0.05 * _rmse(x, clean)


def test_the_guard_balances_noise_against_lost_texture() -> None:
    """A blur of a noisy textured frame removes the noise and the grating: the guard hands back
    part of the residual, which is closer to the truth than either the blur or the input."""
    clean = _texture()
    low = np.array([[0.002, 0.0002]], np.float32)
    rng = np.random.default_rng(2)
    x = (clean + np.sqrt(low[0, 0] * clean + low[0, 1]) * rng.standard_normal(clean.shape))
    x = x.astype(np.float32)
    blurred = np.clip(_smoothed(x), 0, 1)
    guarded = correct(blurred, x, x, low, 8, guard=1.0)
    assert _rmse(guarded, clean) < _rmse(x, clean)
    assert _rmse(guarded, clean) < _rmse(correct(blurred, x, x, low, 8), clean)


def test_streamed_rows_with_the_guard_match_the_whole_frame() -> None:
    clean = _texture(101, 83)
    x = _noisy(clean, seed=7)
    out = _smoothed(clean)
    want = correct(out, x, x, NOISE, 8, guard=1.5)
    got: list[np.ndarray] = []
    stream = CorrectionStream(out.shape, 8, lambda r0, rows: got.append(rows.copy()), NOISE, 1.5)
    res, valid, row = residual(x, out, NOISE), x < 0.98, 0
    for n in (7, 30, 1, 40, 23):
        stream.push(row, out[row : row + n], res[row : row + n], valid[row : row + n],
                    x[row : row + n])
        row += n
    stream.close()
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        CorrectionStream(out.shape, 8, lambda r0, rows: None, None, 1.5)


def _reference(out: np.ndarray, res: np.ndarray, valid: np.ndarray, b: int) -> np.ndarray:
    """The correction written plainly: 3 x 3 block sums, then bilinear between centres."""
    h, w, c = out.shape
    hb, wb = -(-h // b), -(-w // b)
    sums, counts = np.zeros((hb, wb, c)), np.zeros((hb, wb, c))
    for i in range(h):
        for j in range(w):
            sums[i // b, j // b] += np.where(valid[i, j], res[i, j], 0)
            counts[i // b, j // b] += valid[i, j]
    pad = [(1, 1), (1, 1), (0, 0)]
    s3 = sum(np.pad(sums, pad, mode="edge")[di : di + hb, dj : dj + wb]
             for di in range(3) for dj in range(3))
    n3 = sum(np.pad(counts, pad, mode="edge")[di : di + hb, dj : dj + wb]
             for di in range(3) for dj in range(3))
    means = s3 / np.maximum(n3, 1)
    ty = np.clip((np.arange(h) + 0.5) / b - 0.5, 0, hb - 1)
    tx = np.clip((np.arange(w) + 0.5) / b - 0.5, 0, wb - 1)
    y0, x0 = np.floor(ty).astype(int), np.floor(tx).astype(int)
    y1, x1 = np.minimum(y0 + 1, hb - 1), np.minimum(x0 + 1, wb - 1)
    fy, fx = (ty - y0)[:, None, None], (tx - x0)[None, :, None]
    field = ((1 - fy) * ((1 - fx) * means[y0][:, x0] + fx * means[y0][:, x1])
             + fy * ((1 - fx) * means[y1][:, x0] + fx * means[y1][:, x1]))
    return np.clip(out + field, 0, 1)


def test_the_correction_is_block_means_smoothed_and_interpolated() -> None:
    rng = np.random.default_rng(8)
    out = rng.uniform(0.2, 0.8, (37, 45, 4)).astype(np.float32)
    amp = (out + rng.normal(0.02, 0.05, out.shape)).astype(np.float32)
    valid = rng.random(out.shape) > 0.1
    norm = np.where(valid, amp / 10, 1.0).astype(np.float32)  # invalid ones "at white"
    got = correct(out, amp, norm, NOISE, 8)
    np.testing.assert_allclose(got, _reference(out, residual(amp, out, NOISE), valid, 8),
                               atol=1e-5)


def test_a_constant_residual_is_a_constant_correction() -> None:
    out = np.full((50, 90, 4), 0.5, np.float32)
    fixed = correct(out, out + 0.01, out / 100, NOISE, 16)
    np.testing.assert_allclose(fixed, 0.51, rtol=1e-6)


def test_residual_is_limited_in_noise_sigmas() -> None:
    out = np.full((1, 3, 1), 0.5, np.float32)
    amp = np.array([[[0.5], [0.6], [90.0]]], np.float32)
    r = residual(amp, out, NOISE)
    sd = np.sqrt(NOISE[0, 0] * 0.5 + NOISE[0, 1])
    np.testing.assert_allclose(r[0, :, 0], [0.0, 0.1, CLIP_SIGMAS * sd], rtol=1e-5)


@pytest.mark.parametrize("guard", [0.0, 1.5])
def test_convert_applies_the_card_correction_band_by_band(
    make_dng, tiny_models: Path, tmp_path: Path, guard: float
) -> None:
    """Streaming denoise with a mean-corrected card = the whole-frame correction of the same
    network's output (up to the uint16 rounding of the two passes), with or without the
    guard."""
    corrected = tmp_path / "corrected"
    shutil.copytree(tiny_models, corrected)
    card_path = corrected / "test-bayer.json"
    card = json.loads(card_path.read_text())
    card["mean_correction"] = {"block": 16, "guard": guard}
    card_path.write_text(json.dumps(card))
    src = make_dng("m.dng", pattern="GBRG", width=640, height=1200)
    opts = ConvertOptions(ratio=20, tile=128, overlap=32)
    with open_raw(src) as raw:
        plain, _ = denoise(raw, ModelCache(tiny_models, "cpu").get("bayer"), opts)
        fixed, _ = denoise(raw, ModelCache(corrected, "cpu").get("bayer"), opts)
        info = raw.info
        layout = info.layout
        black = np.broadcast_to(np.asarray(info.black, np.float32), (layout.period,) * 2)
        x = normalise_packed(pack(raw.mosaic, layout), layout, black, info.white)
        vector = noise_vector(estimate_file_noise(raw).estimate, 20.0)
    y = normalise_packed(pack(plain, layout), layout, black, info.white)
    want = correct(y, x * 20, x, vector, 16, guard)
    got = normalise_packed(pack(fixed, layout), layout, black, info.white)
    assert np.abs(got - want).max() < 3 / (info.white - black.max())
    assert np.abs(got - y).max() > 10 / (info.white - black.max())  # it did something


def test_a_card_guard_needs_a_block(tiny_models: Path, tmp_path: Path) -> None:
    card_path = tmp_path / "test-bayer.json"
    shutil.copy(tiny_models / "test-bayer.json", card_path)
    card = json.loads(card_path.read_text())
    card["mean_correction"] = {"guard": 1.5}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="guard"):
        load_card(card_path)


if __name__ == "__main__":
    pytest.main([__file__])


def test_flat_white_comes_out_white_and_levels_below_it_keep_their_mean() -> None:
    """A patch at white after amplification, denoised with some noise left: the clip at white
    would cut that noise's upper half (darker, and tinted once rendered); the block means take it
    to white. A patch 10 % below white keeps its mean."""
    h, w = 96, 96
    clean = np.ones((h, w, 4), np.float32)
    clean[:, : w // 2] = 0.9
    x = _noisy(clean, seed=3)
    left = np.random.default_rng(4).normal(0, 0.03, clean.shape).astype(np.float32)
    out = np.clip(clean + left, 0, 1)  # a denoiser that leaves 0.03 of noise
    fixed = correct(out, x, x / 100, NOISE, 8)
    white = fixed[8:-8, w // 2 + 8 : -8].mean(axis=(0, 1))
    below = fixed[8:-8, 8 : w // 2 - 8].mean(axis=(0, 1))
    assert np.all(white > 0.995), white
    np.testing.assert_allclose(below, 0.9, atol=0.003)
    # The check can fail: the clipped output itself is short of white by more than the limit.
    assert np.all(out[8:-8, w // 2 + 8 : -8].mean(axis=(0, 1)) < 0.99)


@pytest.mark.parametrize("channels", [1, 4, 9])
def test_blown_is_white_in_every_channel(channels: int) -> None:
    rng = np.random.default_rng(channels)
    rows = rng.choice(np.float32([0.5, 0.98, 1.0, 1.7]), size=(6, 40, channels))
    rows[2] = 1.0  # a whole row white
    want = np.all(rows >= 1.0, axis=2, keepdims=True)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(blown(rows), want)
    np.testing.assert_array_equal(blown(rows, 0.98), np.all(rows >= 0.98, axis=2, keepdims=True))


def test_corrections_applied_on_a_second_thread_are_the_same_and_in_order() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    clean = rng.uniform(0.1, 0.9, (13, 11, 4)).repeat(8, 0).repeat(8, 1)[:101, :83]
    clean = clean.astype(np.float32)
    noisy = _noisy(clean, seed=8)
    out = np.clip(clean * 0.9, 0, 1).astype(np.float32)
    valid = noisy < 0.98

    def run(pool: ThreadPoolExecutor | None, fail_at: int = -1) -> list[tuple[int, np.ndarray]]:
        got: list[tuple[int, np.ndarray]] = []

        def emit(r0: int, rows: np.ndarray) -> None:
            if r0 >= fail_at >= 0:
                raise OSError("disk full")
            got.append((r0, rows.copy()))

        stream = CorrectionStream(out.shape, 8, emit, NOISE, 1.5, pool)
        row = 0
        for n in (5, 17, 32, 9, 30, 8):
            stream.push(row, out[row : row + n], None, valid[row : row + n], noisy[row : row + n])
            row += n
        stream.close()
        return got

    want = run(None)
    with ThreadPoolExecutor(1) as pool:
        got = run(pool)
        assert [r0 for r0, _ in got] == [r0 for r0, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(OSError, match="disk full"):
            run(pool, fail_at=40)
