"""Lists of real short/long exposure pairs: the SID list format, a short/ + long/ folder, a CSV.

A *pair* is a short (dark, noisy) raw exposure and a long (clean) one of the same scene shot from
a tripod, as in the SID and ELD data sets. Three ways to name them are read:

* a SID list file: one pair a line, ``./Sony/short/10003_00_0.1s.ARW ./Sony/long/10003_00_10s.ARW
  ISO200 F9``; paths are relative to the list file, anything after the two paths is ignored;
* a folder holding ``short/`` and ``long/``, matched by scene id in SID names
  (``SCENE_SHOT_EXPOSUREs.EXT``); several shorts may share one long;
* a CSV file with ``short`` and ``long`` columns (paths relative to the CSV file).

The ratio of a pair is the long exposure time over the short one, from EXIF, else from the SID
file names, capped at :data:`MAX_PAIR_RATIO` (300, as SID does). Pairs whose cameras, sizes or CFA
patterns differ, and pairs with a file that cannot be read, are refused with one line each
(:class:`PairError`); the others are kept.

Only file headers are read here (no photosites are decoded), so listing the whole SID set is quick.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, SidrawError
from .raw import (
    RAW_EXTENSIONS,
    _check_bytes,
    _check_input_path,
    _check_sizes,
    _open_libraw,
    _read_bytes,
    read_exif,
)

#: SID caps the ratio of its pairs at 300.
MAX_PAIR_RATIO = 300.0

_SID_NAME = re.compile(r"^(?P<scene>[^_]+)_(?P<shot>[^_]+)_(?P<exposure>\d+(?:\.\d+)?)s$")


class PairError(SidrawError):
    """A pair list or one of its pairs cannot be used (one line naming the file)."""


@dataclass(frozen=True)
class SidName:
    """The parts of a SID file name ``SCENE_SHOT_EXPOSUREs.EXT``; exposure in seconds."""

    scene: str
    shot: str
    exposure: float


def parse_sid_name(path: str | os.PathLike[str]) -> SidName | None:
    """Scene, shot and exposure time (s) of a SID-style name, or None for other names."""
    m = _SID_NAME.match(Path(path).stem)
    if m is None:
        return None
    exposure = float(m["exposure"])
    return SidName(m["scene"], m["shot"], exposure) if exposure > 0 else None


@dataclass(frozen=True)
class FileMeta:
    """What the pair checks need of one raw file, read from its header.

    Attributes:
        path: the file.
        camera: ``"Make Model"`` from EXIF (``"unknown"`` when absent).
        width, height: visible photosites.
        cfa: the CFA pattern as letters, row-major from the top-left visible photosite.
        exposure_time: seconds, from EXIF (None when absent).
        iso: ISO speed from EXIF (None when absent).
    """

    path: Path
    camera: str
    width: int
    height: int
    cfa: str
    exposure_time: float | None
    iso: float | None


def read_meta(path: str | os.PathLike[str]) -> FileMeta:
    """The header metadata of a raw file, without decoding its photosites.

    Raises:
        sidraw.SidrawError: missing, unreadable, not a raw file or damaged (one line).
    """
    p = Path(path)
    _check_input_path(p)
    data = _read_bytes(p)
    raw = _open_libraw(data, str(p))
    try:
        _check_sizes(raw, str(p))
        _check_bytes(raw, len(data), str(p))  # a file truncated far below its photosites
        sizes = raw.sizes
        desc = raw.color_desc.decode("ascii", errors="replace")
        try:
            pattern = raw.raw_pattern
        except NotImplementedError:
            pattern = None
        # rawpy's pattern is LibRaw's COLOR() of the visible area, as RawInfo.cfa_pattern.
        cfa = "none" if pattern is None else "".join(desc[int(c)] for c in pattern.ravel())
        width, height = int(sizes.width), int(sizes.height)
    finally:
        raw.close()
    exif = read_exif(data)
    make, model = exif.make or "", exif.model or ""
    # Many cameras repeat the make in the model ("Canon" + "Canon EOS D30"): say it once.
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}"
    camera = camera.strip() or "unknown"
    return FileMeta(p, camera, width, height, cfa, exif.exposure_time, exif.iso)


@dataclass(frozen=True)
class RawPair:
    """One usable pair.

    Attributes:
        short, long: the raw files.
        ratio: long / short exposure time, capped at MAX_PAIR_RATIO.
        ratio_source: ``"exif"`` or ``"name"`` (the SID file names).
        uncapped: the ratio before the cap.
        scene: the SID scene id (None for other names).
        camera, width, height, cfa: shared by both files.
        iso: ISO of the short exposure (None when unknown).
    """

    short: Path
    long: Path
    ratio: float
    ratio_source: str
    uncapped: float
    scene: str | None
    camera: str
    width: int
    height: int
    cfa: str
    iso: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "short": str(self.short),
            "long": str(self.long),
            "ratio": round(self.ratio, 4),
            "ratio_source": self.ratio_source,
            "scene": self.scene,
            "camera": self.camera,
            "size": [self.width, self.height],
            "cfa": self.cfa,
            "iso": self.iso,
        }


@dataclass
class PairSet:
    """The pairs of a list: the usable ones and one line per refused one."""

    source: Path
    pairs: list[RawPair] = field(default_factory=list)
    refused: list[SidrawError] = field(default_factory=list)


# --- list formats --------------------------------------------------------------------------------


def _relative(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def read_sid_list(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(short, long) paths of a SID list file (paths relative to the list's folder).

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        PairError: the file cannot be read, or a line holds fewer than two paths.
    """
    p = Path(path)
    text = _read_text(p)
    out: list[tuple[Path, Path]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2:
            raise PairError(f"line {number}: expected 'SHORT LONG [ISO] [F]'", p)
        out.append((_relative(p.parent, words[0]), _relative(p.parent, words[1])))
    return out


def read_csv_list(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(short, long) paths of a CSV file with ``short`` and ``long`` columns.

    Raises:
        PairError: the file cannot be read or lacks the columns.
    """
    p = Path(path)
    rows = list(csv.DictReader(_read_text(p).splitlines()))
    if not rows:
        return []
    columns = {k.strip().lower(): k for k in rows[0] if k}
    if "short" not in columns or "long" not in columns:
        raise PairError("a pair CSV needs 'short' and 'long' columns", p)
    out = []
    for row in rows:
        short = (row[columns["short"]] or "").strip()
        long = (row[columns["long"]] or "").strip()
        if short and long:
            out.append((_relative(p.parent, short), _relative(p.parent, long)))
    return out


def _raw_files(folder: Path) -> list[Path]:
    return sorted(
        f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in RAW_EXTENSIONS
    )


def read_folder(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(short, long) paths of a folder with ``short/`` and ``long/``, matched by SID scene id.

    A short whose scene has no long exposure, or several, is matched to the long of the same shot
    id when there is one; otherwise it is refused at :func:`load_pairs` time (it is returned with
    a long path that names the problem's scene so that the error says which).

    Raises:
        PairError: the folder lacks ``short/`` or ``long/``.
    """
    root = Path(path)
    short_dir, long_dir = root / "short", root / "long"
    if not short_dir.is_dir() or not long_dir.is_dir():
        raise PairError("a pair folder needs short/ and long/ subfolders", root)
    longs: dict[str, list[tuple[Path, SidName]]] = {}
    for f in _raw_files(long_dir):
        name = parse_sid_name(f)
        if name is not None:
            longs.setdefault(name.scene, []).append((f, name))
    out = []
    for f in _raw_files(short_dir):
        name = parse_sid_name(f)
        if name is None:
            continue
        candidates = longs.get(name.scene, [])
        if len(candidates) > 1:
            candidates = [c for c in candidates if c[1].shot == name.shot] or candidates
        if len(candidates) == 1:
            out.append((f, candidates[0][0]))
        else:
            # No (or no unique) long exposure: an impossible long name makes load_pairs refuse it.
            out.append((f, long_dir / f"<{len(candidates)} long exposures of scene {name.scene}>"))
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PairError("pair list not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PairError(f"cannot read the pair list ({exc})", path) from None


def list_pairs(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(short, long) paths of a pair list in any of the three formats (by what ``path`` is: a
    folder, a ``.csv`` file, or else a SID list)."""
    p = Path(path)
    if p.is_dir():
        return read_folder(p)
    if p.suffix.lower() == ".csv":
        return read_csv_list(p)
    return read_sid_list(p)


# --- checks --------------------------------------------------------------------------------------


def pair_ratio(short: FileMeta, long: FileMeta) -> tuple[float, str]:
    """(uncapped long / short exposure ratio, ``"exif"`` or ``"name"``).

    Raises:
        PairError: neither EXIF nor the file names give both exposure times, or the long
            exposure is not longer.
    """
    ratio, source = None, ""
    if short.exposure_time and long.exposure_time:
        ratio, source = long.exposure_time / short.exposure_time, "exif"
    else:
        s, lo = parse_sid_name(short.path), parse_sid_name(long.path)
        if s is not None and lo is not None:
            ratio, source = lo.exposure / s.exposure, "name"
    if ratio is None:
        raise PairError(
            f"no exposure times (EXIF or SID name) to pair it with {long.path.name}", short.path
        )
    if ratio < 1:
        raise PairError(
            f"the long exposure {long.path.name} is shorter (ratio {ratio:.3g})", short.path
        )
    return ratio, source


def check_pair(short: FileMeta, long: FileMeta) -> RawPair:
    """The pair of two files, or a PairError naming the short file and what differs."""
    if short.camera != long.camera:
        raise PairError(
            f"camera {short.camera} differs from {long.path.name}'s {long.camera}", short.path
        )
    if (short.width, short.height) != (long.width, long.height):
        raise PairError(
            f"size {short.width}x{short.height} differs from {long.path.name}'s "
            f"{long.width}x{long.height}",
            short.path,
        )
    if short.cfa != long.cfa:
        raise PairError(f"CFA {short.cfa} differs from {long.path.name}'s {long.cfa}", short.path)
    ratio, source = pair_ratio(short, long)
    sid = parse_sid_name(short.path)
    return RawPair(
        short=short.path, long=long.path, ratio=min(ratio, MAX_PAIR_RATIO), ratio_source=source,
        uncapped=ratio, scene=sid.scene if sid else None, camera=short.camera,
        width=short.width, height=short.height, cfa=short.cfa, iso=short.iso,
    )


def load_pairs(
    path: str | os.PathLike[str], names: Iterable[tuple[Path, Path]] | None = None
) -> PairSet:
    """Read a pair list and check every pair; each file's header is read once (several shorts
    may share one long).

    Args:
        path: a SID list, a short/ + long/ folder or a CSV (see :func:`list_pairs`).
        names: the (short, long) paths, if already listed.

    Raises:
        PairError: the list itself cannot be read (a bad pair is refused, not raised).
    """
    listed = list(names) if names is not None else list_pairs(path)
    cache: dict[Path, FileMeta | SidrawError] = {}

    def meta(p: Path) -> FileMeta:
        if p not in cache:
            try:
                cache[p] = read_meta(p)
            except SidrawError as exc:
                cache[p] = exc
        got = cache[p]
        if isinstance(got, SidrawError):
            raise got
        return got

    result = PairSet(Path(path))
    for short, long in listed:
        try:
            if long.name.startswith("<"):
                raise InputError(f"no single long exposure: {long.name.strip('<>')}", short)
            result.pairs.append(check_pair(meta(short), meta(long)))
        except SidrawError as exc:
            result.refused.append(exc)
    return result
