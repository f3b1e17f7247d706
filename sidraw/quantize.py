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
from .model import file_sha256, load_card
from .mosaic import layout_from_letters, normalise_packed, pack
from .sample import SensorNoise, expose, mosaic_from_rgb, pattern_letters, synthetic_scene


def calibration_batches(
    cfa: str, count: int = 24, size: int = 256, seed: int = 0
) -> Iterator[np.ndarray]:
    """Network inputs for calibration: (1, C, size, size) float32 packed, amplified patches."""
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
        x = amplify(packed, ratio)[:size, :size]
        yield np.ascontiguousarray(x.transpose(2, 0, 1)[None])


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
) -> Path:
    """Write an INT8 copy of a model and register it in the model card as ``variants.int8``.

    Returns:
        The path of the INT8 ONNX file.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = load_card(card_path)
    out = Path(out_path) if out_path else card.path.with_name(card.path.stem + ".int8.onnx")
    batches = [{card.input_name: b} for b in calibration_batches(card.cfa, count=count)]
    prepared = out.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(card.path), str(prepared), skip_symbolic_shape=True)
        quantize_onnx(prepared, out, batches)
    finally:
        prepared.unlink(missing_ok=True)
    data = json.loads(Path(card_path).read_text())
    data.setdefault("variants", {})["int8"] = {"file": out.name, "sha256": file_sha256(out)}
    Path(card_path).write_text(json.dumps(data, indent=2) + "\n")
    return out
