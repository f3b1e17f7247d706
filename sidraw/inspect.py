"""What sidraw sees in a raw file: the library function behind ``sidraw info``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .calibrate import profile_for
from .exposure import AUTO_TARGET_MEAN, DEFAULT_MAX_RATIO, choose_ratio
from .mosaic import normalise_packed, pack
from .pipeline import estimate_file_noise, noise_report
from .raw import open_raw


def _phase(pattern: str) -> str:
    return pattern if len(pattern) == 4 else f"X-Trans {pattern[:6]}/{pattern[6:12]}/…"


def describe_file(
    path: str | os.PathLike[str], max_ratio: float = DEFAULT_MAX_RATIO
) -> dict[str, Any]:
    """Describe a raw file: camera, CFA, levels, exposure and the ratio ``auto`` would choose.

    Returns:
        A JSON-serialisable dictionary (the output of ``sidraw info --json``).

    Raises:
        sidraw.SidrawError: the file cannot be used (the same checks as ``convert``).
    """
    with open_raw(path) as raw:
        info = raw.info
        packed = normalise_packed(
            pack(raw.mosaic, info.layout), info.layout, info.black, info.white
        )
        decision = choose_ratio(packed, exposure_time=info.exif.exposure_time, max_ratio=max_ratio)
        clipped = float(np.mean(packed >= 0.999))
        # The noise exactly as convert tells a noise-conditioned model.
        checked = estimate_file_noise(raw)
        noise = {
            **noise_report(checked, raw),
            "blocks": checked.estimate.blocks,
            "method": "Poisson-Gaussian fit of 2x2 diagonal details in flat patches",
        }
    exif = info.exif
    black = sorted({float(v) for v in info.black.ravel()})
    return {
        "file": os.fspath(path),
        "format": info.format,
        "camera": {"make": exif.make, "model": exif.model, "lens": exif.lens_model},
        "cfa": {
            "kind": info.layout.kind,
            "pattern": info.cfa_pattern,
            "phase": _phase(info.cfa_pattern),
            "packed_channels": list(info.layout.channel_colors),
            "packing_offset": list(info.layout.offset),
        },
        "size": {"width": info.width, "height": info.height},
        "levels": {"black": black, "white": info.white},
        "exposure": {
            "exposure_time": exif.exposure_time,
            "f_number": exif.f_number,
            "iso": exif.iso,
            "focal_length": exif.focal_length,
            "datetime_original": exif.datetime_original,
            "orientation": exif.orientation,
        },
        "white_balance": {"multipliers": [round(v, 4) for v in info.wb_multipliers]},
        "clipped_fraction": round(clipped, 6),
        "noise": noise,
        "profile": profile_for(info),
        "auto_ratio": {
            "ratio": round(decision.ratio, 2),
            "unclamped": round(decision.unclamped, 2),
            "trimmed_mean": decision.statistic,
            "target_mean": AUTO_TARGET_MEAN,
            "max_ratio": max_ratio,
            "exif_exposure_time": exif.exposure_time,
            "equivalent_exposure": decision.equivalent_exposure,
            "why": decision.describe(),
            "notes": list(decision.notes),
        },
    }
