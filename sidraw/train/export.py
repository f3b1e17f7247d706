"""ONNX export of a trained checkpoint, parity check, and the model cards.

``python -m sidraw.train.export --checkpoint runs/bayer/checkpoint.pt --name sidraw-bayer`` writes
``weights/sidraw-bayer.onnx`` (+ ``.json`` and ``.md`` cards). Weights are stored as float16
initializers followed by Cast nodes (half the file size; onnxruntime folds the casts when it loads
the model, so inference runs in float32); the PyTorch model is rounded to the same float16 values
before the parity check, so the file is exactly the model that was checked and evaluated.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .loop import TrainConfig, load_checkpoint
from .unet import DOWNSAMPLE, UNet

OPSET = 17
PARITY_TOL = 1e-4


def model_from_checkpoint(path: str | Path) -> tuple[UNet, TrainConfig, dict[str, object]]:
    """(model in eval mode, its training config, the checkpoint's step/elapsed) of a checkpoint."""
    ckpt = load_checkpoint(Path(path))
    cfg = TrainConfig(**ckpt["config"])  # type: ignore[arg-type]
    model = UNet(cfg.unet())
    # The averaged weights, when the run kept them, are the model that was validated.
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])  # type: ignore[arg-type]
    model.eval()
    info = {"step": int(ckpt["step"]), "elapsed_s": float(ckpt["elapsed"])}  # type: ignore[arg-type]
    return model, cfg, info


def round_to_float16(model: torch.nn.Module) -> None:
    """Round every parameter to the nearest float16 value (kept as float32), in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def _to_float16_initializers(onnx_bytes: bytes) -> bytes:
    """Store float32 initializers as float16, each followed by a Cast back to float32.

    Initializer names stay those of the PyTorch state_dict (warm starts read them back by name).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        f32 = init.name + "__f32"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == init.name:
                    node.input[i] = f32
        casts.append(helper.make_node("Cast", [init.name], [f32], to=TensorProto.FLOAT))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    return model.SerializeToString()


NOISE_INPUT = "noise"


def _export(model: UNet, dummy: torch.Tensor, buf: io.BytesIO) -> None:
    inputs: tuple[torch.Tensor, ...] = (dummy,)
    names = ["input"]
    axes = {"input": {0: "N", 2: "h", 3: "w"}, "output": {0: "N", 2: "h", 3: "w"}}
    if model.config.noise_map:
        inputs += (torch.full((dummy.shape[0], 2), 1e-3),)
        names.append(NOISE_INPUT)
        axes[NOISE_INPUT] = {0: "N"}
    torch.onnx.export(
        model,
        inputs,
        buf,
        input_names=names,
        output_names=["output"],
        dynamic_axes=axes,
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )


def parity_inputs(model: UNet, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for checking an export: ``input`` (1, C, 64, 96) in -1..1 and, for a
    noise-conditioned model, a ``noise`` vector of a mid-range capture."""
    g = torch.Generator().manual_seed(seed)
    feeds = {"input": (torch.rand(1, model.config.channels, 64, 96, generator=g) * 2 - 1).numpy()}
    if model.config.noise_map:
        feeds[NOISE_INPUT] = np.array([[0.02, 0.004]], dtype=np.float32)
    return feeds


def export_onnx(model: UNet, path: str | Path, float16_weights: bool = True) -> float:
    """Write ``model`` as ONNX (input ``input``, output ``output``, dynamic N, h, w).

    Returns:
        max |onnxruntime - PyTorch| on a random (1, C, 64, 96) input; raises if above 1e-4.
    """
    import onnxruntime as ort

    model = model.eval().float()
    if float16_weights:
        round_to_float16(model)
    c = model.config.channels
    dummy = torch.zeros(1, c, 2 * DOWNSAMPLE, 2 * DOWNSAMPLE)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but gives plain, stable Conv graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(model, dummy, buf)
    data = buf.getvalue()
    if float16_weights:
        data = _to_float16_initializers(data)
    Path(path).write_bytes(data)
    feeds = parity_inputs(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["output"], feeds)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    diff = float(np.max(np.abs(got - ref)))
    if diff > PARITY_TOL:
        raise RuntimeError(f"ONNX output differs from PyTorch by {diff:.2e} (> {PARITY_TOL})")
    return diff


def measure_tile_overlap(path: str | Path, cfa: str) -> int | None:
    """Default tile overlap (packed pixels) at which tiled inference matches whole-image
    inference within ``OVERLAP_TOLERANCE`` on :func:`sidraw.train.seams.overlap_frame` (an x300
    capture, where the network looks furthest), measured with the inference code's
    :func:`sidraw.tiling.measure_overlap`."""
    import onnxruntime as ort

    try:
        from ..tiling import measure_overlap
    except ImportError:  # inference side not present
        return None
    from .seams import OVERLAP_TOLERANCE, overlap_frame

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    image, noise = overlap_frame(cfa)

    def fn(batch: np.ndarray) -> np.ndarray:
        feeds = {"input": batch.astype(np.float32)}
        if NOISE_INPUT in names:
            feeds[NOISE_INPUT] = noise
        return sess.run(["output"], feeds)[0]

    return int(
        measure_overlap(fn, image.shape[2], tolerance=OVERLAP_TOLERANCE, image=image)
    )


#: The default tile is at least this many overlaps long, so that at most about a third of the
#: pixels the network computes are computed twice (a 12 MP Bayer frame: 1.33 times its pixels at
#: a 96 overlap in 768 tiles, 1.52 in 512 tiles).
TILE_PER_OVERLAP = 6


def default_tile(overlap: int, multiple: int = 16) -> int:
    """The card's default tile for a measured overlap: sidraw's 512, or longer for a larger
    overlap (memory grows with the tile's area)."""
    from ..tiling import DEFAULT_TILE

    return max(DEFAULT_TILE, -(-TILE_PER_OVERLAP * overlap // multiple) * multiple)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    from .cards import write_cards

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--name", required=True, help="e.g. sidraw-bayer")
    ap.add_argument("--weights", default="weights", help="output folder")
    ap.add_argument("--version", default="1")
    ap.add_argument("--eval", default=None, help="evaluation JSON from sidraw.train.evaluate")
    ap.add_argument("--speed", nargs="*", default=[], help="JSON-lines files of width speeds")
    ap.add_argument("--history", default=None, help="history.jsonl of the run(s)")
    ap.add_argument(
        "--mean-block", type=int, default=0,
        help="block edge of the output's mean correction (sidraw.mean_correction; 0: none)",
    )
    ap.add_argument(
        "--guard", type=float, default=0.0,
        help="residual guard of the mean correction (sidraw.mean_correction; 0: none)",
    )
    ap.add_argument("--notes", default=None, help="free text on how the run went (card)")
    ap.add_argument(
        "--previous",
        default=None,
        help="JSON card of the model the run was warm-started from (keeps its training runs); "
        "read before the new card replaces it",
    )
    ap.add_argument(
        "--speed-from-previous",
        action="store_true",
        help="copy the widths-tried speed table from --previous instead of --speed files",
    )
    a = ap.parse_args(argv)
    previous = json.loads(Path(a.previous).read_text()) if a.previous else None
    model, cfg, info = model_from_checkpoint(a.checkpoint)
    out = Path(a.weights)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{a.name}.onnx"
    diff = export_onnx(model, onnx_path)
    overlap = measure_tile_overlap(onnx_path, cfg.cfa)
    validation = json.loads(Path(a.eval).read_text()) if a.eval else None
    speeds = []
    for s in a.speed:
        speeds += [json.loads(line) for line in Path(s).read_text().splitlines() if line.strip()]
    if a.speed_from_previous and previous:
        speeds = previous["architecture"]["speed_cpu"]["widths_tried"]
    write_cards(
        out, a.name, a.version, onnx_path, model, cfg, info, diff,
        validation=validation, speeds=speeds, history=a.history, overlap=overlap,
        notes=a.notes, previous=previous, mean_block=a.mean_block, guard=a.guard,
        tile=default_tile(overlap) if overlap is not None else None,
    )
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB), parity {diff:.1e}")
    if overlap is not None:  # the inference side is present: record how the model runs staged
        from .stage_card import stage_card

        staged = stage_card(out / f"{a.name}.json")
        print(f"staged at level {staged['level']}, context {staged['context']}")


if __name__ == "__main__":
    main()
