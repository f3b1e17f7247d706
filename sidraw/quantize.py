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
) -> None:
    """Write an INT8 QDQ copy of an ONNX model: per-channel int8 weights, uint8 activations,
    MinMax calibration on ``batches`` (input name -> array).

    The one place that sets sidraw's quantisation settings (the benchmark and the
    quantisation-aware training, :mod:`sidraw.train.qat`, use it too).

    Args:
        overrides: optional onnxruntime ``TensorQuantOverrides`` (tensor name -> ``[{"scale": ...,
            "zero_point": ...}]``): activation ranges fixed by quantisation-aware training
            instead of calibrated. Tensors not named are calibrated on ``batches`` as before.
        exclude: optional names of nodes left in float (e.g. the 1x1 output convolution).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

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
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
        extra_options={"TensorQuantOverrides": overrides} if overrides else None,
    )


def quantize(
    card_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    count: int = 24,
    float_full_resolution: bool = True,
) -> Path:
    """Write an INT8 copy of a model and register it in the model card as ``variants.int8``.

    Args:
        count: calibration patches (:func:`calibration_feeds`, 256 x 256 packed).
        float_full_resolution: leave :func:`full_resolution_nodes` in float (the default):
            they are about a quarter of a U-Net's work and nearly all of its INT8 loss.

    Returns:
        The path of the INT8 ONNX file.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = load_card(card_path)
    out = Path(out_path) if out_path else card.path.with_name(card.path.stem + ".int8.onnx")
    feeds = calibration_feeds(card, count=count)
    prepared = out.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(card.path), str(prepared), skip_symbolic_shape=True)
        name_nodes(prepared)
        exclude = full_resolution_nodes(prepared) if float_full_resolution else None
        quantize_onnx(prepared, out, feeds, exclude=exclude)
    finally:
        prepared.unlink(missing_ok=True)
    data = json.loads(Path(card_path).read_text())
    data.setdefault("variants", {})["int8"] = {
        "file": out.name,
        "sha256": file_sha256(out),
        "float_layers": "full resolution" if float_full_resolution else "none",
        "calibration": f"{count} synthetic dark patches of 256 x 256 packed, MinMax",
    }
    Path(card_path).write_text(json.dumps(data, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m sidraw.quantize CARD``: write and register the INT8 variant of a model."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("card", help="the model card (JSON) beside the ONNX file")
    ap.add_argument("--count", type=int, default=24, help="calibration patches")
    ap.add_argument(
        "--all-layers", action="store_true", help="quantise the full-resolution layers too"
    )
    a = ap.parse_args(argv)
    out = quantize(a.card, count=a.count, float_full_resolution=not a.all_layers)
    print(out)


if __name__ == "__main__":
    main()
