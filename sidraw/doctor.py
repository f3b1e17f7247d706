"""``sidraw doctor``: what sidraw runs on, and whether its models are intact."""

from __future__ import annotations

import platform
from typing import Any

from . import __version__
from .model import bundled_weights_dir, file_sha256, find_cards, physical_cores


def report() -> dict[str, Any]:
    """Versions, execution providers and bundled models (with their sha256 checked).

    Returns:
        A JSON-serialisable dictionary; ``ok`` is False when a bundled model is missing or damaged.
    """
    import onnxruntime as ort
    import rawpy

    providers = list(ort.get_available_providers())
    gpu = "CUDAExecutionProvider" in providers
    models = []
    ok = True
    for card in find_cards():
        entry: dict[str, Any] = {"name": card.name, "cfa": card.cfa, "file": str(card.path)}
        if not card.path.is_file():
            entry["status"] = "missing"
            ok = False
        else:
            actual = file_sha256(card.path)
            entry["sha256"] = actual
            entry["status"] = "ok" if actual == card.sha256 else "sha256 mismatch"
            ok = ok and entry["status"] == "ok"
        models.append(entry)
    kinds = {m["cfa"] for m in models}
    if not {"bayer", "xtrans"} <= kinds:
        ok = False
    return {
        "ok": ok,
        "sidraw": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraw": ".".join(str(v) for v in rawpy.libraw_version),
        "rawpy": rawpy.__version__,
        "onnxruntime": ort.__version__,
        "providers": providers,
        "device": "cuda" if gpu else "cpu",
        "cpu_cores": physical_cores(),
        "weights_dir": str(bundled_weights_dir()),
        "models": models,
    }
