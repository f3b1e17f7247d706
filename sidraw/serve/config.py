"""The settings of one ``sidraw serve`` server, and the few facts derived from them.

Nothing here imports the web stack, so the command line can check its options without the
``web`` extra installed.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

#: One megabyte as ``--max-upload`` and ``--max-request`` count it (decimal, as file managers do).
MB = 1_000_000


@dataclass(frozen=True)
class ServeConfig:
    """What a server does and allows.

    Attributes:
        host, port: where it listens (port 0: a free port the system picks).
        max_upload: largest uploaded file, in bytes.
        max_request: largest upload request (all its files together), in bytes.
        max_files: most files in one upload request.
        max_jobs: most jobs waiting or running at once (more uploads are refused with 503).
        keep_minutes: a finished job's files (result, preview) are deleted this many minutes
            after it finished.
        download_grace: seconds a result stays after its download (a retry, or the zip of all
            right after one file) before it is deleted.
        idle_seconds: a client that asked nothing about its jobs for this long is gone: its
            queued jobs are cancelled and its running one is stopped.
        sweep_seconds: how often the clean-up runs.
        token: secret every request must carry (None: no token, loopback only).
        work_dir: folder for uploads and results (None: a new temporary folder, removed at
            shutdown with everything in it).
        model: ``--model`` of ``sidraw convert`` (None: the bundled models).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: inference threads (None: the physical cores).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload: int = 200 * MB
    max_request: int = 1000 * MB
    max_files: int = 100
    max_jobs: int = 500
    keep_minutes: float = 30.0
    download_grace: float = 60.0
    idle_seconds: float = 90.0
    sweep_seconds: float = 5.0
    token: str | None = None
    work_dir: Path | None = None
    model: Path | None = None
    device: str = "auto"
    threads: int | None = None

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        return is_loopback(self.host)

    def with_token(self) -> ServeConfig:
        """This config, with a generated token when it listens beyond loopback without one."""
        if self.token is None and not self.loopback:
            return replace(self, token=secrets.token_urlsafe(18))
        return self


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: addresses only this machine reaches."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def url_host(host: str) -> str:
    """``host`` as it stands in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def config_from_options(
    *,
    host: str,
    port: int,
    max_upload_mb: float,
    max_request_mb: float,
    keep_minutes: float,
    token: str | None,
    model: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> ServeConfig:
    """The config of ``sidraw serve``'s options (sizes in MB, times in minutes).

    Raises:
        UsageError: a value out of range, said in one line.
    """
    from ..cli_options import UsageError

    if not 0 <= port <= 65535:
        raise UsageError("--port must be from 0 to 65535 (0: a free port)")
    if not max_upload_mb > 0 or not max_request_mb > 0:
        raise UsageError("--max-upload and --max-request must be positive (MB)")
    if not keep_minutes > 0:
        raise UsageError("--keep must be positive (minutes)")
    if token is not None and not _TOKEN.fullmatch(token):
        raise UsageError("--token must be 8 or more letters, digits, '-', '_', '.' or '~'")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    return ServeConfig(
        host=host,
        port=port,
        max_upload=round(max_upload_mb * MB),
        max_request=round(max_request_mb * MB),
        keep_minutes=keep_minutes,
        token=token,
        model=model,
        device=device,
        threads=threads,
    )


# Characters that need no escaping in a URL or a cookie.
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{8,256}")
