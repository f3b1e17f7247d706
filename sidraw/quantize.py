"""INT8 static quantisation of a model, calibrated on synthetic dark patches.

The calibration data are in exactly the domain ``convert`` feeds the network: synthetic scenes
(:mod:`sidraw.sample`) mosaicked, darkened with Poisson-Gaussian noise, packed, normalised and
amplified. Weights are quantised per output channel, activations per tensor (QDQ format), which
onnxruntime runs with VNNI/AMX integer kernels where the CPU has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from .exposure import amplify
from .model import ModelCard, file_sha256, load_card
from .mosaic import layout_from_letters, normalise_packed, pack
from .noise_estimate import estimate_noise, noise_vector
from .sample import SensorNoise, expose, mosaic_from_rgb, pattern_letters, synthetic_scene


def _calibration_frames(
    cfa: str, count: int, size: int, seed: int
) -> Iterator[tuple[np.ndarray, float]]:
    """((size, size, C) float32 packed mosaic normalised to 0..1 above black, not amplified;
    its exposure ratio) of synthetic dark scenes, as ``convert`` reads them."""
    rng = np.random.default_rng(seed)
    letters = pattern_letters("xtrans" if cfa == "xtrans" else "RGGB")
    layout = layout_from_letters(letters)
    block = layout.block
    for i in range(count):
        ratio = float(rng.choice([50, 100, 200, 300]))
        sensor = SensorNoise(
            k=float(np.exp(rng.uniform(np.log(0.2), np.log(6.0)))),
            read_sigma=float(rng.uniform(2, 12)),
        )
        scene = synthetic_scene(size * block, size * block, seed=seed * 1000 + i)
        scene *= rng.uniform(0.2, 1.5)
        mosaic = expose(mosaic_from_rgb(scene, letters), ratio, sensor, rng)
        packed = normalise_packed(
            pack(mosaic, layout),
            layout,
            np.full(letters.shape, sensor.black, np.float32),
            sensor.white,
        )
        yield packed[:size, :size], ratio


def calibration_batches(
    cfa: str, count: int = 24, size: int = 256, seed: int = 0
) -> Iterator[np.ndarray]:
    """Network inputs for calibration: (1, C, size, size) float32 packed, amplified patches."""
    for packed, ratio in _calibration_frames(cfa, count, size, seed):
        x = amplify(packed, ratio)
        yield np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def calibration_feeds(
    card: ModelCard, count: int = 24, size: int = 256, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Every input of ``card``'s network for calibration (input name -> array).

    The packed input as :func:`calibration_batches` makes it; for noise-conditioned models also
    the (1, 2) float32 noise vector, fitted on the patch itself as ``convert`` fits the frame
    (:func:`sidraw.noise_estimate.estimate_noise`), so the calibration sees what convert feeds.
    """
    feeds = []
    for packed, ratio in _calibration_frames(card.cfa, count, size, seed):
        x = np.ascontiguousarray(amplify(packed, ratio).transpose(2, 0, 1)[None])
        feed = {card.input_name: x}
        if card.noise_input is not None:
            feed[card.noise_input] = noise_vector(estimate_noise(packed), ratio)
        feeds.append(feed)
    return feeds


def name_nodes(path: str | os.PathLike[str]) -> None:
    """Give every unnamed node of an ONNX file a unique name (``<op>_<index>``), in place: nodes
    are left out of quantisation by name."""
    import onnx

    model = onnx.load(os.fspath(path))
    taken = {n.name for n in model.graph.node}
    changed = False
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name, changed = name, True
            taken.add(name)
    if changed:
        onnx.save(model, os.fspath(path))


def full_resolution_nodes(path: str | os.PathLike[str], probe: int = 256) -> list[str]:
    """Names of the nodes of an ONNX network whose output is not a downsampled feature map.

    Those are the first and last level of a U-Net (the output convolution, the noise map and
    the residual sum included) and any non-image tensor: quantised, they put a uint8 step of the
    output's whole range (about 48 dB) on smooth, clean frames. Found by shape inference with
    the image input fixed at ``probe`` x ``probe``: a node is kept in float unless its first
    output is (N, C, h, w) with h and w below ``probe`` and above 1 (broadcast coefficients,
    such as the noise vector reshaped to (N, 1, 1, 1), are no feature maps).
    """
    import onnx

    model = onnx.load(os.fspath(path))
    graph = model.graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed = (
            [1, dims[1].dim_value, probe, probe]
            if len(dims) == 4
            else [1] + [d.dim_value for d in dims[1:]]
        )
        for d, v in zip(dims, fixed, strict=True):
            d.ClearField("dim_param")
            d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.value_info, *inferred.output]
    }
    unnamed = [n for n in graph.node if not n.name]
    if unnamed:
        raise ValueError(f"{path}: {len(unnamed)} unnamed nodes cannot be excluded")

    def downsampled(node: onnx.NodeProto) -> bool:
        shape = shapes.get(node.output[0], []) if node.output else []
        return len(shape) == 4 and all(1 < d < probe for d in shape[2:])

    return [n.name for n in graph.node if not downsampled(n)]


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    batches: list[dict[str, np.ndarray]],
    overrides: dict[str, list[dict[str, object]]] | None = None,
    exclude: list[str] | None = None,
    percentile: float | None = None,
) -> None:
    """Write an INT8 QDQ copy of an ONNX model: per-channel int8 weights, uint8 activations,
    MinMax calibration on ``batches`` (input name -> array), or ranges that hold all but the
    rarest values with ``percentile``.

    The one place that sets sidraw's quantisation settings (the benchmark and the
    quantisation-aware training, :mod:`sidraw.train.qat`, use it too).

    Args:
        overrides: optional onnxruntime ``TensorQuantOverrides`` (tensor name -> ``[{"scale": ...,
            "zero_point": ...}]``): activation ranges fixed by quantisation-aware training
            instead of calibrated. Tensors not named are calibrated on ``batches`` as before.
        exclude: optional names of nodes left in float (e.g. the 1x1 output convolution).
        percentile: each activation's range holds this percentage of its calibration values
            (onnxruntime's ``Percentile`` calibration, symmetric tails) instead of all of them.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    extra: dict[str, object] = {}
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    if percentile is not None:
        extra["CalibPercentile"] = percentile

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        os.fspath(src),
        os.fspath(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=(
            CalibrationMethod.MinMax if percentile is None else CalibrationMethod.Percentile
        ),
        nodes_to_exclude=exclude,
        extra_options=extra or None,
    )


#: Which layers an INT8 variant quantises (``variants.int8.int8_layers`` in the card):
#: ``deep``, only the deep stage of staged inference (the levels below the card's
#: ``staged.level``), which then runs staged with float encode and decode stages;
#: ``downsampled``, every layer but the full-resolution ones; ``all``.
Int8Layers = Literal["deep", "downsampled", "all"]
#: Percentage of each activation's calibration values that the ``deep`` variant's ranges hold.
#: Measured on version 3 of the Bayer model (32 validation photos a set, worst sRGB loss against
#: float32): MinMax ranges cost 0.10 to 0.22 dB (K = 0.1, 0.75, 3 at x100), 99.99 % 0.02 dB
#: there but 0.14 dB on the clean frames at ratio 1, 99.9 % 0.04 dB on those; 99.5 % at most
#: 0.014 dB on the clean frames, K = 0.1 x300, K = 0.75 x100 and K = 6 x300, where tighter
#: ranges clip the noisiest frames' activations (99 %: 0.03 dB at K = 6 x300, 98 %: 0.10 dB).
DEEP_PERCENTILE = 99.5


def quantize(
    card_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    count: int = 24,
    layers: Int8Layers = "deep",
) -> Path:
    """Write an INT8 copy of a model and register it in the model card as ``variants.int8``.

    Args:
        count: calibration patches (:func:`calibration_feeds`, 256 x 256 packed).
        layers: what to quantise (:data:`Int8Layers`). ``deep`` (the default) needs a card
            with a ``staged`` entry and calibrates to :data:`DEEP_PERCENTILE`; the others use
            MinMax ranges. The full-resolution layers are about a quarter of a U-Net's work and
            nearly all of its INT8 loss; ``deep`` keeps the next level in float too.

    Returns:
        The path of the INT8 ONNX file.

    Raises:
        ValueError: ``deep`` for a card without a ``staged`` entry, or a graph that cannot be
            cut there.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = load_card(card_path)
    if layers == "deep" and not card.staged_level:
        raise ValueError(f"{card.path.name}: no staged level, so no deep stage to quantise")
    out = Path(out_path) if out_path else card.path.with_name(card.path.stem + ".int8.onnx")
    feeds = calibration_feeds(card, count=count)
    prepared = out.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(card.path), str(prepared), skip_symbolic_shape=True)
        name_nodes(prepared)
        exclude = _float_nodes(prepared, layers, card.staged_level)
        percentile = DEEP_PERCENTILE if layers == "deep" else None
        quantize_onnx(prepared, out, feeds, exclude=exclude, percentile=percentile)
    finally:
        prepared.unlink(missing_ok=True)
    ranges = f"{percentile} % ranges" if percentile is not None else "MinMax"
    data = json.loads(Path(card_path).read_text())
    data.setdefault("variants", {})["int8"] = {
        "file": out.name,
        "sha256": file_sha256(out),
        "int8_layers": layers,
        "float_layers": _FLOAT_LAYERS[layers].format(level=card.staged_level),
        "calibration": f"{count} synthetic dark patches of 256 x 256 packed, {ranges}",
    }
    Path(card_path).write_text(json.dumps(data, indent=2) + "\n")
    return out


_FLOAT_LAYERS = {
    "deep": "levels 1 to {level} (the encode and decode stages of staged inference)",
    "downsampled": "full resolution",
    "all": "none",
}


def _float_nodes(path: Path, layers: Int8Layers, level: int) -> list[str] | None:
    """Names of the nodes of a prepared (named) ONNX file that ``layers`` leaves in float."""
    if layers == "all":
        return None
    if layers == "downsampled":
        return full_resolution_nodes(path)
    import onnx

    from .unet_split import deep_nodes

    data = Path(path).read_bytes()
    deep = set(deep_nodes(data, level))
    return [n.name for n in onnx.load_from_string(data).graph.node if n.name not in deep]


def main(argv: list[str] | None = None) -> None:
    """``python -m sidraw.quantize CARD``: write and register the INT8 variant of a model."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("card", help="the model card (JSON) beside the ONNX file")
    ap.add_argument("--count", type=int, default=24, help="calibration patches")
    ap.add_argument(
        "--layers", choices=["deep", "downsampled", "all"], default="deep",
        help="deep: the deep stage of staged inference only (default); downsampled: all but "
        "the full-resolution layers; all",
    )
    a = ap.parse_args(argv)
    out = quantize(a.card, count=a.count, layers=a.layers)
    print(out)


if __name__ == "__main__":
    main()
