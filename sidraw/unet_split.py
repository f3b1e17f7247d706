"""Cut a U-Net's ONNX graph into the three stages of staged inference (:mod:`sidraw.staged`).

A U-Net at split level ``L`` becomes:

- ``encode``: the network input (and noise vector) to the output of its ``L``-th max-pool, the
  features entering the deep levels, at ``1/2**L`` of the input's size, and to the skip
  connections of its first ``L`` levels (the inputs of its first ``L`` max-pools);
- ``deep``: those features to the input of the decoder's ``L``-th transposed convolution counted
  from the full-resolution end, the deep levels' answer at the same ``1/2**L`` size;
- ``decode``: the network input (for the global residual), those skip connections and that
  answer to the network output.

The stages are cut by the graph's structure (max-pool and transposed-convolution nodes in
topological order), so any export of :class:`sidraw.train.unet.UNet` qualifies, whatever its
tensor names. Needs the ``onnx`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UNetStages:
    """Serialised ONNX models of the three stages and the names that join them.

    Attributes:
        encode, deep, decode: the stage graphs (ONNX bytes).
        features: the tensor ``encode`` outputs first and ``deep`` reads.
        skips: the skip connections ``encode`` outputs after it and ``decode`` reads, finest
            first (level ``k``'s at ``1/2**k`` of the input's size).
        answer: the tensor ``deep`` outputs and ``decode`` reads last.
        level: the split level ``L``: ``features`` and ``answer`` are ``2**L`` times smaller
            than the input along each axis.
    """

    encode: bytes
    deep: bytes
    decode: bytes
    features: str
    skips: tuple[str, ...]
    answer: str
    level: int


#: Suffix of a skip connection's name where it crosses between the stages as float16.
HALF = "/float16"


def split_unet(
    model: bytes, level: int, inputs: list[str], output: str, half_skips: bool = False
) -> UNetStages:
    """Cut a serialised U-Net into :class:`UNetStages`.

    Args:
        model: the ONNX model (bytes), a U-Net with as many max-pools as transposed convolutions.
        level: the split level, at least 1 and less than the number of max-pools.
        inputs: the graph inputs the full-resolution levels read, the image first (then the
            noise vector).
        output: the graph output.
        half_skips: the skip connections leave ``encode`` and enter ``decode`` as float16
            (named ``<skip>/float16``; the stages cast them, which onnxruntime does far faster
            than numpy): half the memory where they are held for a frame.

    Raises:
        ValueError: the graph is not shaped like a U-Net, or ``level`` is out of its range.
    """
    import onnx
    from onnx.utils import Extractor

    # The extractor reads the types of the tensors it cuts at from the graph's value_info.
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    features, skips, answer = _cut_tensors(proto, level)
    extractor = Extractor(proto)

    def cut(ins: list[str], outs: list[str]) -> onnx.ModelProto:
        return extractor.extract_model(ins, outs)

    encode = cut(inputs, [features, *skips])
    decode = cut([inputs[0], *skips, answer], [output])
    if half_skips:
        _skips_as_float16(encode, decode, skips)
    return UNetStages(
        encode=encode.SerializeToString(),
        deep=cut([features], [answer]).SerializeToString(),
        decode=decode.SerializeToString(),
        features=features,
        skips=tuple(name + HALF for name in skips) if half_skips else skips,
        answer=answer,
        level=level,
    )


def deep_nodes(model: bytes, level: int) -> list[str]:
    """Names of the nodes of a serialised U-Net that its ``deep`` stage at split ``level`` runs
    (every node between the features and the answer; unnamed nodes give empty names).

    Raises:
        ValueError: as :func:`split_unet`.
    """
    import onnx
    from onnx.utils import Extractor

    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    features, _, answer = _cut_tensors(proto, level)
    return [n.name for n in Extractor(proto).extract_model([features], [answer]).graph.node]


def _cut_tensors(proto: Any, level: int) -> tuple[str, tuple[str, ...], str]:
    """(features, skip connections finest first, answer): the tensors a U-Net's ModelProto is
    cut at for split ``level`` (see :class:`UNetStages`)."""
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    ups = [n for n in proto.graph.node if n.op_type == "ConvTranspose"]
    if not pools or len(pools) != len(ups):
        raise ValueError(
            f"not a U-Net graph: {len(pools)} max-pools, {len(ups)} transposed convolutions"
        )
    if not 1 <= level < len(pools):
        raise ValueError(f"split level {level} outside 1..{len(pools) - 1}")
    skips = tuple(pool.input[0] for pool in pools[:level])
    return pools[level - 1].output[0], skips, ups[len(ups) - level].input[0]


def _skips_as_float16(encode: Any, decode: Any, skips: tuple[str, ...]) -> None:
    """Cast the skip outputs of ``encode`` and the skip inputs of ``decode`` (ModelProtos) to
    float16 at the boundary, in place."""
    from onnx import TensorProto, helper

    def retype(values: Any, name: str) -> None:
        for value in values:
            if value.name == name:
                value.name = name + HALF
                value.type.tensor_type.elem_type = TensorProto.FLOAT16

    casts = []
    for name in skips:
        retype(encode.graph.output, name)
        encode.graph.node.append(
            helper.make_node("Cast", [name], [name + HALF], to=TensorProto.FLOAT16)
        )
        retype(decode.graph.input, name)
        casts.append(helper.make_node("Cast", [name + HALF], [name], to=TensorProto.FLOAT))
    nodes = [*casts, *decode.graph.node]
    del decode.graph.node[:]
    decode.graph.node.extend(nodes)
