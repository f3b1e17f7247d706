"""Quantisation-aware training: the fake-quantised PyTorch U-Net computes what onnxruntime's INT8
QDQ model built with the QAT ranges computes."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sidraw.train.export import export_onnx  # noqa: E402
from sidraw.train.qat import QATUNet, act_points, fake_quant_act, quantize_qat  # noqa: E402
from sidraw.train.unet import UNet, UNetConfig  # noqa: E402


def _int8(model: QATUNet, tmp_path: Path) -> tuple[Path, dict]:
    fp32 = tmp_path / "tiny.onnx"
    export_onnx(model.net, fp32)  # rounds the weights to float16 in place, as the real export
    int8 = tmp_path / "tiny.int8.onnx"
    return int8, quantize_qat(model, fp32, int8)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[QATUNet, Path, dict, np.ndarray]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = QATUNet(UNet(UNetConfig(channels=4, width=4, max_mult=2)), observe_steps=2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 4, 64, 64) * 1.2 - 0.2)
        # Tighter ranges than observed on a few tensors, so that clipping matters too.
        for name in ("enc.0.1", "cat.0", "head"):
            q = model.act(name)
            q.hi.mul_(0.7)
    model.set_mode("quant")
    model.eval()
    int8, overrides = _int8(model, tmp_path_factory.mktemp("qat"))
    x = np.random.default_rng(3).uniform(-0.2, 1.0, (1, 4, 64, 96)).astype(np.float32)
    return model, int8, overrides, x


def test_every_qdq_activation_has_a_qat_range(tiny) -> None:
    model, int8, overrides, _ = tiny
    assert len(overrides) == len(act_points(model.net.config))
    graph = onnx.load(str(int8)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    # The graph output keeps its name; the tensor quantised becomes output_QuantizeLinear_Input.
    quantized = {
        n.input[0].removesuffix("_QuantizeLinear_Input"): n.input[1]
        for n in graph.node
        if n.op_type == "QuantizeLinear"
    }
    # Every activation QuantizeLinear is one of ours (MaxPool outputs reuse their input's scale).
    for tensor, scale_name in quantized.items():
        if tensor in overrides:
            assert inits[scale_name] == pytest.approx(float(overrides[tensor][0]["scale"]))
        else:
            assert "MaxPool" in tensor, tensor
    assert set(overrides) <= set(quantized)


def test_fake_quant_matches_onnxruntime_int8(tiny) -> None:
    model, int8, _, x = tiny
    got = _run(int8, x)
    with torch.no_grad():
        fq = model(torch.from_numpy(x)).numpy()
        model.set_mode("off")
        model.weight_quant = False
        try:
            plain = model(torch.from_numpy(x)).numpy()
        finally:
            model.set_mode("quant")
            model.weight_quant = True
    out_scale = model.act("head").qparams()[0]
    err_fq, err_plain = np.abs(got - fq), np.abs(got - plain)
    # Off by at most one output step in rare places (float rounding of the requantisation) ...
    assert err_fq.max() <= 1.01 * out_scale
    assert err_fq.mean() < 0.02 * out_scale
    # ... while the float model is many steps away: the test sees the fake quantisation.
    assert err_plain.mean() > 0.5 * out_scale
    assert err_plain.mean() > 50 * err_fq.mean()


def test_fake_quant_rounds_like_quantizelinear() -> None:
    x = torch.tensor([-0.3, -0.1, 0.0, 0.05, 0.5 / 255 * 3, 0.7, 2.0])
    rmin, rmax = torch.tensor(-0.23), torch.tensor(1.0)
    scale = 1.23 / 255
    zp = round(0.23 / scale)  # 47.7: no tie
    q = np.clip(np.round(x.numpy() / np.float32(scale)) + zp, 0, 255)
    ref = (q - zp) * np.float32(scale)
    np.testing.assert_allclose(fake_quant_act(x, rmin, rmax).numpy(), ref, atol=1e-6)
    # Straight-through: gradient 1 inside the range, 0 where clipped.
    xg = x.clone().requires_grad_(True)
    fake_quant_act(xg, rmin, rmax).sum().backward()
    assert xg.grad is not None
    assert xg.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def _fake_and_plain(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's output with fake quantisation, then with it switched off (the caller turns it
    back on)."""
    with torch.no_grad():
        fq = model(torch.from_numpy(x)).numpy()
        model.set_mode("off")
        model.weight_quant = False
        plain = model(torch.from_numpy(x)).numpy()
    return fq, plain


@pytest.mark.parametrize(
    "first,head,tail",
    [(True, True, False), (False, True, False), (True, False, False), (True, False, True)],
)
def test_float_end_layers(tiny, tmp_path: Path, first: bool, head: bool, tail: bool) -> None:
    model, _, _, x = tiny
    model.float_first, model.float_head, model.float_tail = first, head, tail
    head = head or tail
    try:
        int8, overrides = _int8(model, tmp_path)
        graph = onnx.load(str(int8)).graph
        convs = {n.input[0]: n for n in graph.node if n.op_type == "Conv"}
        # A float Conv reads the raw input / writes the raw output, no QuantizeLinear there.
        assert ("input" in convs) == first
        assert any("output" in n.output for n in convs.values()) == head
        q_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        assert ("input" in q_inputs) != first
        assert bool({"output", "output_QuantizeLinear_Input"} & q_inputs) != head
        assert len(overrides) == len(act_points(model.net.config)) - first - head - 2 * tail
        float_convs = [
            n
            for n in graph.node
            if n.op_type == "Conv" and not n.input[1].endswith("_DequantizeLinear_Output")
        ]
        assert len(float_convs) == first + head + tail
        float_acts = [
            n for n in graph.node if n.op_type == "LeakyRelu" and n.output[0] not in q_inputs
        ]
        assert len(float_acts) == tail
        got = _run(int8, x)
        fq, plain = _fake_and_plain(model, x)
    finally:
        model.float_first = model.float_head = model.float_tail = False
        model.set_mode("quant")
        model.weight_quant = True
    err_fq, err_plain = np.abs(got - fq).mean(), np.abs(got - plain).mean()
    assert err_fq < 0.02 * err_plain


def test_float_level0(tiny, tmp_path: Path) -> None:
    """INT8 only below full resolution: the full-resolution layers are float nodes, the pooled
    first-level features carry the ``enc.0.3`` range, and ORT still matches the fake quant."""
    model, _, _, x = tiny
    model.float_level0 = True
    try:
        int8, overrides = _int8(model, tmp_path)
        graph = onnx.load(str(int8)).graph
        q_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        float_nodes = [
            n
            for n in graph.node
            if n.op_type in ("Conv", "LeakyRelu")
            and not any(i.endswith("_DequantizeLinear_Output") for i in n.input)
        ]
        assert len(float_nodes) == 5 + 4  # Conv and LeakyRelu at full resolution
        concats = [n for n in graph.node if n.op_type == "Concat"]
        assert sum(n.output[0] not in q_inputs for n in concats) == 1  # the last one is float
        assert "input" not in q_inputs
        assert any("MaxPool" in t for t in overrides)  # pooled level-0 features: enc.0.3's range
        assert len(overrides) == len(act_points(model.net.config)) - len(model.float_points()) + 1
        got = _run(int8, x)
        fq, plain = _fake_and_plain(model, x)
    finally:
        model.float_level0 = False
        model.set_mode("quant")
        model.weight_quant = True
    err_fq, err_plain = np.abs(got - fq).mean(), np.abs(got - plain).mean()
    assert err_fq < 0.02 * err_plain
