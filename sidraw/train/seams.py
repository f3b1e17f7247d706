"""The frame on which the default tile overlap of an exported model is measured.

Random squares (what :func:`sidraw.tiling.tiling_error` uses by default) are far from what a
trained network has seen, and it answers them with context from much further away than on any
photograph; a dead-leaves scene (sharp edges, flat saturated colours, as in training) darkened
x300 is a realistic worst case instead.
"""

from __future__ import annotations

import numpy as np

from .data import dead_leaves
from .noise import a7s2_params
from .pairs import make_pair

#: Edge of the dead-leaves scene in photosites (Bayer; 1.5 times that for X-Trans, whose blocks
#: are 3 photosites), its ratio and A7S2 gain (DN/e-).
OVERLAP_SCENE = 1600
OVERLAP_RATIO, OVERLAP_K = 300.0, 3.0
#: Largest seam error allowed: max |tiled - whole| over the maximum of the output (about half
#: an 8-bit step of the linear output).
OVERLAP_TOLERANCE = 2e-3


def overlap_frame(cfa: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """((h, w, C) float32 network input, (1, 2) float32 noise vector) of the test frame."""
    rng = np.random.default_rng(seed)
    size = OVERLAP_SCENE if cfa == "bayer" else OVERLAP_SCENE * 3 // 2
    pair = make_pair(
        dead_leaves(size, rng), cfa, rng, ratio=OVERLAP_RATIO, noise=a7s2_params(OVERLAP_K),
        exposure=1.0,
    )
    return pair.noisy, pair.noise_vector()[None]
