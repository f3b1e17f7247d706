"""A small SID-layout tree of generated DNG pairs, for the pair, eval and fine-tuning tests.

Scenes are :func:`sidraw.sample.synthetic_scene` mosaics; each long exposure is the clean scene
exposed at ratio 1 (10 s in EXIF and in its name), each short the same scene ``ratio`` times darker
with fresh noise (10 s / ratio). Several shorts share one long. ``broken=True`` adds a scene whose
short is not a raw file, ``mismatched=True`` one whose short has another size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidraw.dng import DngMetadata, write_dng
from sidraw.sample import SensorNoise, expose, mosaic_from_rgb, pattern_letters, synthetic_scene

LONG_SECONDS = 10.0
SENSOR = SensorNoise(k=2.0, read_sigma=6.0, black=512, white=16383)


def _name(seconds: float) -> str:
    return f"{seconds:.4g}s"


def scene_mosaic(seed: int, width: int, height: int, pattern: str = "RGGB") -> np.ndarray:
    """(height, width) float32 clean mosaic of a scene, 1.0 = white at the long exposure."""
    scene = synthetic_scene(height, width, seed, lamp=False) * np.array([0.5, 1.0, 0.6])
    return np.clip(mosaic_from_rgb(scene.astype(np.float32), pattern_letters(pattern)), 0, 1)


def write_raw(
    path: Path, clean: np.ndarray, ratio: float, seed: int, pattern: str = "RGGB",
    model: str = "ILCE-7SM2", iso: int = 6400,
) -> None:
    """Expose ``clean`` ``ratio`` times darker (EXIF time 10 s / ratio) and write it as DNG."""
    raw = expose(clean, ratio, SENSOR, np.random.default_rng(seed))
    meta = DngMetadata(
        pattern=pattern_letters(pattern), black=SENSOR.black, white=SENSOR.white, make="Sony",
        model=model, exposure_time=LONG_SECONDS / ratio, f_number=2.8, iso=iso,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dng(path, raw, meta)


def write_pair_tree(
    root: Path,
    *,
    width: int = 128,
    height: int = 96,
    scenes: tuple[int, ...] = (10001, 10002),
    ratios: tuple[float, ...] = (100.0, 250.0, 300.0),
    first_seed: int = 0,
    broken: bool = True,
    mismatched: bool = True,
) -> list[tuple[Path, Path]]:
    """Write ``root/short`` and ``root/long`` (SID names), ``root/list.txt`` (SID list) and
    ``root/pairs.csv``; return the good (short, long) pairs."""
    good: list[tuple[Path, Path]] = []
    for i, scene in enumerate(scenes):
        clean = scene_mosaic(first_seed + i, width, height)
        long = root / "long" / f"{scene}_00_{_name(LONG_SECONDS)}.dng"
        write_raw(long, clean, 1.0, 1000 * (first_seed + i))
        for shot, ratio in enumerate(ratios):
            short = root / "short" / f"{scene}_{shot:02d}_{_name(LONG_SECONDS / ratio)}.dng"
            write_raw(short, clean, ratio, 1000 * (first_seed + i) + shot + 1)
            good.append((short, long))
    listed = list(good)
    if broken:
        clean = scene_mosaic(99, width, height)
        write_raw(root / "long" / f"20001_00_{_name(LONG_SECONDS)}.dng", clean, 1.0, 5)
        bad = root / "short" / "20001_00_0.1s.dng"
        bad.write_bytes(b"II*\x00" + b"\x00" * 200)
        listed.append((bad, root / "long" / f"20001_00_{_name(LONG_SECONDS)}.dng"))
    if mismatched:
        long = root / "long" / f"20002_00_{_name(LONG_SECONDS)}.dng"
        write_raw(long, scene_mosaic(98, width, height), 1.0, 6)
        short = root / "short" / "20002_00_0.1s.dng"
        write_raw(short, scene_mosaic(98, width + 8, height), 100.0, 7)
        listed.append((short, long))
    lines = [f"./{s.relative_to(root)} ./{lo.relative_to(root)} ISO6400 F2.8" for s, lo in listed]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    rows = ["short,long"] + [f"{s.relative_to(root)},{lo.relative_to(root)}" for s, lo in listed]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return good
