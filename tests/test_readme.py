"""Every README example runs, in order, in one folder, as a reader would run them.

The ```bash blocks are run line by line with ``bash`` in one temporary folder, with this
environment's ``sidraw`` and ``python3`` first on PATH. What cannot run here is left out, and said
so: ``pip install`` steps (``.ci/run`` runs those in fresh environments), the test command itself,
and the Training section (hours of training, torch). Generated samples are made smaller (``sidraw
sample`` gets ``--width``/``--height``) to keep the test short; ``exiftool`` steps are dropped when
it is not installed. The "Using it" examples name a camera's files (``IMG_0001.ARW``, ``shoot/``,
``a.dng``): stand-ins are generated for them first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SIZE = "--width 320 --height 224"
SKIPPED_SECTIONS = ("Training",)


def readme_commands() -> list[tuple[str, str]]:
    """(section, command) of every line of every ```bash block, in order."""
    section, commands, block = "", [], None
    for line in (REPO / "README.md").read_text().splitlines():
        if block is None and line.startswith("## "):
            section = line[3:].strip()
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            commands += [(section, c) for c in _join_continuations(block)]
            block = None
        elif block is not None:
            block.append(line)
    return commands


def _join_continuations(lines: list[str]) -> list[str]:
    joined, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [c for c in joined if c.strip() and not c.lstrip().startswith("#")]


def runnable(command: str) -> str | None:
    """The part of a README command this test runs (None: nothing of it)."""
    command = re.sub(r"\s+#\s.*$", "", command)  # a trailing comment
    parts = [p.strip() for p in command.split(" && ")]
    parts = [p for p in parts if not re.match(r"(python3 -m )?pip install|python3 -m pytest", p)]
    if shutil.which("exiftool") is None:
        parts = parts[: next((k for k, p in enumerate(parts) if p.startswith("exiftool")), None)]
    parts = [re.sub(r"^(sidraw sample \S+)", rf"\1 {SAMPLE_SIZE}", p) for p in parts]
    return " && ".join(parts) or None


def stand_ins(folder: Path) -> None:
    """The camera files the "Using it" examples name."""
    from sidraw.sample import write_sample

    size = {"width": 320, "height": 224}
    write_sample(folder / "a.dng", realistic=True, **size)
    # A DNG under a camera's name: LibRaw reads files by content.
    write_sample(folder / "IMG_0001.ARW", realistic=True, seed=1, **size)
    (folder / "shoot" / "day2").mkdir(parents=True)
    # X-Trans frames narrower than about 768 photosites fail LibRaw's render (a bug of its own).
    write_sample(
        folder / "shoot" / "x.RAF", pattern="xtrans", realistic=True, width=768, height=512
    )
    write_sample(folder / "shoot" / "day2" / "late.ARW", realistic=True, seed=2, **size)


def test_every_readme_example_runs_in_order_in_one_folder(tmp_path: Path) -> None:
    commands = [(s, runnable(c)) for s, c in readme_commands() if s not in SKIPPED_SECTIONS]
    commands = [(s, c) for s, c in commands if c]
    assert len(commands) >= 15, commands  # the parser found the examples
    stand_ins(tmp_path)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),  # --install-completion writes into the home folder
        "SHELL": "/bin/bash",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    for section, command in commands:
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"[{section}] {command}\n{proc.stdout}\n{proc.stderr}"
        # An example that trips over an earlier one's output is skipped without a word of
        # failure; none may.
        assert ": skipped, " not in proc.stderr, f"[{section}] {command}\n{proc.stderr}"
    _check_results(tmp_path)


def _check_results(folder: Path) -> None:
    """What the examples say they make is there."""
    import exiv2
    import tifffile

    def tags(path: Path) -> set[str]:
        image = exiv2.ImageFactory.open(str(path))
        image.readMetadata()
        return {d.key() for d in image.exifData()}

    assert tifffile.imread(folder / "bright" / "dark.tif").dtype.name == "uint16"
    assert "Exif.GPSInfo.GPSLatitude" in tags(folder / "bright" / "dark.tif")
    assert not [k for k in tags(folder / "nogps" / "dark.tif") if "GPS" in k]
    for made in ("linear/a.tif", "a_ratio50.tif", "clean/dark.dng", "bright.tif", "out/dark.tif"):
        assert (folder / made).is_file(), made
    assert (folder / "shoot" / "x.png").is_file() and (folder / "IMG_0001.tif").is_file()
    assert (folder / "dark_compare.jpg").is_file()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "python3 -m pip install . && sidraw sample dark.dng",
            f"sidraw sample dark.dng {SAMPLE_SIZE}",
        ),
        ('python3 -m pip install -e ".[dev]" && python3 -m pytest -q', None),
        ("sidraw info a.dng   # a comment", "sidraw info a.dng"),
    ],
)
def test_runnable_part(command: str, expected: str | None) -> None:
    assert runnable(command) == expected
