"""float16 variants for GPUs: graph conversion, accuracy emulation, choice by --precision."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sidraw.errors import ModelError
from sidraw.float16 import FLOAT, FLOAT16, emulate_float16, record_variant, to_float16
from sidraw.model import choose_file, load_card
from sidraw.quantize import calibration_batches


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_float16_graph_computes_in_half_with_float32_ends(models_dir: Path) -> None:
    source = (models_dir / "test-bayer.onnx").read_bytes()
    half = onnx.load_from_string(to_float16(source))
    graph = half.graph
    assert all(init.data_type == FLOAT16 for init in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == FLOAT
    assert graph.output[0].type.tensor_type.elem_type == FLOAT
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert [n.name for n in casts] == ["input_to_fp16", "output_to_fp32"]
    # It runs (CPUs cast float16 operators back to float32) and gives the float32 results of
    # float16-rounded weights.
    x = next(calibration_batches("bayer", count=1, size=64, seed=1))
    y = _run(half.SerializeToString(), x)
    assert y.dtype == np.float32 and y.shape[0] == 1
    assert np.isfinite(y).all()


def test_emulation_rounds_activations_to_half(models_dir: Path) -> None:
    source = (models_dir / "test-xtrans.onnx").read_bytes()
    x = next(calibration_batches("xtrans", count=1, size=64, seed=2))
    exact, emulated = _run(source, x), _run(emulate_float16(source), x)
    # Close (float16 has 11 significant bits), but not equal: the rounding happens.
    scale = float(np.abs(exact).max())
    assert 0 < np.abs(exact - emulated).max() < 1e-2 * scale
    # Rounding the emulation's output to float16 changes nothing: it is float16 already.
    np.testing.assert_array_equal(emulated.astype(np.float16).astype(np.float32), emulated)


def test_unsupported_operators_are_refused() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="Softmax"):
        to_float16(model.SerializeToString())


def test_fp16_variant_is_chosen_on_gpus_only(tmp_path: Path, models_dir: Path) -> None:
    for f in models_dir.glob("test-bayer.*"):
        shutil.copy(f, tmp_path)
    card_path = tmp_path / "test-bayer.json"
    with pytest.raises(ModelError, match="no fp16 variant"):
        choose_file(load_card(card_path), "fp16", "cuda")
    record_variant(card_path, drop_db=None, raw_drop_db=None)
    card = load_card(card_path)
    assert "derived" in card.variants["fp16"]
    with pytest.raises(ModelError, match="for GPUs"):
        choose_file(card, "fp16", "cpu")
    with pytest.raises(ModelError, match="for CPUs"):
        choose_file(card, "int8", "cuda")
    # Made from the float32 file, whose checksum is checked as usual.
    assert choose_file(card, "fp16", "cuda") == (card.path, card.sha256, "fp16")
    # auto: float16 on a GPU once its measured loss is small enough; never on a CPU.
    assert choose_file(card, "auto", "cuda")[2] == "fp32"
    record_variant(card_path, drop_db=0.01, raw_drop_db=0.0)
    assert choose_file(load_card(card_path), "auto", "cuda")[2] == "fp16"
    assert choose_file(load_card(card_path), "auto", "cpu")[2] == "fp32"


def test_network_builds_the_float16_graph(models_dir: Path, monkeypatch) -> None:
    import sidraw.model as model_mod

    made: list[Path] = []
    real = model_mod._float16_model

    def spy(path: Path) -> bytes:
        made.append(path)
        return real(path)

    # No GPU here: pretend the choice was made for one, and run the result on the CPU.
    card = load_card(models_dir / "test-bayer.json")
    monkeypatch.setattr(model_mod, "_float16_model", spy)
    monkeypatch.setattr(model_mod, "choose_file", lambda c, p, d: (c.path, c.sha256, "fp16"))
    net = model_mod.Network(card, "cpu", precision="fp16")
    assert net.precision == "fp16" and made == [card.path]
    x = next(calibration_batches("bayer", count=1, size=64, seed=3))
    assert net(x).dtype == np.float32
