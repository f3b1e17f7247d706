"""Staged inference: the U-Net cut at a level, its deep levels run once on the frame."""

from __future__ import annotations

import dataclasses
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from unet_onnx import build_unet, write_model

import sidraw.pipeline as pipeline_mod
from sidraw.errors import ModelError
from sidraw.model import ModelCache, Network, card_for, load_card
from sidraw.pipeline import ConvertOptions, denoise
from sidraw.raw import open_raw
from sidraw.staged import (
    CONTEXT_TOLERANCE,
    PaddedInput,
    Stages,
    measure_context,
    padded_shape,
    plan_windows,
    run_staged,
    run_staged_stream,
)
from sidraw.tiling import measure_overlap, reflect_index, run_whole
from sidraw.unet_split import split_unet

NOISE = np.array([[0.02, 1e-4]], np.float32)


@pytest.fixture(scope="module")
def staged_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noise-conditioned random U-Net whose card asks for staged inference at level 2,
    with its overlap and context measured as export measures them."""
    folder = tmp_path_factory.mktemp("staged-models")
    path = write_model(folder, "bayer", noise_map=True, name="staged-bayer")
    data = json.loads(path.read_text())
    data["staged"] = {"level": 2, "context": 0}
    path.write_text(json.dumps(data))
    network = Network(load_card(path), "cpu")
    data["overlap"] = measure_overlap(lambda b: network(b, noise=NOISE), 4)
    data["tile"] = 768
    path.write_text(json.dumps(data))
    network = Network(load_card(path), "cpu")
    stages = network.stages(NOISE, half_skips=False)
    assert stages is not None
    image = _image((150, 170))
    data["staged"]["context"] = measure_context(lambda b: network(b, noise=NOISE), stages, image)
    path.write_text(json.dumps(data))
    return folder


def _image(shape: tuple[int, int], seed: int = 0, channels: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 0.5, (shape[0] // 8 + 1, shape[1] // 8 + 1, channels))
    image = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[: shape[0], : shape[1]]
    return (image + rng.normal(0, 0.05, image.shape)).astype(np.float32)


def _network(folder: Path) -> Network:
    return Network(load_card(folder / "staged-bayer.json"), "cpu")


@pytest.mark.parametrize("level", [1, 2, 3])
def test_stages_compose_to_the_network(level: int) -> None:
    import onnxruntime as ort

    model = build_unet(4, width=4, noise_map=True).SerializeToString()
    cut = split_unet(model, level, ["input", "noise"], "output")
    full, enc, deep, dec = (
        ort.InferenceSession(m, providers=["CPUExecutionProvider"])
        for m in (model, cut.encode, cut.deep, cut.decode)
    )
    x = _image((48, 80)).transpose(2, 0, 1)[None].copy()
    features, *skips = enc.run(None, {"input": x, "noise": NOISE})
    assert features.shape[2:] == (48 >> level, 80 >> level)
    assert [s.shape[2:] for s in skips] == [(48 >> k, 80 >> k) for k in range(level)]
    answer = deep.run(None, {cut.features: features})[0]
    feeds = {"input": x, cut.answer: answer, **dict(zip(cut.skips, skips, strict=True))}
    y = dec.run(None, feeds)[0]
    np.testing.assert_allclose(y, full.run(None, {"input": x, "noise": NOISE})[0], atol=1e-5)
    # Held as float16 between the stages: the same network, up to that rounding.
    half = split_unet(model, level, ["input", "noise"], "output", half_skips=True)
    enc, dec = (
        ort.InferenceSession(m, providers=["CPUExecutionProvider"])
        for m in (half.encode, half.decode)
    )
    features, *skips = enc.run(None, {"input": x, "noise": NOISE})
    assert all(s.dtype == np.float16 for s in skips)
    feeds = {"input": x, half.answer: answer, **dict(zip(half.skips, skips, strict=True))}
    np.testing.assert_allclose(dec.run(None, feeds)[0], y, atol=2e-2)


def test_split_refuses_graphs_that_are_not_unets() -> None:
    node = helper.make_node("Relu", ["input"], ["output"])
    value = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, "h", "w"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, "h", "w"])
    plain = helper.make_model(helper.make_graph([node], "g", [value], [out]))
    with pytest.raises(ValueError, match="not a U-Net"):
        split_unet(plain.SerializeToString(), 1, ["input"], "output")
    with pytest.raises(ValueError, match="split level 4"):
        split_unet(build_unet(4, width=4).SerializeToString(), 4, ["input"], "output")


def test_staged_equals_the_whole_frame_and_needs_its_context(staged_models: Path) -> None:
    network = _network(staged_models)
    stages = network.stages(NOISE, half_skips=False)
    assert stages is not None and stages.context >= stages.scale
    image = _image((203, 251), seed=4)  # another input, size and tile than it was measured on
    whole = run_whole(image, lambda b: network(b, noise=NOISE), margin=48)
    peak = np.abs(whole).max()
    staged = run_staged(image, stages, tile=96, margin=48)
    assert np.abs(staged - whole).max() <= CONTEXT_TOLERANCE * peak
    # Without context the tiles' borders show: the check can fail.
    cut_short = run_staged(image, dataclasses.replace(stages, context=0), tile=96, margin=48)
    assert np.abs(cut_short - whole).max() > 1e-3 * peak
    # The measured context is the smallest: one step of the stages' grid less is not enough.
    less = dataclasses.replace(stages, context=stages.context - stages.scale)
    short = run_staged(image, less, tile=96, margin=48)
    assert np.abs(short - whole).max() > CONTEXT_TOLERANCE * peak
    # Skip connections held as float16 (as convert holds them): off by their rounding only.
    half = network.stages(NOISE)
    assert half is not None
    error = np.abs(run_staged(image, half, tile=96, margin=48) - whole)
    assert 0 < error.max() <= 2e-3 * peak and error.mean() <= 1e-4 * peak


def test_deep_stage_in_tiles_stays_within_the_tiling_tolerance(staged_models: Path) -> None:
    network = _network(staged_models)
    stages = network.stages(NOISE, half_skips=False)
    assert stages is not None
    image = _image((480, 640), seed=5)
    whole = run_whole(image, lambda b: network(b, noise=NOISE))
    deep_tile = 2 * stages.deep_overlap + 16
    assert deep_tile < (480 + 64) // 4 * 7 // 8  # several deep tiles on each axis
    tiled = run_staged(image, stages, tile=128, deep_tile=deep_tile)
    assert np.abs(tiled - whole).max() <= 1e-3 * np.abs(whole).max()
    # With deep tiles that hardly overlap the seams show: the check can fail.
    short = dataclasses.replace(stages, deep_overlap=4)
    seams = run_staged(image, short, tile=128, deep_tile=deep_tile)
    assert np.abs(seams - whole).max() > 1e-3 * np.abs(whole).max()


@pytest.mark.parametrize(
    "padded,tile,context", [(16, 64, 16), (1600, 512, 16), (2320, 960, 32), (1424, 512, 8)]
)
def test_windows_cover_the_axis_once_with_their_context(padded, tile, context) -> None:
    windows = plan_windows(padded, tile, context, 16, 4)
    assert windows[0].lo == 0 and windows[-1].hi == padded
    for a, b in pairwise(windows):
        assert a.hi == b.lo and a.lo % 16 == 0 and a.hi - a.lo <= tile + 16
    for w in windows:
        assert w.read_lo == max(0, w.lo - context) and w.read_hi == min(padded, w.hi + context)
    with pytest.raises(ValueError, match="context"):
        plan_windows(padded, tile, context + 2, 16, 4)  # read ranges off the stages' grid


@pytest.mark.parametrize("shape", [(1, 40), (37, 500), (300, 90), (250, 260)])
def test_stream_writes_each_row_once_in_order_after_its_last_read(
    staged_models: Path, shape: tuple[int, int]
) -> None:
    network = _network(staged_models)
    stages = network.stages(NOISE, half_skips=False)
    assert stages is not None
    image = _image(shape, seed=2)
    events: list[tuple[str, int]] = []  # ("read" | "write", image row), in time order
    out = np.full((*shape, 4), np.nan, np.float32)

    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        events.extend(("read", int(r)) for r in np.unique(rows))
        return image[np.ix_(rows, cols)]

    def write(row0: int, rows: np.ndarray) -> None:
        for r in range(row0, row0 + rows.shape[0]):
            assert np.isnan(out[r]).all(), f"row {r} written twice"
            events.append(("write", r))
        out[row0 : row0 + rows.shape[0]] = rows

    run_staged_stream(shape, read, stages, write, tile=64, out_channels=4)
    written = [r for kind, r in events if kind == "write"]
    assert written == list(range(shape[0]))
    when = {r: i for i, (kind, r) in enumerate(events) if kind == "write"}
    for i, (kind, r) in enumerate(events):
        assert kind == "write" or i < when[r], f"row {r} read after it was written"
    whole = run_whole(image, lambda b: network(b, noise=NOISE))
    np.testing.assert_allclose(out, whole, atol=CONTEXT_TOLERANCE * np.abs(whole).max())


def test_a_held_input_gives_what_reading_gives(staged_models: Path) -> None:
    stages = _network(staged_models).stages(NOISE)
    assert stages is not None
    shape = (150, 170)
    image = _image(shape, seed=3) * 3  # beyond the clip in places: the held input is unclipped
    padded = padded_shape(shape, 16)
    assert padded == (160, 176)
    rows, cols = reflect_index(0, padded[0], shape[0], 0), reflect_index(0, padded[1], shape[1], 0)
    held = PaddedInput(np.ascontiguousarray(image[np.ix_(rows, cols)].transpose(2, 0, 1)), (-1, 1))
    clipped = np.clip(image, -1, 1)
    want = run_staged(clipped, stages, tile=64, margin=0)
    got = np.full_like(want, np.nan)

    def write(row0: int, rows: np.ndarray) -> None:
        got[row0 : row0 + rows.shape[0]] = rows

    run_staged_stream(shape, held, stages, write, tile=64, out_channels=4, margin=0)
    np.testing.assert_array_equal(got, want)
    # A held input must be padded as the plan pads the frame, and it has no margin to give.
    short = PaddedInput(held.planes[:, :150], (-1, 1))
    with pytest.raises(ValueError, match="padded"):
        run_staged_stream(shape, short, stages, write, tile=64, out_channels=4, margin=0)
    with pytest.raises(ValueError, match="padded"):
        run_staged_stream(shape, held, stages, write, tile=64, out_channels=4, margin=16)


@pytest.mark.parametrize("pattern", ["GBRG", "XTRANS"])
def test_amplified_planes_are_the_padded_network_input(make_dng, pattern: str) -> None:
    from sidraw.mosaic import normalise_packed, pack
    from sidraw.pipeline import amplified_planes

    src = make_dng(f"{pattern}.dng", pattern=pattern, width=606, height=402)
    with open_raw(src) as raw:
        info = raw.info
        black = np.asarray(info.black, dtype=np.float32)
        packed = normalise_packed(pack(raw.mosaic, info.layout), info.layout, black, info.white)
        h, w, _ = packed.shape
        padded = padded_shape((h, w), 16)
        assert padded[0] > h and padded[1] > w  # the reflected bottom and right are checked
        rows, cols = reflect_index(0, padded[0], h, 0), reflect_index(0, padded[1], w, 0)
        want = (packed[np.ix_(rows, cols)] * np.float32(37)).transpose(2, 0, 1)
        for threads in (1, 2):
            got = amplified_planes(raw, padded, 37.0, threads)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_staged_stream_reports_progress_over_its_three_passes(staged_models: Path) -> None:
    stages = _network(staged_models).stages(NOISE)
    assert stages is not None
    seen: list[tuple[int, int]] = []
    run_staged_stream(
        (100, 130), lambda r, c: _image((100, 130))[np.ix_(r, c)], stages, lambda r0, rows: None,
        tile=64, out_channels=4, progress=lambda d, t: seen.append((d, t)),
    )
    total = seen[-1][1]
    assert [d for d, _ in seen] == list(range(1, total + 1))
    assert total == 2 * len(plan_windows(176, 64, stages.context, 16, 4)) * len(
        plan_windows(208, 64, stages.context, 16, 4)
    ) + 1


def test_denoise_staged_in_place_equals_the_whole_frame(
    make_dng, staged_models: Path, monkeypatch
) -> None:
    src = make_dng("s.dng", pattern="GBRG", width=700, height=900)
    net = ModelCache(staged_models, "cpu").get("bayer")
    calls: list[str] = []
    original = pipeline_mod.run_staged_stream

    def spy(*args, **kwargs):
        calls.append("staged")
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "run_staged_stream", spy)
    staged_opts = ConvertOptions(ratio=50, tile=256)
    with open_raw(src) as raw:
        expected, _ = denoise(raw, net, staged_opts)
    assert calls == ["staged"]  # auto: several tiles would be needed, the card allows it
    with open_raw(src) as raw:
        denoise(raw, net, staged_opts, out=raw.mosaic)
        np.testing.assert_array_equal(raw.mosaic, expected)
    with open_raw(src) as raw:
        denoise(raw, net, ConvertOptions(ratio=50, tile=256, tiling="tiles"))
    assert calls == ["staged"] * 2  # the in-place run, then none
    # Overlapping tiles with no overlap on a frame one tile covers: the network on the whole
    # frame, unpadded but at the bottom and right, as the validation runs it; staged inference
    # gives that, up to the float16 rounding of the skip connections.
    with open_raw(src) as raw:
        whole, _ = denoise(raw, net, ConvertOptions(ratio=50, tile=768, overlap=0))
    assert calls == ["staged"] * 2
    diff = np.abs(whole.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 8 and diff.mean() <= 0.25, (diff.max(), diff.mean())
    # Auto runs a frame that one overlapping tile covers staged too.
    with open_raw(src) as raw:
        denoise(raw, net, ConvertOptions(ratio=50))
    assert calls == ["staged"] * 3
    # A frame whose stages would hold more than the limit runs in overlapping tiles.
    stages = net.stages(NOISE)
    assert stages is not None and stages.held_bytes > 0
    per_pixel = stages.held_bytes + 4 * 4  # and the whole float32 input, 4 packed channels
    monkeypatch.setattr(pipeline_mod, "STAGED_MAX_HELD", int(per_pixel * 350 * 450))
    with open_raw(src) as raw:
        denoise(raw, net, staged_opts)
    assert calls == ["staged"] * 3
    monkeypatch.setattr(pipeline_mod, "STAGED_MAX_HELD", int(per_pixel * 370 * 470))
    with open_raw(src) as raw:
        denoise(raw, net, staged_opts)
    assert calls == ["staged"] * 4


def test_cards_with_impossible_stages_are_refused(tmp_path: Path) -> None:
    path = write_model(tmp_path, "bayer", noise_map=True)
    data = json.loads(path.read_text())
    impossible = ({"level": 4, "context": 16}, {"level": 2, "context": 6}, {"level": 2, "tile": 40})
    for staged in impossible:
        data["staged"] = staged
        path.write_text(json.dumps(data))
        with pytest.raises(ModelError, match="staged"):
            load_card(path)


def test_int8_variants_and_cardless_stages_run_in_tiles(models_dir: Path) -> None:
    card = load_card(models_dir / "test-bayer.json")
    assert Network(card, "cpu").stages() is None  # no split level on the card
    staged = dataclasses.replace(card, staged_level=2, staged_context=16)
    network = Network(staged, "cpu")
    assert network.stages() is not None
    network.precision = "int8"
    assert network.stages() is None


@pytest.mark.parametrize("cfa", ["bayer", "xtrans"])
def test_bundled_models_run_staged_as_on_the_whole_frame(cfa: str) -> None:
    try:
        card = card_for(cfa)
    except ModelError:
        pytest.skip("no bundled model")
    if not card.staged_level:
        pytest.skip("the bundled model does not run staged")
    network = Network(card, "cpu")
    image = _image((160, 208), seed=9, channels=len(card.channels)) * 0.3
    whole = run_whole(image, lambda b: network(b, noise=NOISE))
    exact, half = network.stages(NOISE, half_skips=False), network.stages(NOISE)
    assert isinstance(exact, Stages) and isinstance(half, Stages)
    staged = run_staged(image, exact, tile=64)
    assert np.abs(staged - whole).max() <= CONTEXT_TOLERANCE * np.abs(whole).max()
    # As convert runs it: a few 14-bit steps off at most, a fraction of one on average.
    error = np.abs(run_staged(image, half, tile=64) - whole)
    assert error.max() <= 8 / 16383 and error.mean() <= 1 / 16383


def test_cut_networks_are_cached_and_checked(tmp_path: Path, monkeypatch) -> None:
    import sidraw.stage_cache as cache_mod

    monkeypatch.setenv("SIDRAW_CACHE_DIR", str(tmp_path))
    model = build_unet(4, width=4, noise_map=True).SerializeToString()
    args = (lambda: model, "ab" * 32, 2, ["input", "noise"], "output", True)
    first = cache_mod.cached_split(*args)
    folders = list((tmp_path / "stages").iterdir())
    assert len(folders) == 1 and (folders[0] / "stages.json").is_file()

    def no_cut(*_a, **_k):
        raise AssertionError("cut again although cached")

    monkeypatch.setattr(cache_mod, "split_unet", no_cut)
    assert cache_mod.cached_split(*args) == first  # read back, no onnx needed
    # A damaged cached graph is not used: the network is cut again and the cache mended.
    (folders[0] / "deep.onnx").write_bytes(b"garbage")
    monkeypatch.setattr(cache_mod, "split_unet", split_unet)
    assert cache_mod.cached_split(*args) == first
    assert (folders[0] / "deep.onnx").read_bytes() == first.deep
    # Another level is another cut; an unwritable cache only costs the cut.
    other = cache_mod.cached_split(
        lambda: model, "ab" * 32, 1, ["input", "noise"], "output", True
    )
    assert other.level == 1 and len(list((tmp_path / "stages").iterdir())) == 2
    monkeypatch.setenv("SIDRAW_CACHE_DIR", str(tmp_path / "stages" / folders[0].name / "x.onnx"))
    (tmp_path / "stages" / folders[0].name / "x.onnx").write_bytes(b"")  # a file, not a folder
    assert cache_mod.cached_split(*args) == first
