"""A disk cache of cut networks, so that staged inference needs the ``onnx`` package (about
0.7 s to import) only the first time a model is cut on a machine.

Each cut (model sha256, split level, float16 skip connections or not) is a folder of the three
stage graphs and a ``stages.json`` with their tensor names and sha256s, checked when read. The
cache lives in ``$SIDRAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/sidraw``, else ``~/.cache/sidraw``.
A cache that cannot be read or written is skipped: the network is cut in memory instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .unet_split import UNetStages, split_unet

#: Bumped when the cut changes, so that older cached graphs are not used.
CUT_VERSION = 1
_PARTS = ("encode", "deep", "decode")


def cache_dir() -> Path:
    """The folder of sidraw's caches (not created here)."""
    if os.environ.get("SIDRAW_CACHE_DIR"):
        return Path(os.environ["SIDRAW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sidraw"


def cached_split(
    model: Callable[[], bytes],
    sha256: str,
    level: int,
    inputs: list[str],
    output: str,
    half_skips: bool,
) -> UNetStages:
    """:func:`sidraw.unet_split.split_unet` of the model whose sha256 is ``sha256``, read from
    the cache when it holds that cut, else made from ``model()`` (its bytes, read only then) and
    stored there."""
    name = f"{sha256}-L{level}-{'f16' if half_skips else 'f32'}-v{CUT_VERSION}"
    folder = cache_dir() / "stages" / name
    found = _read(folder, inputs, output)
    if found is not None:
        return found
    stages = split_unet(model(), level, inputs, output, half_skips)
    # A read-only or full disk: the cut stays in memory and the next run cuts again.
    with contextlib.suppress(OSError):
        _write(folder, stages, inputs, output)
    return stages


def _read(folder: Path, inputs: list[str], output: str) -> UNetStages | None:
    try:
        meta = json.loads((folder / "stages.json").read_text(encoding="utf-8"))
        if meta["inputs"] != inputs or meta["output"] != output:
            return None
        graphs = {}
        for part in _PARTS:
            data = (folder / f"{part}.onnx").read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["sha256"][part]:
                return None
            graphs[part] = data
        return UNetStages(
            **graphs,
            features=str(meta["features"]),
            skips=tuple(str(s) for s in meta["skips"]),
            answer=str(meta["answer"]),
            level=int(meta["level"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(folder: Path, stages: UNetStages, inputs: list[str], output: str) -> None:
    """Write the cut into a new folder beside ``folder``, then rename it into place (a reader
    never sees half of one; of two writers, one wins)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        graphs = {part: getattr(stages, part) for part in _PARTS}
        for part, data in graphs.items():
            (tmp / f"{part}.onnx").write_bytes(data)
        meta = {
            "inputs": inputs,
            "output": output,
            "features": stages.features,
            "skips": list(stages.skips),
            "answer": stages.answer,
            "level": stages.level,
            "sha256": {part: hashlib.sha256(data).hexdigest() for part, data in graphs.items()},
        }
        (tmp / "stages.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cut, found unreadable
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
