"""Measure and record how a model runs staged (:mod:`sidraw.staged`) in its model card.

``python -m sidraw.train.stage_card CARD.json [...]`` cuts each model at level
:data:`STAGED_LEVEL`, measures the context its full-resolution tiles need on the dead-leaves x300
frame that tile overlaps are measured on (:mod:`sidraw.train.seams`), and writes the ``staged``
entry into the JSON card and its Markdown twin. Export does the same for every new model.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..model import Network, load_card
from ..staged import CONTEXT_TOLERANCE, DEEP_TILE, measure_context
from .cards import markdown_card
from .seams import overlap_frame

#: The level at which the bundled networks are cut: on 2 cores it took the least time of levels
#: 1 to 3 on a 12 MP Bayer frame, and needs a context of one alignment step.
STAGED_LEVEL = 2
#: Side of the full-resolution tiles: on a 12 MP Bayer frame, one thread, the three stages took
#: 7.9 s in tiles of 512 and 9.2 s in tiles of 960 (the decoder slows down on larger tiles).
STAGED_TILE = 512
#: Packed pixels of the measuring frame's sides (a crop of the seams frame, for speed).
MEASURE_SIZE = (352, 416)


def measure_staged(card_path: Path, level: int = STAGED_LEVEL) -> dict[str, object]:
    """The card's ``staged`` entry for the model of ``card_path`` cut at ``level``.

    Raises:
        ValueError: the network cannot be cut there, or no context reproduces it.
    """
    card = replace(load_card(card_path), staged_level=level, staged_context=0)
    network = Network(card, "cpu")
    image, noise = overlap_frame(card.cfa)
    image = image[: MEASURE_SIZE[0], : MEASURE_SIZE[1]]
    stages = network.stages(noise, half_skips=False)  # the context alone, without float16 rounding
    if stages is None:
        raise ValueError("the network cannot be cut (INT8, or no onnx package)")
    context = measure_context(
        lambda batch: network(batch, noise=noise), stages, image, multiple=card.downsample
    )
    return {
        "level": level,
        "context": context,
        "tile": STAGED_TILE,
        "deep_tile": DEEP_TILE,
        "tolerance": CONTEXT_TOLERANCE,
    }


def stage_card(card_path: Path, level: int = STAGED_LEVEL) -> dict[str, object]:
    """Measure (:func:`measure_staged`) and write the ``staged`` entry into a JSON card and
    its Markdown twin; returns the entry."""
    staged = measure_staged(card_path, level)
    data = json.loads(card_path.read_text(encoding="utf-8"))
    data["staged"] = staged
    card_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    card_path.with_suffix(".md").write_text(markdown_card(data), encoding="utf-8")
    return staged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cards", nargs="+", type=Path, help="JSON model cards")
    ap.add_argument("--level", type=int, default=STAGED_LEVEL)
    a = ap.parse_args(argv)
    for path in a.cards:
        staged = stage_card(path, a.level)
        print(f"{path}: level {staged['level']}, context {staged['context']}")


if __name__ == "__main__":
    main()
