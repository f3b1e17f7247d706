"""The clean photo collection: loading, train/validation split, patch sampling.

Images are read from ``<data>/clean`` (see its README.md and MANIFEST.tsv) once, downscaled, and
kept in memory as uint8. JPEG files are downscaled by 2 or more (4 when the long side exceeds
3200 px) so that compression artefacts and residual noise shrink below the photosite scale;
lossless files (PNG, TIFF, BMP) and the small BSDS500 scans (JPEG quality ~95, 481x321, too small
to halve) are kept at native size unless their long side exceeds 1600 px.

The validation split is fixed by file: the first files of each sub-folder in SHA-1 order of their
names (32 in all, never trained on).
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# Validation images per sub-folder; larger scenes are favoured so X-Trans crops (>= 612x912 for
# LibRaw's X-Trans demosaic) fit.
VAL_COUNTS = {
    "BSDS500": 8,
    "SunHays80": 8,
    "Urban100": 3,
    "PolyU_mean": 5,
    "McMaster18": 2,
    "Unsplash": 4,
    "WED_CDM100": 2,
}


@dataclass
class Photo:
    """One decoded photo: (H, W, 3) uint8 sRGB plus where it came from."""

    dataset: str
    name: str
    pixels: np.ndarray = field(repr=False)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


def data_root(data: str | os.PathLike[str] | None = None) -> Path:
    """The ``data`` folder (holding ``clean/`` and ``noise/``): argument, $SIDRAW_DATA or
    ``../shared/data`` relative to the repository."""
    if data is not None:
        return Path(data)
    env = os.environ.get("SIDRAW_DATA")
    return Path(env) if env else DEFAULT_DATA


def manifest(data: Path) -> list[tuple[str, str]]:
    """(dataset, file name) of every clean photo listed in MANIFEST.tsv."""
    with open(data / "clean" / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["dataset"], r["file"]) for r in rows]


def _order(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def split(entries: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Fixed (train, validation) split by file."""
    val: list[tuple[str, str]] = []
    for ds, n in VAL_COUNTS.items():
        files = sorted((e for e in entries if e[0] == ds), key=lambda e: _order(f"{e[0]}/{e[1]}"))
        val.extend(files[:n])
    val_set = set(val)
    train = [e for e in entries if e not in val_set]
    return train, val


def load_photo(path: Path) -> np.ndarray:
    """Decode and downscale one photo (rules in the module docstring): (H, W, 3) uint8."""
    with Image.open(path) as im:
        w, h = im.size
        long_side = max(w, h)
        is_jpeg = im.format == "JPEG"
        if is_jpeg and long_side > 600:
            factor = 4 if long_side > 3200 else 2
        elif long_side > 1600:
            factor = 2
        else:
            factor = 1
        if factor > 1 and is_jpeg:
            # DCT-domain scaling: fast, and a proper low-pass.
            im.draft("RGB", (w // factor, h // factor))
        im = im.convert("RGB")
        target = (w // factor, h // factor)
        if im.size != target:
            im = im.resize(target, Image.Resampling.BOX if factor > 1 else Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def load_photos(
    data: Path, entries: list[tuple[str, str]], cache: Path | None = None
) -> list[Photo]:
    """Load photos, optionally through a pickle cache (rebuilt when the file list changes)."""
    if cache is not None and cache.exists():
        with open(cache, "rb") as f:
            stored = pickle.load(f)
        if [p.key for p in stored] == [f"{d}/{n}" for d, n in entries]:
            return stored
    photos = [Photo(d, n, load_photo(data / "clean" / d / n)) for d, n in entries]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(photos, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache)
    return photos


class PatchSampler:
    """Random sRGB crops, sampled per image (not per pixel) so the few huge photos do not dominate.

    Each image is drawn with weight sqrt(min(megapixels, 1)): small scans count less than full
    scenes, but no image counts more than a 1 MP one.
    """

    def __init__(self, photos: list[Photo], seed: int = 0) -> None:
        self.photos = photos
        mp = np.array([p.pixels.shape[0] * p.pixels.shape[1] / 1e6 for p in photos])
        w = np.sqrt(np.minimum(mp, 1.0))
        self.weights = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def crop(self, size: int) -> np.ndarray:
        """(size, size, 3) float32 sRGB 0..1 with random flip / transpose."""
        for _ in range(1000):
            photo = self.photos[self.rng.choice(len(self.photos), p=self.weights)]
            h, w, _ = photo.pixels.shape
            if h >= size and w >= size:
                break
        else:
            raise ValueError(f"no photo is at least {size} px on its short side")
        y = int(self.rng.integers(0, h - size + 1))
        x = int(self.rng.integers(0, w - size + 1))
        c = photo.pixels[y : y + size, x : x + size]
        if self.rng.random() < 0.5:
            c = c[:, ::-1]
        if self.rng.random() < 0.5:
            c = c[::-1]
        if self.rng.random() < 0.5:
            c = c.transpose(1, 0, 2)
        return c.astype(np.float32) * np.float32(1 / 255)


#: Share of training crops replaced by a dead-leaves image (see :func:`dead_leaves`).
DEAD_LEAVES_PROBABILITY = 0.2


def dead_leaves(size: int, rng: np.random.Generator, discs: int = 120) -> np.ndarray:
    """A dead-leaves image: overlapping flat discs of random, often saturated, colours.

    Photos rarely hold large flat areas of saturated colour, so a network trained on them alone
    pulls such areas towards grey; these images (Lee et al. 2001, used for denoiser training by
    Achddou et al. 2021) hold nothing else. Radii follow a power law (scale invariance), colours
    are uniform in sRGB with a third of them pushed to full saturation, and a gentle shading
    gradient keeps them from being perfectly flat.

    Returns:
        (size, size, 3) float32 sRGB 0..1.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(0, 1, 3)
    radii = np.sort(size * 0.02 * (1 - rng.uniform(0, 0.995, discs)) ** -0.8)[::-1]
    for r in np.minimum(radii, size):
        cy, cx = rng.uniform(-0.1, 1.1, 2) * size
        colour = rng.uniform(0, 1, 3)
        if rng.random() < 1 / 3:
            colour[rng.integers(3)] *= 0.1  # saturated: one primary almost absent
        # Only the disc's bounding box is tested.
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        mask = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 < r * r
        img[box][mask] = colour
    gy, gx = rng.uniform(-0.15, 0.15, 2)
    shade = 1 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    return np.clip(img * shade[..., None], 0.0, 1.0).astype(np.float32)


#: Share of training crops replaced by a fine periodic pattern (see :func:`fine_grating`).
GRATING_PROBABILITY = 0.1


def fine_grating(size: int, rng: np.random.Generator) -> np.ndarray:
    """Fine periodic structure near the mosaic's Nyquist limit: window grids, fabric, fences.

    A denoiser that has seen few of them takes their aliased, moiré-like packed planes for noise
    and smooths them away, losing to plain amplification on such scenes even at low noise. Each
    image is one or two crossed square-ish waves (period 2.2 to 9 mosaic pixels, any angle and
    duty cycle, softened edges) between two random colours, under a gentle shading gradient.

    Returns:
        (size, size, 3) float32 sRGB 0..1.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.zeros((size, size), np.float32)
    waves = 1 if rng.random() < 0.5 else 2
    for _ in range(waves):
        period = float(np.exp(rng.uniform(np.log(2.2), np.log(9.0))))
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 1)
        sharp = rng.uniform(1.0, 6.0)  # 1: sinusoid, larger: square wave
        duty = rng.uniform(-0.5, 0.5)
        w = np.tanh(sharp * (np.sin(2 * np.pi * phase) + duty)) / np.tanh(sharp)
        wave = np.maximum(wave, 0.5 + 0.5 * w)
    lo, hi = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = lo + (hi - lo) * wave[..., None]
    gy, gx = rng.uniform(-0.2, 0.2, 2)
    shade = 1 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    return np.clip(img * shade[..., None], 0.0, 1.0).astype(np.float32)
