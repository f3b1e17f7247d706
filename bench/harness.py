"""Running one benchmark case in a fresh subprocess: wall time, peak RSS and the child's report.

Peak RSS comes from ``os.wait4`` on the child itself, so every measurement is that one process's
high-water mark (plus any children it waited for), not the maximum over all earlier children as
``getrusage(RUSAGE_CHILDREN)`` would give.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any


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
    """Run ``cmd`` in a fresh process and measure its wall time and peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd
        )
        expired = threading.Event()

        def _kill() -> None:
            expired.set()
            # os.kill, not proc.kill: Popen.poll() could reap the child before wait4 does.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, _kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measurement(
            wall_s=wall,
            peak_rss_mb=usage.ru_maxrss * 1024 / 1e6,  # Linux reports KiB
            returncode=proc.returncode,
            stdout=out.read().decode("utf-8", errors="replace"),
            stderr=err.read().decode("utf-8", errors="replace"),
            timed_out=expired.is_set(),
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
