"""``sidraw doctor``: what sidraw runs on, and whether its models are intact."""

from __future__ import annotations

import platform
from pathlib import Path
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
        entry["status"], actual = _file_status(card.path, card.sha256)
        if actual:
            entry["sha256"] = actual
        # Reduced-precision copies that --precision auto may run instead (e.g. INT8).
        variants = {
            kind: _file_status(card.path.parent / str(v.get("file")), str(v.get("sha256")))[0]
            for kind, v in card.variants.items()
        }
        if variants:
            entry["variants"] = variants
        ok = ok and entry["status"] == "ok" and all(v == "ok" for v in variants.values())
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


def _file_status(path: Path, sha256: str) -> tuple[str, str]:
    """(``ok``, ``missing`` or ``sha256 mismatch``; the file's sha256, empty when missing)."""
    if not path.is_file():
        return "missing", ""
    actual = file_sha256(path)
    return ("ok" if actual == sha256.lower() else "sha256 mismatch"), actual
