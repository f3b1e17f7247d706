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
