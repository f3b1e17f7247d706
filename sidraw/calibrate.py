"""Noise calibration of one's own camera: the library behind ``sidraw calibrate``.

From frames a photographer shoots in minutes, per ISO:

* **dark frames** (lens cap on, shortest shutter time): read noise and row noise. With two or more
  frames, differences of consecutive frames are used, so fixed-pattern noise (hot pixels, column
  patterns) cancels: ``var(D1 - D2) / 2`` is the temporal variance of a photosite, and the variance
  of the difference's row means, ``/ 2`` less the photosites' share ``var / W``, the row noise.
  ``read_dn`` is the rest: ``sqrt(total - row^2)`` (it includes the quantisation step's 1/12 DN^2,
  as the noise fit of :mod:`sidraw.noise_estimate` does). With one frame, fixed-pattern noise
  counts as read noise.
* **flat frames** in pairs (an evenly lit, defocused white surface, same settings twice, well below
  clipping): the gain K in DN per electron by the photon-transfer method (as ELD and darktable's
  noise profiling do): in tiles of each packed channel, the variance of the pair's difference
  ``/ 2`` against the mean signal; ``var = K * mean + c`` fitted over the tiles, with ``c`` the dark
  frames' temporal variance when there are dark frames at that ISO (else fitted too). Differences
  cancel the lighting's unevenness and the photosites' sensitivity pattern.

Accuracy (``tests/test_calibrate.py``: frames synthesised with known values, 512 x 384
photosites, two darks and one uneven, coloured flat pair per ISO, hot pixels and a 1 % sensitivity
pattern): measured errors 0.03 % on K, 0.1 % on read noise and 5 % on row noise (row noise comes
from only 384 rows); the test allows 3 %, 3 % and 15 %. Real frames add what synthesis lacks
(non-Gaussian read noise, a flat light that flickers, non-linearity near clipping), so expect
a few per cent on K.

The camera profile (JSON, :class:`CameraProfile`) holds, per ISO, ``k_dn_per_electron``,
``read_dn`` and ``row_dn`` with the file's black and white levels. It is found by camera name in
the profile folder (:func:`profile_dir`: ``$SIDRAW_PROFILES``, else ``~/.config/sidraw/profiles``);
:func:`profile_estimate` gives the noise input of a noise-conditioned model and
:func:`profile_noise_params` the training noise model's parameters.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, SidrawError
from .mosaic import pack
from .noise_estimate import NoiseEstimate
from .raw import RAW_EXTENSIONS, RawInfo, open_raw

PROFILE_VERSION = 1
#: Edge (packed pixels) of the tiles of the photon-transfer fit.
FLAT_TILE = 32
#: Tiles with a photosite above this share of the white range are near clipping and left out.
FLAT_CLIP = 0.9
#: Differences beyond this many (robust) standard deviations are left out (cosmic rays, dust).
OUTLIER_SIGMA = 6.0
#: A profile's ISO applies to files within this many stops of it.
ISO_STOPS = 1 / 6


class CalibrationError(SidrawError):
    """Frames cannot be calibrated (one line naming the file)."""


@dataclass(frozen=True)
class IsoNoise:
    """Measured noise at one ISO, in DN.

    Attributes:
        k_dn_per_electron: gain K (None without flat frames).
        read_dn: read noise std, row noise excluded (None without dark frames).
        row_dn: std of the per-row offset (None without dark frames).
        black_offset_dn: mean dark level minus the file's black level (None without darks).
        dark_frames, flat_pairs: frames the values come from.
        tiles: tiles of the photon-transfer fit.
    """

    k_dn_per_electron: float | None
    read_dn: float | None
    row_dn: float | None
    black_offset_dn: float | None
    dark_frames: int
    flat_pairs: int
    tiles: int = 0


@dataclass
class CameraProfile:
    """A camera's noise per ISO (``isos`` keyed by the ISO as text, e.g. ``"800"``)."""

    camera: str
    black: float
    white: float
    isos: dict[str, IsoNoise] = field(default_factory=dict)
    version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "sidraw_camera_profile": self.version,
            "camera": self.camera,
            "black": self.black,
            "white": self.white,
            "isos": {k: asdict(v) for k, v in sorted(self.isos.items(), key=_iso_key)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CameraProfile:
        return cls(
            camera=str(data["camera"]),
            black=float(data["black"]),
            white=float(data["white"]),
            isos={str(k): IsoNoise(**v) for k, v in data["isos"].items()},
            version=int(data.get("sidraw_camera_profile", PROFILE_VERSION)),
        )

    def for_iso(self, iso: float | None) -> tuple[str, IsoNoise] | None:
        """The measured ISO within ISO_STOPS of ``iso`` (the nearest), or None."""
        if not iso or iso <= 0:
            return None
        best = None
        for key, noise in self.isos.items():
            stops = abs(math.log2(float(key) / iso)) if _is_number(key) else math.inf
            if stops <= ISO_STOPS and (best is None or stops < best[0]):
                best = (stops, key, noise)
        return (best[1], best[2]) if best else None


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _iso_key(item: tuple[str, Any]) -> float:
    return float(item[0]) if _is_number(item[0]) else math.inf


# --- measurements --------------------------------------------------------------------------------


def _frame(path: Path) -> tuple[RawInfo, np.ndarray]:
    """(info, (H, W) float32 photosites minus each position's black level) of a raw file."""
    with open_raw(path) as raw:
        info = raw.info
        p = info.layout.period
        h, w = raw.mosaic.shape
        black = np.tile(np.asarray(info.black, np.float32), (-(-h // p), -(-w // p)))[:h, :w]
        return info, raw.mosaic.astype(np.float32) - black


def _robust_var(x: np.ndarray) -> float:
    """Variance of ``x`` after dropping values beyond OUTLIER_SIGMA robust deviations."""
    x = x.ravel().astype(np.float64)
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826
    if mad > 0:
        x = x[np.abs(x - med) <= OUTLIER_SIGMA * mad]
    return float(np.var(x))


def dark_noise(frames: list[np.ndarray]) -> tuple[float, float, float]:
    """(read noise, row noise, mean dark level) in DN of black-subtracted dark frames.

    Args:
        frames: (H, W) float32 photosites minus black, one per dark frame (same size).
    """
    offset = float(np.mean([np.median(f) for f in frames]))
    if len(frames) >= 2:
        totals, rows = [], []
        for a, b in itertools.pairwise(frames):
            d = a - b
            v = _robust_var(d) / 2
            totals.append(v)
            rows.append(float(np.var(d.mean(axis=1), dtype=np.float64)) / 2 - v / d.shape[1])
        total, row = float(np.mean(totals)), max(float(np.mean(rows)), 0.0)
    else:
        f = frames[0]
        row_means = f.mean(axis=1, keepdims=True)
        total = _robust_var(f - row_means)
        row = max(float(np.var(row_means, dtype=np.float64)) - total / f.shape[1], 0.0)
        total += row
    read = math.sqrt(max(total - row, 0.0))
    return read, math.sqrt(row), offset


def flat_points(a: np.ndarray, b: np.ndarray, info: RawInfo) -> tuple[np.ndarray, np.ndarray]:
    """Photon-transfer points of a flat pair: per tile of each packed channel, (mean signal,
    variance of the difference / 2), both in DN; tiles near clipping are left out.

    Args:
        a, b: (H, W) float32 photosites minus black of the two flats.
    """
    layout = info.layout
    pa, pb = pack(a, layout), pack(b, layout)
    t = FLAT_TILE
    h, w, c = (pa.shape[0] // t) * t, (pa.shape[1] // t) * t, pa.shape[2]
    if h == 0 or w == 0:
        raise CalibrationError(f"flat frames smaller than {2 * t} photosites", info.path)
    limit = FLAT_CLIP * (info.white - float(np.max(info.black)))

    def tiles(x: np.ndarray) -> np.ndarray:  # (n, t * t) per tile and channel
        return x[:h, :w].reshape(h // t, t, w // t, t, c).transpose(0, 2, 4, 1, 3).reshape(
            -1, t * t
        )

    ta, tb = tiles(pa), tiles(pb)
    keep = (np.maximum(ta.max(axis=1), tb.max(axis=1)) < limit)
    means = (ta[keep] + tb[keep]).mean(axis=1) / 2
    diffs = ta[keep] - tb[keep]
    # A robust spread per tile: the std of the middle values, scaled (MAD of a Gaussian).
    med = np.median(diffs, axis=1, keepdims=True)
    mad = np.median(np.abs(diffs - med), axis=1, keepdims=True) * 1.4826
    ok = np.abs(diffs - med) <= OUTLIER_SIGMA * np.maximum(mad, 1e-6)
    n = ok.sum(axis=1)
    mean_d = np.where(ok, diffs, 0).sum(axis=1) / n
    var = (np.where(ok, (diffs - mean_d[:, None]) ** 2, 0).sum(axis=1) / (n - 1)) / 2
    usable = means > 0
    return means[usable].astype(np.float64), var[usable].astype(np.float64)


def fit_gain(means: np.ndarray, variances: np.ndarray, dark_variance: float | None) -> float:
    """K (DN/e-) of ``var = K * mean + c``: ``c`` given (the dark variance) or fitted."""
    if means.size < 2:
        raise ValueError("too few flat tiles")
    if dark_variance is not None:
        return float(np.sum(means * (variances - dark_variance)) / np.sum(means**2))
    slope, _ = np.polyfit(means, variances, 1)
    return float(slope)


# --- the command ---------------------------------------------------------------------------------


def raw_files(paths: list[Path]) -> list[Path]:
    """Files given, with folders replaced by the raw files in them (sorted by name)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in RAW_EXTENSIONS)
        else:
            out.append(p)
    return out


def _iso_text(iso: float | None) -> str:
    return f"{iso:g}" if iso else "unknown"


def _camera(info: RawInfo) -> str:
    make, model = info.exif.make or "", info.exif.model or ""
    name = model if make and model.lower().startswith(make.lower()) else f"{make} {model}"
    return name.strip() or "unknown"


def calibrate(darks: list[Path], flats: list[Path]) -> CameraProfile:
    """Measure a camera's noise per ISO from dark frames and pairs of flat frames.

    Frames are grouped by their EXIF ISO; flats of one ISO are paired in name order (1st with
    2nd, 3rd with 4th, ...). Frames are read one or two at a time.

    Raises:
        CalibrationError: no frames, frames of different cameras or sizes, an odd number of
            flats at an ISO, or flats too bright or too dark to fit.
        sidraw.SidrawError: a frame cannot be read.
    """
    if not darks and not flats:
        raise CalibrationError("give dark frames (--dark) and/or flat frames (--flat)")
    groups: dict[str, dict[str, list[Path]]] = {}
    first: RawInfo | None = None
    for kind, paths in (("dark", darks), ("flat", flats)):
        for p in paths:
            info = _header(p)
            if first is None:
                first = info
            elif (_camera(info), info.width, info.height) != (
                _camera(first), first.width, first.height
            ):
                raise CalibrationError(
                    f"{_camera(info)} {info.width}x{info.height} differs from {first.path}'s "
                    f"{_camera(first)} {first.width}x{first.height}",
                    p,
                )
            iso = _iso_text(info.exif.iso)
            groups.setdefault(iso, {"dark": [], "flat": []})[kind].append(p)
    assert first is not None
    profile = CameraProfile(_camera(first), float(np.mean(first.black)), float(first.white))
    for iso, g in groups.items():
        profile.isos[iso] = _measure_iso(g["dark"], sorted(g["flat"]))
    return profile


def _header(path: Path) -> RawInfo:
    with open_raw(path) as raw:
        return raw.info


def _measure_iso(darks: list[Path], flats: list[Path]) -> IsoNoise:
    read = row = offset = None
    dark_var = None
    if darks:
        read, row, offset = dark_noise([_frame(p)[1] for p in darks])
        dark_var = read**2 + row**2
    if len(flats) % 2:
        raise CalibrationError(f"{len(flats)} flat frames at this ISO: flats come in pairs",
                               flats[-1])
    means, variances = [], []
    for a, b in zip(flats[::2], flats[1::2], strict=True):
        info, fa = _frame(a)
        _, fb = _frame(b)
        m, v = flat_points(fa, fb, info)
        if m.size < 2:
            raise CalibrationError("flat pair clipped or black: no usable tiles", a)
        means.append(m)
        variances.append(v)
    k = None
    tiles = 0
    if means:
        m, v = np.concatenate(means), np.concatenate(variances)
        tiles = int(m.size)
        k = fit_gain(m, v, dark_var)
        if not k > 0:
            raise CalibrationError(f"flat frames give an implausible gain ({k:.3g})", flats[0])
    return IsoNoise(
        k_dn_per_electron=_round(k, 5), read_dn=_round(read, 4), row_dn=_round(row, 4),
        black_offset_dn=_round(offset, 3), dark_frames=len(darks), flat_pairs=len(flats) // 2,
        tiles=tiles,
    )


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


# --- profiles on disk ----------------------------------------------------------------------------


def profile_dir() -> Path:
    """The folder of camera profiles: ``$SIDRAW_PROFILES``, else ``~/.config/sidraw/profiles``."""
    env = os.environ.get("SIDRAW_PROFILES")
    return Path(env) if env else Path.home() / ".config" / "sidraw" / "profiles"


def profile_name(camera: str) -> str:
    """File name of a camera's profile: ``Sony ILCE-7SM2`` -> ``sony_ilce-7sm2.json``."""
    return re.sub(r"[^a-z0-9.-]+", "_", camera.lower()).strip("_") + ".json"


def save_profile(profile: CameraProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def load_profile(path: str | os.PathLike[str]) -> CameraProfile:
    """Read a camera profile.

    Raises:
        InputError: missing or not a sidraw camera profile.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return CameraProfile.from_dict(data)
    except FileNotFoundError:
        raise InputError("camera profile not found", p) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a sidraw camera profile ({exc})", p) from None


def find_profile(camera: str, folder: Path | None = None) -> CameraProfile | None:
    """The profile of a camera in the profile folder, or None."""
    path = (folder or profile_dir()) / profile_name(camera)
    if not path.is_file():
        return None
    try:
        return load_profile(path)
    except InputError:
        return None


def profile_for(info: RawInfo, folder: Path | None = None) -> dict[str, Any] | None:
    """What ``sidraw info`` says of a file's camera profile: None when there is no profile for
    its camera, else the profile file, the ISO that applies (or None) and its noise."""
    camera = _camera(info)
    profile = find_profile(camera, folder)
    if profile is None:
        return None
    match = profile.for_iso(info.exif.iso)
    report: dict[str, Any] = {
        "file": str((folder or profile_dir()) / profile_name(camera)),
        "camera": profile.camera,
        "iso": match[0] if match else None,
        "measured_isos": [k for k, _ in sorted(profile.isos.items(), key=_iso_key)],
    }
    if match:
        report["noise"] = asdict(match[1])
    return report


def complete_iso(
    profile: CameraProfile, camera: str, iso: float | None
) -> tuple[str, IsoNoise] | None:
    """The profile's ISO that applies to a file of ``camera`` at ``iso`` and has both a gain and a
    read noise, or None (another camera, no ISO within ISO_STOPS, or an incomplete ISO)."""
    if profile.camera != camera:
        return None
    match = profile.for_iso(iso)
    if match is None or match[1].k_dn_per_electron is None or match[1].read_dn is None:
        return None
    return match


def profile_estimate(noise: IsoNoise, white_range: float) -> NoiseEstimate:
    """The noise-conditioned model's view of a profile's ISO: normalised units (as
    :class:`~sidraw.noise_estimate.NoiseEstimate`), row noise counted with the read noise.

    Raises:
        ValueError: the ISO lacks a gain or a read noise.
    """
    if noise.k_dn_per_electron is None or noise.read_dn is None:
        raise ValueError("the profile's ISO needs both flat frames (gain) and dark frames (read)")
    read = math.hypot(noise.read_dn, noise.row_dn or 0.0)
    return NoiseEstimate(noise.k_dn_per_electron / white_range, read / white_range, 0)


def profile_noise_params(profile: CameraProfile, noise: IsoNoise) -> dict[str, Any]:
    """Keyword arguments of :class:`sidraw.train.noise.NoiseParams` for a profile's ISO (Gaussian
    read noise), so that synthetic training pairs carry the camera's noise."""
    if noise.k_dn_per_electron is None or noise.read_dn is None:
        raise ValueError("the profile's ISO needs both flat frames (gain) and dark frames (read)")
    return {
        "k": noise.k_dn_per_electron,
        "sigma_read": noise.read_dn,
        "read_lambda": None,
        "sigma_row": noise.row_dn or 0.0,
        "black": round(profile.black),
        "white": round(profile.white),
    }


def file_profile_noise(
    info: RawInfo, white_range: float, folder: Path | None = None
) -> tuple[NoiseEstimate, str] | None:
    """The noise a camera profile gives a file (normalised units) and a note naming the profile,
    or None when no complete profile ISO applies. ``convert`` prefers it to the frame's own fit:
    the photographer measured it on this very sensor."""
    camera = _camera(info)
    profile = find_profile(camera, folder)
    if profile is None:
        return None
    match = complete_iso(profile, camera, info.exif.iso)
    if match is None:
        return None
    key, noise = match
    return profile_estimate(noise, white_range), f"camera profile of {camera}, ISO {key}"
