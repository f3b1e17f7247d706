"""Turning sRGB photographs into plausible linear raw mosaics (Brooks et al., CVPR 2019).

The steps undo, in reverse order, what a camera pipeline does: the tone curve (a smoothstep), the
sRGB transfer curve (approximated by a 2.2 power), the colour correction from camera RGB to sRGB,
and the white balance; the result is sampled on a Bayer or X-Trans colour filter array. All images
are float32 in ``0..1``, (H, W, 3) RGB or (H, W) mosaics, where 1 is the sensor's white level above
black.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..mosaic import Layout, layout_from_letters

# XYZ (D65) -> camera RGB matrices, as tabulated (x 10000) in dcraw's adobe_coeff().
CAMERA_XYZ2CAM: dict[str, np.ndarray] = {
    "Sony ILCE-7S": np.array([[5838, -1430, -246], [-3497, 11477, 2297], [-748, 1885, 5778]]),
    "Canon EOS 5D Mark II": np.array(
        [[4716, 603, -830], [-7798, 15474, 2480], [-1496, 1937, 6651]]
    ),
    "Nikon D800": np.array([[7866, -2108, -555], [-4869, 12483, 2681], [-1176, 2069, 7501]]),
    "Fujifilm X-T2": np.array([[11434, -4948, -1210], [-3746, 12042, 1903], [-666, 1479, 5235]]),
}

# Linear sRGB -> XYZ (D65).
RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]]
)

# Fuji's X-Trans pattern, rows from the top-left photosite.
XTRANS_PATTERN = np.array(
    [list(r) for r in ("GGRGGB", "GGBGGR", "BRGRBG", "GGBGGR", "GGRGGB", "RBGBRG")]
)
BAYER_PATTERN = np.array([["R", "G"], ["G", "B"]])

_COLOUR_INDEX = {"R": 0, "G": 1, "B": 2}


@dataclass(frozen=True)
class CameraParams:
    """Random camera of one unprocessed image.

    Attributes:
        xyz2cam: (3, 3) XYZ -> camera matrix (rows not normalised), for the DNG ColorMatrix1.
        rgb2cam: (3, 3) linear sRGB -> camera RGB, rows summing to 1 (white stays white).
        red_gain, blue_gain: white-balance gains of the camera (red/green, blue/green > 1).
        rgb_gain: overall brightness gain the camera pipeline applied (undone here).
    """

    xyz2cam: np.ndarray
    rgb2cam: np.ndarray
    red_gain: float
    blue_gain: float
    rgb_gain: float

    @property
    def as_shot_neutral(self) -> tuple[float, float, float]:
        """Camera RGB of a neutral grey, as DNG's AsShotNeutral wants it."""
        return (1.0 / self.red_gain, 1.0, 1.0 / self.blue_gain)


def random_camera(rng: np.random.Generator) -> CameraParams:
    """Draw a colour matrix (random convex mix of real cameras) and white-balance gains.

    Gain ranges as Brooks et al.: red 1.9..2.4, blue 1.5..1.9, brightness 1/N(0.8, 0.1).
    """
    mats = np.stack(list(CAMERA_XYZ2CAM.values())).astype(np.float64) / 10000.0
    weights = rng.uniform(1e-8, 1.0, size=len(mats))
    weights /= weights.sum()
    xyz2cam = np.tensordot(weights, mats, axes=1)
    rgb2cam = xyz2cam @ RGB2XYZ
    rgb2cam /= rgb2cam.sum(axis=1, keepdims=True)
    rgb_gain = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.5, 1.1))
    return CameraParams(
        xyz2cam=xyz2cam,
        rgb2cam=rgb2cam,
        red_gain=float(rng.uniform(1.9, 2.4)),
        blue_gain=float(rng.uniform(1.5, 1.9)),
        rgb_gain=rgb_gain,
    )


def inverse_smoothstep(y: np.ndarray) -> np.ndarray:
    """Undo the tone curve ``3x^2 - 2x^3``; input and output 0..1."""
    y = np.clip(y, 0.0, 1.0)
    return (0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)).astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """The tone curve ``3x^2 - 2x^3`` (for tests)."""
    x = np.clip(x, 0.0, 1.0)
    return (3 * x**2 - 2 * x**3).astype(np.float32)


def gamma_expand(x: np.ndarray) -> np.ndarray:
    """Undo the display transfer curve (a 2.2 power, as Brooks et al.)."""
    return np.power(np.maximum(x, 1e-8), 2.2).astype(np.float32)


def safe_inverse_gains(rgb: np.ndarray, cam: CameraParams) -> np.ndarray:
    """Undo white balance and brightness gain, keeping near-white pixels neutral.

    Plain division would turn clipped whites (1, 1, 1) into a tinted raw value below the white
    level, which no real sensor records: saturated photosites clip at white in every channel. The
    gains fade to 1 above a grey level of 0.9 so highlights stay at (1, 1, 1) in the raw.

    Args:
        rgb: (H, W, 3) float32 linear camera RGB, 0..1, white balanced.

    Returns:
        (H, W, 3) float32 linear camera RGB before white balance, 0..1.
    """
    gains = np.array([1.0 / cam.red_gain, 1.0, 1.0 / cam.blue_gain], np.float32) / cam.rgb_gain
    grey = rgb.mean(axis=-1, keepdims=True)
    inflection = 0.9
    mask = (np.maximum(grey - inflection, 0.0) / (1.0 - inflection)) ** 2
    safe = np.maximum(mask + (1.0 - mask) * gains, gains)
    return np.clip(rgb * safe, 0.0, 1.0).astype(np.float32)


def unprocess(srgb: np.ndarray, cam: CameraParams) -> np.ndarray:
    """sRGB image -> linear camera RGB before white balance.

    Args:
        srgb: (H, W, 3) float32 display sRGB, 0..1.
        cam: the random camera.

    Returns:
        (H, W, 3) float32 linear camera RGB, 0..1 (1 = white level).
    """
    lin = gamma_expand(inverse_smoothstep(srgb))
    cam_rgb = np.clip(lin @ cam.rgb2cam.T.astype(np.float32), 0.0, 1.0)
    return safe_inverse_gains(cam_rgb, cam)


def random_pattern(cfa: str, rng: np.random.Generator) -> np.ndarray:
    """A CFA pattern of random phase: (2, 2) Bayer or (6, 6) X-Trans letter array."""
    base = BAYER_PATTERN if cfa == "bayer" else XTRANS_PATTERN
    p = base.shape[0]
    dy, dx = rng.integers(0, p, size=2)
    return np.roll(base, (int(dy), int(dx)), axis=(0, 1))


@lru_cache(maxsize=64)
def _layout_cached(letters: str) -> Layout:
    n = round(len(letters) ** 0.5)
    return layout_from_letters(np.array(list(letters)).reshape(n, n))


def layout_for(pattern: np.ndarray) -> Layout:
    """Packing layout of a letter pattern (cached: patterns repeat)."""
    return _layout_cached("".join(str(c) for c in np.asarray(pattern).ravel()))


def mosaic(rgb: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Sample an RGB image on a CFA.

    Args:
        rgb: (H, W, 3) float32 linear camera RGB.
        pattern: (P, P) letters from the top-left photosite.

    Returns:
        (H, W) float32 mosaic.
    """
    h, w, _ = rgb.shape
    p = pattern.shape[0]
    idx = np.vectorize(_COLOUR_INDEX.__getitem__)(pattern)
    tiled = np.tile(idx, (-(-h // p), -(-w // p)))[:h, :w]
    return np.take_along_axis(rgb, tiled[..., None], axis=2)[..., 0]
