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
    out = quantize(card_path, count=4)
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
        out = quantize(card_path, count=4, float_full_resolution=full)
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
