"""Shared fixtures: test models (random-weight U-Nets), synthetic DNGs, the shared raw files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from unet_onnx import write_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _stage_cache(tmp_path_factory: pytest.TempPathFactory):
    """Cut networks are cached in a folder of the test session's (never the user's cache);
    subprocesses inherit it through the environment."""
    import os

    old = os.environ.get("SIDRAW_CACHE_DIR")
    os.environ["SIDRAW_CACHE_DIR"] = str(tmp_path_factory.mktemp("sidraw-cache"))
    yield
    if old is None:
        os.environ.pop("SIDRAW_CACHE_DIR", None)
    else:
        os.environ["SIDRAW_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a Bayer and an X-Trans random-weight U-Net and their model cards.

    Their default overlap is measured like a real export does (``measure_overlap``).
    """
    from sidraw.model import Network, load_card
    from sidraw.tiling import measure_overlap

    folder = tmp_path_factory.mktemp("models")
    for cfa in ("bayer", "xtrans"):
        card_path = write_model(folder, cfa)
        card = load_card(card_path)
        net = Network(card, "cpu")
        data = json.loads(card_path.read_text())
        data["overlap"] = measure_overlap(net, len(card.channels))
        card_path.write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a Bayer random-weight U-Net small enough to build in a blink (default
    overlap, not measured) and no X-Trans model, so X-Trans files fail at model time."""
    folder = tmp_path_factory.mktemp("tiny-models")
    write_model(folder, "bayer", width=4)
    return folder


@pytest.fixture
def make_dng(tmp_path: Path):
    """Write a synthetic dark DNG: ``make_dng(name, pattern="RGGB", width=900, ...)``."""
    from sidraw.sample import write_sample

    def make(name: str = "dark.dng", folder: Path | None = None, **kwargs) -> Path:
        kwargs.setdefault("width", 900)
        kwargs.setdefault("height", 600)
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sample(path, **kwargs)
        return path

    return make


@pytest.fixture
def shared_raw() -> Path:
    folder = SHARED / "raw"
    if not folder.is_dir():
        pytest.skip("../shared/data/raw is not available")
    return folder


def tiff_pixels(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)
