"""The compute of an ONNX network: 2 x multiply-accumulates of its Conv and ConvTranspose nodes.

Shapes come from ``onnx.shape_inference`` after the input is fixed to ``(1, C, size, size)``.
Bias additions, activations, pooling and concatenations are not counted: on a U-Net they are a
fraction of a percent of the convolutions' work.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _shape(value_info: Any) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def conv_flops(model_path: str | Path, channels: int, size: int) -> dict[str, Any]:
    """FLOPs (2 x MACs) of the convolutions of a network on one ``size`` x ``size`` input.

    Args:
        model_path: the ONNX file.
        channels: input channels (4 for Bayer, 9 for X-Trans).
        size: edge of the square input in packed pixels.

    Returns:
        ``{"flops": total, "conv": n, "conv_transpose": n, "by_op": {op: flops}, "int8_flops":
        those of the convolutions whose weights are INT8 (QDQ: a DequantizeLinear output)}``.

    Raises:
        ValueError: a convolution whose shapes shape inference could not determine.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in shapes]
    if not inputs:
        raise ValueError("the graph has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"expected an NCHW input, the graph's has {len(dims)} dimensions")
    for dim, value in zip(dims, (1, channels, size, size), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.name not in shapes:
            shapes[vi.name] = _shape(vi)
    by_op = {"Conv": 0, "ConvTranspose": 0}
    counts = {"Conv": 0, "ConvTranspose": 0}
    dequantised = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = 0
    for node in g.node:
        if node.op_type not in by_op:
            continue
        x = shapes.get(node.input[0], ())
        w = shapes.get(node.input[1], ())
        y = shapes.get(node.output[0], ())
        # Conv: W is (Cout, Cin/g, k...), each output element costs Cin/g * k... MACs.
        # ConvTranspose: W is (Cin, Cout/g, k...), each input element costs Cout/g * k... MACs.
        ref = y if node.op_type == "Conv" else x
        if len(w) < 3 or not ref or min(w) < 1 or min(ref) < 1:
            raise ValueError(f"unknown shapes at {node.op_type} node {node.name or node.output[0]}")
        macs = math.prod(ref) * w[1] * math.prod(w[2:])
        by_op[node.op_type] += 2 * macs
        counts[node.op_type] += 1
        int8 += 2 * macs if node.input[1] in dequantised else 0
    return {
        "flops": sum(by_op.values()),
        "conv": counts["Conv"],
        "conv_transpose": counts["ConvTranspose"],
        "by_op": by_op,
        "int8_flops": int8,
    }
