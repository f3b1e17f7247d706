"""Small U-Net ONNX graphs with random weights, built without torch, for pipeline tests.

The graphs have the shape of sidraw's real networks (3x3 convolutions, LeakyReLU, four 2x2 max
pools, transposed-convolution upsampling, skip concatenations), so tiling and packing are tested
against a real receptive field; their weights are random, so their output means nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BAYER = ["R", "G", "G", "B"]
XTRANS = ["G", "G", "G", "G", "G", "R", "R", "B", "B"]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int = 3, act: bool = True) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.01, cout).astype(np.float32)
        wn, bn, y = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, wn, bn], [y], pads=[pad] * 4))
        if not act:
            return y
        z = self.name("act")
        self.nodes.append(helper.make_node("LeakyRelu", [y], [z], alpha=0.2))
        return z

    def pool(self, x: str) -> str:
        y = self.name("pool")
        self.nodes.append(
            helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2])
        )
        return y

    def up(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cin, cout, 2, 2)).astype(np.float32)
        wn, y = self.name("wt"), self.name("up")
        self.inits.append(numpy_helper.from_array(w, wn))
        self.nodes.append(helper.make_node("ConvTranspose", [x, wn], [y], strides=[2, 2]))
        return y

    def concat(self, a: str, b: str) -> str:
        y = self.name("cat")
        self.nodes.append(helper.make_node("Concat", [a, b], [y], axis=1))
        return y

    def noise_std(self, x: str) -> str:
        """``sqrt(a * max(x, 0) + b)`` of the input ``x`` under the (N, 2) ``noise`` = [a, b]."""
        self.inits.append(numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "nshape"))
        terms = []
        for i in (0, 1):
            idx = self.name("idx")
            self.inits.append(numpy_helper.from_array(np.array(i, np.int64), idx))
            g, r = self.name("gather"), self.name("coef")
            self.nodes += [
                helper.make_node("Gather", ["noise", idx], [g], axis=1),
                helper.make_node("Reshape", [g, "nshape"], [r]),
            ]
            terms.append(r)
        pos, shot, var, std = (self.name(k) for k in ("pos", "shot", "var", "std"))
        self.nodes += [
            helper.make_node("Relu", [x], [pos]),
            helper.make_node("Mul", [pos, terms[0]], [shot]),
            helper.make_node("Add", [shot, terms[1]], [var]),
            helper.make_node("Sqrt", [var], [std]),
        ]
        return self.concat(x, std)


def build_unet(
    channels: int, width: int = 8, levels: int = 4, seed: int = 0, noise_map: bool = False
) -> onnx.ModelProto:
    """A U-Net ``channels`` -> ``channels`` with ``levels`` poolings (downsampling 2**levels).

    With ``noise_map`` it is shaped like sidraw's version-2 networks: a second input ``noise``
    (N, 2), the expected noise std as ``channels`` extra input channels, and a global residual.
    """
    b = _Builder(seed)
    x = b.noise_std("input") if noise_map else "input"
    widths = [width * 2**i for i in range(levels + 1)]
    skips = []
    cin = 2 * channels if noise_map else channels
    for i in range(levels):
        x = b.conv(b.conv(x, cin, widths[i]), widths[i], widths[i])
        skips.append(x)
        x = b.pool(x)
        cin = widths[i]
    x = b.conv(b.conv(x, cin, widths[levels]), widths[levels], widths[levels])
    for i in reversed(range(levels)):
        x = b.up(x, widths[i + 1], widths[i])
        x = b.concat(x, skips[i])
        x = b.conv(b.conv(x, 2 * widths[i], widths[i]), widths[i], widths[i])
    y = b.conv(x, widths[0], channels, k=1, act=False)
    b.nodes.append(
        helper.make_node(
            "Add" if noise_map else "Identity", [y, "input"][: 1 + noise_map], ["output"]
        )
    )
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, "h", "w"])]
    if noise_map:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, [1, 2]))
    graph = helper.make_graph(
        b.nodes,
        "unet",
        inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, "h", "w"])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(
    folder: Path,
    cfa: str,
    width: int = 8,
    seed: int = 0,
    name: str | None = None,
    noise_map: bool = False,
) -> Path:
    """Write ``<name>.onnx`` and its model card into ``folder``; returns the card path."""
    channels = BAYER if cfa == "bayer" else XTRANS
    name = name or f"test-{cfa}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(build_unet(len(channels), width=width, seed=seed, noise_map=noise_map), onnx_path)
    card = {
        "name": name,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "cfa": cfa,
        "channels": channels,
        "downsample": 16,
        "input_name": "input",
        "output_name": "output",
        "normalisation": {"input_clip": [-1, 1], "output_clip": [0, 1]},
    }
    if noise_map:
        card["noise_input"] = "noise"
    card_path = folder / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=2))
    return card_path
