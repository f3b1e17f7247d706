"""Running one benchmark case in a fresh subprocess: wall time, peak RSS and the child's report.

Every command is started by launch.py, a bare interpreter that ``os.wait4``s on it: the peak RSS
is that one process's high-water mark (plus any children it waited for), neither the maximum over
all earlier children, as ``getrusage(RUSAGE_CHILDREN)`` would give, nor inflated by the size of
the benchmark process itself (see launch.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCHER = Path(__file__).resolve().with_name("launch.py")


@dataclass
class Measurement:
    """One run of a command.

    Attributes:
        wall_s: wall time from start to exit, process start-up included.
        peak_rss_mb: peak resident set size in MB (10**6 bytes); NaN when unknown.
        returncode: exit status (negative: killed by that signal).
        stdout, stderr: what the command printed.
        timed_out: it was killed after the time limit.
    """

    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def report(self) -> dict[str, Any]:
        """The last JSON object the command printed on a line of its own ({} when none)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
        return {}

    def error(self) -> str:
        """A short description of a failure (empty when the run succeeded)."""
        if self.ok:
            return ""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = " | ".join(line.strip() for line in text[-3:])
        return f"exit {self.returncode}: {tail}"[:400]


def measure(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 900.0,
) -> Measurement:
    """Run ``cmd`` in a fresh process (through launch.py) and measure its wall time and peak RSS.

    On timeout the launcher and the command (one process group) are killed.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = Path(tmp) / "result.json"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), str(result), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wall = time.perf_counter() - start
        try:
            report = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {"wall_s": wall, "maxrss_kib": float("nan"), "returncode": -9}
        out.seek(0)
        err.seek(0)
        return Measurement(
            wall_s=float(report["wall_s"]) if not timed_out else wall,
            peak_rss_mb=report["maxrss_kib"] * 1024 / 1e6,  # Linux reports KiB
            returncode=int(report["returncode"]) if proc.returncode == 0 else proc.returncode,
            stdout=out.read().decode("utf-8", errors="replace"),
            stderr=err.read().decode("utf-8", errors="replace"),
            timed_out=timed_out,
        )


def summary(values: list[float]) -> dict[str, Any]:
    """Min, median and all values of a list of timings (None fields when it is empty)."""
    if not values:
        return {"min": None, "median": None, "values": []}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "values": [round(v, 4) for v in values],
    }
