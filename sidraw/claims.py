"""Claims: which sidraw process is converting which output, so that several share one batch.

Before a conversion starts, its output is claimed: a lock file ``.sidraw-NAME.lock`` is created
next to where the temporary file and the output will be (the output's folder), atomically and
exclusively (``O_CREAT | O_EXCL``, which local file systems and NFS v3+ honour). It holds the
claimant's host, pid, start time and a random token, as JSON. Another process that finds the
claim skips the file ("in progress elsewhere") and moves on; the claim is removed when the
conversion ends, whatever its outcome.

A claim is *stale*, and taken over, when its process is gone (same host, pid not running), when
it was not refreshed for :data:`CLAIM_STALE_SECONDS` (its holder refreshes its modification
time every :data:`CLAIM_REFRESH_SECONDS` while it converts, so only a dead or hung claimant on
another host, or a frozen machine, lets it age), or when it is empty or unreadable and older
than :data:`CLAIM_EMPTY_SECONDS` (a claimant killed between creating and writing it). Taking
over is atomic: the stale lock is renamed to a unique name (only one process can move it), then
a new claim is created exclusively; a process that loses either step skips the file.

A pid that another process of the same host has reused since keeps a dead run's claim alive, but
only until it ages: nobody refreshes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .output import TMP_PREFIX

LOCK_SUFFIX = ".lock"
#: Longest output name (bytes) used as is in its claim's name (file names hold 255 bytes).
MAX_NAME_IN_LOCK = 200

#: Seconds without a refresh after which a claim is stale, whatever host holds it.
CLAIM_STALE_SECONDS = 600.0
#: Seconds between two refreshes of a held claim's modification time.
CLAIM_REFRESH_SECONDS = 60.0
#: Seconds after which an empty or unreadable claim (its writer died at once) is stale.
CLAIM_EMPTY_SECONDS = 30.0


def lock_path(dst: str | os.PathLike[str]) -> Path:
    """The claim file of an output: ``.sidraw-NAME.lock`` in the output's folder (for a name
    too long to take the prefix and suffix, its sha256 in hex instead of NAME)."""
    final = Path(dst)
    name = final.name
    if len(os.fsencode(name)) > MAX_NAME_IN_LOCK:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()
    return final.with_name(f"{TMP_PREFIX}{name}{LOCK_SUFFIX}")


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says: who holds it (``started``: seconds since the epoch)."""

    host: str
    pid: int
    started: float
    token: str
    batch: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"host": self.host, "pid": self.pid, "started": self.started, "token": self.token,
             "batch": self.batch}
        )  # fmt: skip


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim in ``path``; None when it is empty or unreadable (not yet written, damaged).

    Raises:
        FileNotFoundError: there is no claim.
    """
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return ClaimInfo(str(data["host"]), int(data["pid"]), float(data["started"]),
                         str(data["token"]), str(data.get("batch", "")))  # fmt: skip
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def is_stale(
    path: Path, info: ClaimInfo | None, *, batch: str = "", now: float | None = None
) -> bool:
    """Whether the claim ``info`` read from ``path`` may be taken over (see the module's text).

    A claim of the same ``batch`` (non-empty) is stale too: a cluster batch claims each output
    once, so such a claim is left by an earlier attempt of the same task, on a worker that died.

    Raises:
        FileNotFoundError: the claim is gone.
    """
    age = (time.time() if now is None else now) - path.stat().st_mtime
    if info is None:
        return age > CLAIM_EMPTY_SECONDS
    if batch and info.batch == batch:
        return True
    if info.host == socket.gethostname() and not _pid_alive(info.pid):
        return True
    return age > CLAIM_STALE_SECONDS


class Claim:
    """A held claim on one output; :meth:`release` removes it (only if it is still ours).

    While held, a daemon thread refreshes the lock's modification time every
    :data:`CLAIM_REFRESH_SECONDS`, so a long conversion never looks stale.
    """

    def __init__(self, path: Path, info: ClaimInfo) -> None:
        self.path = path
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="sidraw-claim", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(CLAIM_REFRESH_SECONDS):
            with contextlib.suppress(OSError):
                if self._ours():
                    os.utime(self.path)

    def _ours(self) -> bool:
        try:
            current = read_claim(self.path)
        except FileNotFoundError:
            return False
        return current is not None and current.token == self.info.token

    def release(self) -> None:
        """Remove the claim file if it still holds our token (idempotent)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            if self._ours():
                self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path, info: ClaimInfo) -> bool:
    """Create the claim file exclusively; False when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        # Not fsynced: after a crash an empty claim is stale within CLAIM_EMPTY_SECONDS anyway.
        os.write(fd, info.to_json().encode())
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, seen: ClaimInfo | None) -> bool:
    """Move the stale claim ``seen`` away atomically; False when another process was faster."""
    aside = path.with_name(f"{path.name}.stale-{secrets.token_hex(6)}")
    try:
        os.rename(path, aside)  # only one process can move this file
    except FileNotFoundError:
        return True  # gone meanwhile: try to create it
    try:
        moved = read_claim(aside)
    except FileNotFoundError:
        moved = None
    if moved != seen:
        # We moved a fresh claim that replaced the stale one after we looked: put it back.
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links here: a rename, unless a claim is back meanwhile
            if not path.exists():
                with contextlib.suppress(OSError):
                    os.rename(aside, path)
        with contextlib.suppress(OSError):
            aside.unlink()
        return False
    with contextlib.suppress(OSError):
        aside.unlink()
    return True


def try_claim(dst: str | os.PathLike[str], batch: str = "") -> Claim | None:
    """Claim the output ``dst``; None when another live process holds it.

    A stale claim (dead process on this host, not refreshed for :data:`CLAIM_STALE_SECONDS`,
    or left by the same ``batch``: see :func:`is_stale`) is taken over.

    Raises:
        OSError: the claim cannot be created (folder missing or not writable).
    """
    path = lock_path(dst)
    info = ClaimInfo(socket.gethostname(), os.getpid(), time.time(), secrets.token_hex(8), batch)
    for _ in range(3):
        if _create(path, info):
            return Claim(path, info)
        try:
            seen = read_claim(path)
            if not is_stale(path, seen, batch=batch):
                return None
        except FileNotFoundError:
            continue  # released meanwhile
        if not _take_over(path, seen):
            return None
    return None


def cleanup_stale_claims(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the stale claims in ``folder`` (a killed run's, whose output may exist by now);
    returns what was removed. Live claims are left alone; removal is the atomic take-over."""
    removed = []
    try:
        candidates = list(Path(folder).glob(f"{TMP_PREFIX}*{LOCK_SUFFIX}"))
    except OSError:
        return removed
    for path in candidates:
        try:
            seen = read_claim(path)
            if is_stale(path, seen) and _take_over(path, seen):
                removed.append(path)
        except OSError:
            continue
    return removed
