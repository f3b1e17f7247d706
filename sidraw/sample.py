"""Synthetic dark raw files: a reproducible test scene, mosaicked and darkened, written as DNG.

Used by ``sidraw sample`` (to try sidraw without a camera at hand), by the tests and by the
benchmarks. The scene is procedural (gradients, coloured shapes, fine stripes and a bright lamp
that clips), the exposure is divided by ``ratio`` and Poisson-Gaussian sensor noise is added the
way a real sensor makes it (shot noise at gain ``k`` DN per electron, read noise, black level,
clipping at white).

``realistic=True`` (what ``sidraw sample`` writes) makes a file that behaves like a camera's: its
normal exposure is the one ``auto`` aims for, so a file ``ratio`` times darker is brightened by
about ``ratio``, and it carries the tags photo workflows rely on (lens, focal length, capture time
with sub-seconds and offset, GPS position, artist, copyright), so that every README example,
``--strip-gps`` included, shows something.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np

from .dng import DngMetadata, write_dng
from .exposure import AUTO_TARGET_MEAN, brightness_statistic

XTRANS_PATTERN = np.array(
    [list(row) for row in ("GGRGGB", "GGBGGR", "BRGRBG", "GGBGGR", "GGRGGB", "RBGBRG")]
)


def pattern_letters(pattern: str) -> np.ndarray:
    """(P, P) letter array from ``"RGGB"``-style names or ``"xtrans"``."""
    if pattern.lower() == "xtrans":
        return XTRANS_PATTERN.copy()
    letters = pattern.upper()
    if sorted(letters) != ["B", "G", "G", "R"]:
        raise ValueError(f"unknown CFA pattern {pattern!r}")
    return np.array(list(letters)).reshape(2, 2)


def synthetic_scene(height: int, width: int, seed: int = 0, lamp: bool = True) -> np.ndarray:
    """A linear camera-RGB test scene.

    Returns:
        (height, width, 3) float32, mostly 0..1; the lamp reaches 4 (it clips after exposure).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yn = yy / max(height - 1, 1)
    xn = xx / max(width - 1, 1)
    scene = np.empty((height, width, 3), dtype=np.float32)
    base = rng.uniform(0.05, 0.3, size=3).astype(np.float32)
    scene[...] = base * (0.4 + 0.6 * yn[..., None]) * (0.6 + 0.4 * xn[..., None])
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.04, 0.18) * min(height, width)
        colour = rng.uniform(0.02, 0.8, size=3).astype(np.float32)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.5, 2))
        scene[mask] = colour
    # Fine stripes of decreasing period: detail that denoising must keep.
    band = (yn > 0.78) & (yn < 0.9)
    period = 2.0 + 30.0 * xn
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period)
    scene[band] = (0.05 + 0.5 * stripes[band])[:, None] * np.array([0.9, 0.8, 0.7], np.float32)
    if lamp:
        cy, cx = 0.25 * height, 0.75 * width
        r = 0.06 * min(height, width)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        glow = 4.0 * np.exp(-d2 * 0.5).astype(np.float32)
        scene += glow[..., None] * np.array([1.0, 0.85, 0.6], np.float32)
    return scene


def mosaic_from_rgb(rgb: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Sample an (H, W, 3) image through a CFA pattern: (H, W) of the same dtype."""
    h, w, _ = rgb.shape
    p = pattern.shape[0]
    index = np.vectorize("RGB".index)(pattern)
    tiled = np.tile(index, (-(-h // p), -(-w // p)))[:h, :w]
    return np.take_along_axis(rgb, tiled[..., None], axis=2)[..., 0]


@dataclass(frozen=True)
class SensorNoise:
    """Poisson-Gaussian sensor: ``k`` DN per electron, read noise ``read_sigma`` DN."""

    k: float = 2.0
    read_sigma: float = 6.0
    black: int = 512
    white: int = 16383


def expose(
    clean: np.ndarray, ratio: float, sensor: SensorNoise, rng: np.random.Generator
) -> np.ndarray:
    """Dark, noisy photosites from a clean linear mosaic.

    Args:
        clean: (H, W) float, 1.0 = white level after the full (bright) exposure.
        ratio: how much darker the captured frame is.

    Returns:
        (H, W) uint16 DN with black level, clipped to ``[0, white]``.
    """
    span = sensor.white - sensor.black
    dn = np.clip(clean, 0, None) * (span / ratio)
    electrons = rng.poisson(dn / sensor.k)
    noisy = electrons * sensor.k + rng.normal(0.0, sensor.read_sigma, size=dn.shape)
    noisy += sensor.black
    return np.clip(np.rint(noisy), 0, sensor.white).astype(np.uint16)


def write_sample(
    target: str | os.PathLike[str] | BinaryIO,
    *,
    pattern: str = "RGGB",
    width: int = 1200,
    height: int = 800,
    ratio: float = 100.0,
    seed: int = 0,
    exposure_time: float = 1 / 30,
    iso: int = 12800,
    sensor: SensorNoise | None = None,
    lamp: bool = True,
    model: Literal["ILCE-7SM2", "X-T2"] | str | None = None,
    realistic: bool = False,
) -> np.ndarray:
    """Write a synthetic dark raw as DNG.

    Args:
        realistic: scale the scene so that its bright exposure is a normal one (trimmed mean at
            :data:`~sidraw.exposure.AUTO_TARGET_MEAN`) and add a camera's photo tags
            (:data:`PHOTO_TAGS`).

    Returns:
        (H, W) float32 clean mosaic (1.0 = white) of the bright exposure, for comparisons.
    """
    sensor = sensor or SensorNoise()
    letters = pattern_letters(pattern)
    rng = np.random.default_rng(seed)
    scene = synthetic_scene(height, width, seed, lamp=lamp)
    # The scene is white-balanced; the camera sees it through typical daylight channel gains.
    camera = scene * np.array([0.5, 1.0, 0.6], dtype=np.float32)
    clean = mosaic_from_rgb(camera, letters)
    if realistic:
        # "ratio times darker than normal" then means what auto undoes: it brightens by ~ratio.
        clean *= np.float32(AUTO_TARGET_MEAN / brightness_statistic(clean))
    raw = expose(clean, ratio, sensor, rng)
    xtrans = letters.shape[0] == 6
    meta = DngMetadata(
        pattern=letters,
        black=sensor.black,
        white=sensor.white,
        make="FUJIFILM" if xtrans else "Sony",
        model=model or ("X-T2" if xtrans else "ILCE-7SM2"),
        exposure_time=exposure_time,
        f_number=2.8,
        iso=iso,
        datetime_original="2026:11:23 21:30:00",
        as_shot_neutral=(0.5, 1.0, 0.6),
    )
    write_dng(target, raw, meta)
    if realistic:
        _add_photo_tags(target, xtrans)
    return np.clip(clean, 0, 1).astype(np.float32)


#: The tags of a realistic sample (exiv2 keys and values), beyond those of :class:`DngMetadata`.
PHOTO_TAGS: dict[str, str] = {
    "Exif.Image.Artist": "sidraw sample",
    "Exif.Image.Copyright": "CC0 1.0 (public domain)",
    "Exif.Photo.BodySerialNumber": "0000001",
    "Exif.Photo.DateTimeOriginal": "2026:11:23 21:30:00",
    "Exif.Photo.SubSecTimeOriginal": "250",
    "Exif.Photo.OffsetTimeOriginal": "+01:00",
    "Exif.Photo.FocalLength": "24/1",
    "Exif.Photo.FocalLengthIn35mmFilm": "24",
    "Exif.GPSInfo.GPSVersionID": "2 3 0 0",
    "Exif.GPSInfo.GPSLatitudeRef": "N",
    "Exif.GPSInfo.GPSLatitude": "48/1 51/1 30/1",
    "Exif.GPSInfo.GPSLongitudeRef": "E",
    "Exif.GPSInfo.GPSLongitude": "2/1 21/1 0/1",
    "Exif.GPSInfo.GPSAltitudeRef": "0",
    "Exif.GPSInfo.GPSAltitude": "35/1",
}
# Lens tags per camera of the sample (Bayer: Sony a7S II, X-Trans: Fujifilm X-T2).
_LENSES = {
    False: {"Exif.Photo.LensMake": "Sony", "Exif.Photo.LensModel": "FE 24mm F1.4 GM",
            "Exif.Photo.LensSpecification": "24/1 24/1 14/10 14/10"},
    True: {"Exif.Photo.LensMake": "FUJIFILM", "Exif.Photo.LensModel": "XF16mmF1.4 R WR",
           "Exif.Photo.LensSpecification": "16/1 16/1 14/10 14/10",
           "Exif.Photo.FocalLength": "16/1"},
}  # fmt: skip


def _add_photo_tags(target: str | os.PathLike[str] | BinaryIO, xtrans: bool) -> None:
    """Add :data:`PHOTO_TAGS` and a lens to a DNG just written (a path or an r+w file)."""
    from .embed import into_tiff
    from .metadata import embedded

    tags: dict[str, Any] = {**PHOTO_TAGS, **_LENSES[xtrans]}
    meta = embedded(tags=tags, orientation=None)  # the DNG keeps its own Orientation
    if isinstance(target, (str, os.PathLike)):
        with open(target, "r+b") as f:
            into_tiff(f, meta)
    else:
        into_tiff(target, meta)
