"""Cut a U-Net's ONNX graph into the three stages of staged inference (:mod:`sidraw.staged`).

A U-Net at split level ``L`` becomes:

- ``encode``: the network input (and noise vector) to the output of its ``L``-th max-pool, the
  features entering the deep levels, at ``1/2**L`` of the input's size;
- ``deep``: those features to the input of the decoder's ``L``-th transposed convolution counted
  from the full-resolution end, the deep levels' answer at the same ``1/2**L`` size;
- ``decode``: the network input, noise vector and that answer to the network output. It repeats
  the ``L`` full-resolution encoder levels, whose skip connections it needs: computing them
  twice costs less than holding them for a whole frame.

The stages are cut by the graph's structure (max-pool and transposed-convolution nodes in
topological order), so any export of :class:`sidraw.train.unet.UNet` qualifies, whatever its
tensor names. Needs the ``onnx`` package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetStages:
    """Serialised ONNX models of the three stages and the names that join them.

    Attributes:
        encode, deep, decode: the stage graphs (ONNX bytes).
        features: the tensor ``encode`` outputs and ``deep`` reads.
        answer: the tensor ``deep`` outputs and ``decode`` reads.
        level: the split level ``L``: ``features`` and ``answer`` are ``2**L`` times smaller
            than the input along each axis.
    """

    encode: bytes
    deep: bytes
    decode: bytes
    features: str
    answer: str
    level: int


def split_unet(model: bytes, level: int, inputs: list[str], output: str) -> UNetStages:
    """Cut a serialised U-Net into :class:`UNetStages`.

    Args:
        model: the ONNX model (bytes), a U-Net with as many max-pools as transposed convolutions.
        level: the split level, at least 1 and less than the number of max-pools.
        inputs: the graph inputs the full-resolution levels read (the image, the noise vector).
        output: the graph output.

    Raises:
        ValueError: the graph is not shaped like a U-Net, or ``level`` is out of its range.
    """
    import onnx
    from onnx.utils import Extractor

    # The extractor reads the types of the tensors it cuts at from the graph's value_info.
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    ups = [n for n in proto.graph.node if n.op_type == "ConvTranspose"]
    if not pools or len(pools) != len(ups):
        raise ValueError(
            f"not a U-Net graph: {len(pools)} max-pools, {len(ups)} transposed convolutions"
        )
    if not 1 <= level < len(pools):
        raise ValueError(f"split level {level} outside 1..{len(pools) - 1}")
    features = pools[level - 1].output[0]
    answer = ups[len(ups) - level].input[0]
    extractor = Extractor(proto)

    def cut(ins: list[str], outs: list[str]) -> bytes:
        return extractor.extract_model(ins, outs).SerializeToString()

    return UNetStages(
        encode=cut(inputs, [features]),
        deep=cut([features], [answer]),
        decode=cut([*inputs, answer], [output]),
        features=features,
        answer=answer,
        level=level,
    )
