"""Reading ONNX initializers back into a PyTorch model (warm starts from shipped weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def onnx_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file by name (float32 arrays)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def load_checkpoint_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Like :func:`load_onnx_weights`, from a training checkpoint (``checkpoint.pt``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    source = ckpt.get("ema") or ckpt["model"]  # the averaged weights, when the run kept them
    state = model.state_dict()
    loaded, skipped = [], []
    with torch.no_grad():
        for name, tensor in state.items():
            src = source.get(name)
            if src is not None and tuple(src.shape) == tuple(tensor.shape):
                tensor.copy_(src)
                loaded.append(name)
            else:
                skipped.append(name)
    return loaded, skipped


def load_onnx_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy ONNX initializers into ``model`` where names and shapes match.

    The export keeps the state_dict names, so a model exported by :mod:`sidraw.train.export`
    loads completely. Tensors whose shapes differ (e.g. the first and last layers when warm-starting
    an X-Trans network from the Bayer one) are left at their initial values.

    Returns:
        (loaded names, state_dict names left as they were).
    """
    inits = onnx_initializers(path)
    state = model.state_dict()
    loaded, skipped = [], []
    with torch.no_grad():
        for name, tensor in state.items():
            arr = inits.get(name)
            if arr is not None and tuple(arr.shape) == tuple(tensor.shape):
                tensor.copy_(torch.from_numpy(np.array(arr, dtype=np.float32)))
                loaded.append(name)
            else:
                skipped.append(name)
    if not loaded:
        raise ValueError(f"{path}: no initializer matches the model's parameters")
    return loaded, skipped
