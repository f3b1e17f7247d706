"""Other raw developers with noise reduction, driven headless on the same files.

* RawTherapee (``rawtherapee-cli``): a partial .pp3 profile that enables Directional Pyramid
  Denoising (luminance and chrominance) and brightens by the same ratio as sidraw.
* darktable (``darktable-cli``): an XMP sidecar whose history holds ``denoise (profiled)`` with
  the camera's noise profile picked automatically. The module's parameter blob is taken from the
  installed darktable's own built-in preset ("wavelets: chroma only", read from its data.db) with
  the luminance curve switched on, so it always matches the installed version's layout.

Each peer is set up (and checked to produce an image with its denoiser active) before it is timed.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

from harness import measure

# darktable's dt_iop_denoiseprofile_params_t, version 11 (darktable 3.x-4.x): 8 floats, a[3],
# b[3], mode, x[6][7], y[6][7], 4 ints. Row 4 of y is the luminance (Y0) curve.
_DT_DENOISE_VERSION = 11
_DT_DENOISE_FORMAT = "<8f6fi84f4i"
_DT_Y0_CURVE = slice(15 + 42 + 4 * 7, 15 + 42 + 5 * 7)


@dataclass
class Peer:
    """A ready-to-time peer.

    Attributes:
        key: short name used in the JSON.
        label: row label of the table.
        exe: the program.
        args_before, args_after: options around the input and output (see :meth:`command`).
        note: how it was set up.
        layout: ``"rawtherapee"`` (``-o OUT ... -c IN``) or ``"darktable"`` (``IN XMP OUT ...``).
    """

    key: str
    label: str
    exe: str
    args_before: list[str] = field(default_factory=list)
    args_after: list[str] = field(default_factory=list)
    note: str = ""
    layout: str = "rawtherapee"

    def command(self, src: Path, dst: Path) -> list[str]:
        if self.layout == "rawtherapee":
            return [self.exe, "-o", str(dst), *self.args_before, "-c", str(src)]
        return [self.exe, str(src), *self.args_before, str(dst), *self.args_after]


def rawtherapee_profile(folder: Path, ratio: float) -> Path:
    """A partial RawTherapee profile: neutral values, + exposure, + noise reduction on."""
    profile = folder / "sidraw-bench-nr.pp3"
    profile.write_text(
        "[Version]\nAppVersion=5.9\nVersion=349\n\n"
        f"[Exposure]\nCompensation={math.log2(ratio):.3f}\n\n"
        "[Directional Pyramid Denoising]\nEnabled=true\nLuma=50\nLdetail=50\nChroma=30\n"
        "Method=Lab\n",
        encoding="ascii",
    )
    return profile


def setup_rawtherapee(folder: Path, probe: Path, ratio: float) -> tuple[Peer | None, str]:
    """Find rawtherapee-cli, write its profile and check it denoises ``probe``.

    Returns:
        (the peer or None, a note saying what happened).
    """
    exe = shutil.which("rawtherapee-cli")
    if exe is None:
        return None, "rawtherapee-cli not installed (Debian: apt-get install rawtherapee)"
    folder.mkdir(parents=True, exist_ok=True)
    profile = rawtherapee_profile(folder, ratio)
    out = folder / "rt-probe.tif"
    # -O also writes the profile actually used beside the output: proof that NR was on.
    m = measure([exe, "-O", str(out), "-p", str(profile), "-t", "-b16", "-Y", "-c", str(probe)])
    used = out.with_name(out.name + ".pp3")
    if not m.ok or not out.is_file() or out.stat().st_size == 0:
        return None, f"rawtherapee-cli produced no image: {m.error() or 'no output file'}"
    text = used.read_text(errors="replace") if used.is_file() else ""
    section = text.split("[Directional Pyramid Denoising]", 1)[-1].split("\n[", 1)[0]
    if "Enabled=true" not in section:
        return None, "rawtherapee-cli ignored the noise reduction profile"
    peer = Peer(
        key="rawtherapee",
        label="rawtherapee-cli + NR",
        exe=exe,
        args_before=["-p", str(profile), "-t", "-b16", "-Y"],
        note=f"Directional Pyramid Denoising (Lab, luma 50, chroma 30), profile {profile}",
    )
    return peer, peer.note


def _darktable_base_args(configdir: Path) -> list[str]:
    return [
        "--core",
        "--configdir",
        str(configdir),
        "--library",
        ":memory:",
        "--conf",
        "opencl=false",
        "--conf",
        "plugins/imageio/format/tiff/bpp=16",
    ]


def darktable_xmp(configdir: Path, xmp: Path) -> str:
    """Write an XMP sidecar whose history enables ``denoise (profiled)``.

    Returns:
        "" on success, else why it could not be made.
    """
    db = configdir / "data.db"
    if not db.is_file():
        return "darktable created no data.db"
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT op_params, op_version, blendop_params, blendop_version FROM presets "
            "WHERE operation = 'denoiseprofile' ORDER BY name LIMIT 1"
        ).fetchone()
    if row is None:
        return "no built-in denoiseprofile preset in darktable's data.db"
    params, version, blend, blend_version = row
    if version != _DT_DENOISE_VERSION or len(params) != struct.calcsize(_DT_DENOISE_FORMAT):
        return f"unknown denoiseprofile parameter layout (version {version}, {len(params)} bytes)"
    values = list(struct.unpack(_DT_DENOISE_FORMAT, params))
    values[_DT_Y0_CURVE] = [0.5] * 7  # luminance denoising on, as the module's default curve
    blob = struct.pack(_DT_DENOISE_FORMAT, *values).hex()
    xmp.write_text(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:darktable="http://darktable.sf.net/"
    darktable:xmp_version="5" darktable:raw_params="0" darktable:auto_presets_applied="0"
    darktable:history_end="1">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:num="0" darktable:operation="denoiseprofile" darktable:enabled="1"
      darktable:modversion="{version}" darktable:params="{blob}" darktable:multi_name=""
      darktable:multi_priority="0" darktable:blendop_version="{blend_version}"
      darktable:blendop_params="{bytes(blend).hex()}"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
""",
        encoding="utf-8",
    )
    return ""


def setup_darktable(folder: Path, probe: Path) -> tuple[Peer | None, str]:
    """Find darktable-cli, build its XMP and check that ``denoise (profiled)`` runs on ``probe``."""
    exe = shutil.which("darktable-cli")
    if exe is None:
        return None, "darktable-cli not installed (Debian: apt-get install darktable)"
    configdir = folder / "darktable-config"
    configdir.mkdir(parents=True, exist_ok=True)
    base = _darktable_base_args(configdir)
    out = folder / "dt-probe.tif"
    out.unlink(missing_ok=True)
    m = measure([exe, str(probe), str(out), *base])  # first start: creates data.db
    if not m.ok or not out.is_file():
        return None, f"darktable-cli produced no image: {m.error() or 'no output file'}"
    xmp = folder / "sidraw-bench-denoise.xmp"
    problem = darktable_xmp(configdir, xmp)
    if problem:
        return None, f"darktable skipped: {problem}"
    out.unlink(missing_ok=True)
    m = measure([exe, str(probe), str(xmp), str(out), *base, "-d", "perf"])
    if not m.ok or not out.is_file():
        return None, f"darktable-cli with the XMP produced no image: {m.error()}"
    if "processed `denoise (profiled)'" not in m.stdout + m.stderr:
        return None, "darktable-cli did not run denoise (profiled) from the XMP"
    out.unlink(missing_ok=True)
    peer = Peer(
        key="darktable",
        label="darktable-cli + denoise",
        exe=exe,
        args_before=[str(xmp)],
        args_after=base,
        layout="darktable",
        note=f"denoise (profiled), wavelets, auto noise profile, XMP {xmp}",
    )
    return peer, peer.note
