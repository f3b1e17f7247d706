"""INT8 variants: calibrated quantisation, registered in the card, chosen by --precision."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidraw.errors import ModelError
from sidraw.model import Network, choose_file, load_card
from sidraw.quantize import calibration_batches, quantize


def test_calibration_data_is_in_the_convert_domain() -> None:
    batches = list(calibration_batches("xtrans", count=2, size=64))
    assert batches[0].shape == (1, 9, 64, 64) and batches[0].dtype == np.float32
    assert all(b.min() >= -1 and b.max() <= 1 for b in batches)


def test_int8_variant(tmp_path: Path, models_dir: Path) -> None:
    for f in models_dir.glob("test-bayer.*"):
        shutil.copy(f, tmp_path)
    card_path = tmp_path / "test-bayer.json"
    out = quantize(card_path, count=4, layers="downsampled")
    card = load_card(card_path)
    assert card.variants["int8"]["file"] == out.name
    with pytest.raises(ModelError):
        choose_file(load_card(models_dir / "test-bayer.json"), "int8", "cpu")
    # Without a validated PSNR drop, auto stays on fp32; --precision int8 forces the variant.
    assert choose_file(card, "auto", "cpu")[2] == "fp32"
    fp32, int8 = Network(card, "cpu"), Network(card, "cpu", precision="int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    x = next(calibration_batches("bayer", count=1, size=128, seed=5))
    a, b = fp32(x), int8(x)
    assert np.abs(a - b).max() < 0.25 * np.abs(a).max()  # close, but quantised
    data = json.loads(card_path.read_text())
    data["variants"]["int8"]["psnr_drop_db"] = 0.05
    card_path.write_text(json.dumps(data))
    assert choose_file(load_card(card_path), "auto", "cpu")[2] == "int8"
    assert choose_file(load_card(card_path), "auto", "cuda")[2] == "fp32"


def _noise_model_card(folder: Path) -> Path:
    from unet_onnx import write_model

    return write_model(folder, "bayer", width=4, noise_map=True, name="nm")


def test_calibration_feeds_the_noise_of_each_patch(tmp_path: Path) -> None:
    from sidraw.quantize import calibration_feeds

    card = load_card(_noise_model_card(tmp_path))
    feeds = calibration_feeds(card, count=3, size=64)
    assert all(set(f) == {"input", "noise"} for f in feeds)
    vectors = np.concatenate([f["noise"] for f in feeds])
    assert vectors.shape == (3, 2) and vectors.dtype == np.float32
    assert np.all(vectors[:, 0] > 0) and np.all(vectors[:, 1] > 0)
    assert len({tuple(v) for v in vectors}) == 3  # fitted per patch, not one constant


def test_int8_variant_of_a_noise_conditioned_model(tmp_path: Path) -> None:
    import onnx

    from sidraw.quantize import calibration_feeds

    errors = {}
    for full in (True, False):
        folder = tmp_path / str(full)
        card_path = _noise_model_card(folder)
        out = quantize(card_path, count=4, layers="downsampled" if full else "all")
        card = load_card(card_path)
        assert card.variants["int8"]["float_layers"] == ("full resolution" if full else "none")
        graph = onnx.load(str(out)).graph
        dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        int8 = [n.name for n in convs if n.input[1] in dequantised]
        # The first two and last three convolutions run at full resolution.
        assert len(int8) == (len(convs) - 5 if full else len(convs))
        fp32, q = Network(card, "cpu", threads=1), Network(card, "cpu", threads=1, precision="int8")
        feed = calibration_feeds(card, count=1, size=64, seed=9)[0]
        a, b = fp32(feed["input"], noise=feed["noise"]), q(feed["input"], noise=feed["noise"])
        assert not np.array_equal(a, b)
        errors[full] = float(np.sqrt(np.mean((a - b) ** 2)))
        # Quantised, the residual sum puts the output on 256 levels: kept in float, it is not.
        assert (len(np.unique(b)) > 1000) == full
    assert errors[True] < errors[False], errors


def _dequantised_convs(path: Path) -> tuple[list[str], list[str]]:
    """(names of all Conv nodes, names of those whose weights are INT8) of an ONNX file."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return [n.name for n in convs], [n.name for n in convs if n.input[1] in dequantised]


def _staged_card(folder: Path) -> Path:
    """A noise-conditioned U-Net whose card cuts it at level 2, with its context measured."""
    from sidraw.staged import measure_context

    path = _noise_model_card(folder)
    data = json.loads(path.read_text())
    data["staged"] = {"level": 2, "context": 0}
    path.write_text(json.dumps(data))
    network = Network(load_card(path), "cpu", threads=1)
    stages = network.stages(NOISE, half_skips=False)
    assert stages is not None
    image = next(calibration_batches("bayer", count=1, size=96, seed=3))[0].transpose(1, 2, 0)
    context = measure_context(lambda b: network(b, noise=NOISE), stages, image)
    data["staged"]["context"] = context
    path.write_text(json.dumps(data))
    return path


NOISE = np.array([[0.02, 1e-4]], np.float32)


def test_deep_int8_variant_runs_staged(tmp_path: Path) -> None:
    import onnx

    from sidraw.staged import run_staged
    from sidraw.tiling import run_whole
    from sidraw.unet_split import deep_nodes, split_unet

    card_path = _staged_card(tmp_path)
    fp32_file = load_card(card_path).path
    out = quantize(card_path, count=4)  # the default: the deep stage only
    card = load_card(card_path)
    entry = card.variants["int8"]
    assert entry["int8_layers"] == "deep" and "99.5 %" in entry["calibration"]
    # Exactly the deep stage's convolutions are INT8; levels 1 and 2 stay float.
    convs, int8 = _dequantised_convs(out)
    cut = split_unet(fp32_file.read_bytes(), 2, ["input", "noise"], "output")
    deep = [n for n in onnx.load_from_string(cut.deep).graph.node if n.op_type == "Conv"]
    assert 0 < len(int8) == len(deep) < len(convs)
    assert set(deep_nodes(out.read_bytes(), 2)) >= set(int8)

    fp32 = Network(card, "cpu", threads=1, precision="fp32")
    q = Network(card, "cpu", threads=1, precision="int8")
    stages = q.stages(NOISE)
    assert stages is not None and q.path == out
    image = next(calibration_batches("bayer", count=1, size=128, seed=7))[0].transpose(1, 2, 0)
    image = np.ascontiguousarray(image[:112, :96])
    whole = run_whole(image, lambda b: q(b, noise=NOISE), multiple=16, margin=0)
    staged = run_staged(image, stages, tile=32, margin=0)
    reference = run_whole(image, lambda b: fp32(b, noise=NOISE), multiple=16, margin=0)
    # Staged INT8 is the INT8 network (up to the float16 skip connections), not the float one.
    assert np.abs(staged - whole).max() < 2e-3
    assert np.abs(whole - reference).max() > 1e-3


def test_only_deep_int8_variants_run_staged(tmp_path: Path) -> None:
    card_path = _staged_card(tmp_path)
    quantize(card_path, count=2, layers="downsampled")
    card = load_card(card_path)
    assert card.variants["int8"]["int8_layers"] == "downsampled"
    assert Network(card, "cpu", threads=1, precision="int8").stages(NOISE) is None
    assert Network(card, "cpu", threads=1, precision="fp32").stages(NOISE) is not None


def test_deep_int8_needs_a_staged_card(tmp_path: Path) -> None:
    card_path = _noise_model_card(tmp_path)
    with pytest.raises(ValueError, match="no staged level"):
        quantize(card_path, count=2)
    assert "variants" not in json.loads(card_path.read_text())
