"""Half-precision (float16) variants of a model, for GPUs.

sidraw's exported graphs store their weights as float16 initializers, each cast to float32 at load
(:mod:`sidraw.train.export`). The float16 variant drops those casts and computes in float16
throughout; only the graph's input and output are cast, so callers still pass and receive float32
and the variant is a drop-in for ``--precision fp16``. On CUDA, float16 convolutions run on
tensor cores; CPUs have no fast float16 convolutions, so the variant is meant for GPUs only.

No file is shipped: the variant is made from the float32 file when it is asked for. Its accuracy
is measured on CPUs through an emulation that rounds every activation to float16:

    python -m sidraw.float16 emulate weights/sidraw-bayer.onnx /tmp/bayer-fp16.onnx
    sidraw eval weights/sidraw-bayer.onnx /tmp/bayer-fp16.onnx      # same run, same cases
    python -m sidraw.float16 record weights/sidraw-bayer.json --drop-db D --raw-drop-db R
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10  # onnx.TensorProto.FLOAT16
#: Operators a float16 graph may hold: those of sidraw's U-Nets (and plain elementwise ones).
SUPPORTED_OPS = frozenset(
    {
        "Cast",
        "Conv",
        "ConvTranspose",
        "LeakyRelu",
        "Relu",
        "MaxPool",
        "Concat",
        "Add",
        "Mul",
        "Identity",
    }
)


def to_float16(model_bytes: bytes) -> bytes:
    """A float16-compute copy of a float32 ONNX graph with float32 input and output.

    Float32 initializers are stored as float16; casts of float16 initializers to float32 are
    removed; the input is cast to float16 on entry and the output back to float32.

    Raises:
        ValueError: the graph has an operator outside :data:`SUPPORTED_OPS`, or its input or
            output is not float32.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    unknown = sorted({n.op_type for n in graph.node} - SUPPORTED_OPS)
    if unknown:
        raise ValueError(f"no float16 conversion for operators {', '.join(unknown)}")
    ends = [*graph.input, *graph.output]
    if any(v.type.tensor_type.elem_type != FLOAT for v in ends):
        raise ValueError("the graph's input and output must be float32")

    initializers = {}
    for init in graph.initializer:
        if init.data_type == FLOAT:
            values = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(values, init.name))
        initializers[init.name] = init
    # Casts of (now) float16 weights to float32: their consumers read the weight itself.
    alias: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in initializers:
            alias[node.output[0]] = node.input[0]
            continue
        if node.op_type == "Cast":
            raise ValueError("the graph casts activations: no float16 conversion for it")
        nodes.append(node)
    (inp,), (out,) = graph.input, graph.output
    half_in, half_out = inp.name + "_fp16", out.name + "_fp16"
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = half_in if name == inp.name else alias.get(name, name)
        for i, name in enumerate(node.output):
            if name == out.name:
                node.output[i] = half_out
    graph.ClearField("node")
    graph.node.extend(
        [
            helper.make_node("Cast", [inp.name], [half_in], to=FLOAT16, name="input_to_fp16"),
            *nodes,
            helper.make_node("Cast", [half_out], [out.name], to=FLOAT, name="output_to_fp32"),
        ]
    )
    graph.ClearField("value_info")  # float32 intermediate types no longer hold
    onnx.checker.check_model(model)
    return model.SerializeToString()


def emulate_float16(model_bytes: bytes) -> bytes:
    """A float32 graph that rounds its input and every activation to float16, as the float16
    variant stores them, while each operator still computes in float32.

    This measures the variant's accuracy on CPUs, which run float16 operators by casting them to
    float32 (so the float16 file itself gives float32 results there). It models float16 storage
    with float32 accumulation, which is how cuDNN runs float16 convolutions on tensor cores.
    """
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}

    def round_trip(src: str, dst: str) -> None:
        nodes.append(helper.make_node("Cast", [src], [src + "_fp16"], to=FLOAT16))
        nodes.append(helper.make_node("Cast", [src + "_fp16"], [dst], to=FLOAT))

    for inp in graph.input:
        renamed[inp.name] = inp.name + "_rounded"
        round_trip(inp.name, renamed[inp.name])
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        if node.op_type == "Cast" and node.input[0] in weights:
            nodes.append(node)  # a float16 weight cast to float32: exact already
            continue
        pending = []
        for i, name in enumerate(node.output):
            if name in outputs:  # the graph's output keeps its name, after the rounding
                node.output[i] = name + "_fp32"
                pending.append((node.output[i], name))
            else:
                renamed[name] = name + "_rounded"
                pending.append((name, renamed[name]))
        nodes.append(node)
        for src, dst in pending:
            round_trip(src, dst)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("value_info")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def record_variant(
    card_path: Path,
    drop_db: float | None,
    raw_drop_db: float | None,
    validation: dict[str, object] | None = None,
) -> dict[str, object]:
    """Record the float16 variant, and its measured loss, in a model card (JSON).

    No file is written: :class:`sidraw.model.Network` makes the variant from the float32 file
    when ``--precision fp16`` (or ``auto`` on a GPU) asks for it.
    """
    raw = json.loads(card_path.read_text())
    entry: dict[str, object] = {
        "derived": "sidraw.float16.to_float16 of this card's ONNX file, at load",
        "layout": "float16 weights and activations, float32 input and output (for GPUs)",
        "accuracy": "measured with sidraw.float16.emulate_float16 (float16 storage, float32 "
        "accumulation) on the validation sets",
    }
    if drop_db is not None:
        entry["psnr_drop_db"] = drop_db
    if raw_drop_db is not None:
        entry["raw_psnr_drop_db"] = raw_drop_db
    if validation:
        entry["validation"] = validation
    raw.setdefault("variants", {})["fp16"] = entry
    card_path.write_text(json.dumps(raw, indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    em = sub.add_parser("emulate", help="write the float16-rounding float32 graph of a model")
    em.add_argument("onnx", type=Path)
    em.add_argument("out", type=Path)
    rec = sub.add_parser("record", help="record the variant and its measured loss in a card")
    rec.add_argument("card", type=Path, help="the model card (JSON)")
    rec.add_argument("--drop-db", type=float, help="sRGB PSNR loss against float32 (dB)")
    rec.add_argument("--raw-drop-db", type=float, help="raw PSNR loss against float32 (dB)")
    a = ap.parse_args(argv)
    if a.cmd == "emulate":
        a.out.write_bytes(emulate_float16(a.onnx.read_bytes()))
    else:
        print(json.dumps(record_variant(a.card, a.drop_db, a.raw_drop_db), indent=1))


if __name__ == "__main__":
    main()
