"""Running a server: bind its socket, say where it is, open the browser, hand over to uvicorn.

The socket is bound here rather than by uvicorn so that a port in use is one clear line, the
address printed is the one really bound (``--port 0`` picks a free port), and a browser opened
with ``--open`` finds the port listening. uvicorn stops on Ctrl-C or SIGTERM; the application's
shutdown then deletes every uploaded file and result. A hang-up (the terminal closed) stops it
the same way. uvicorn raises the signal again once it has stopped; here it becomes
``KeyboardInterrupt``, as in a batch, and the command exits with 130.
"""

from __future__ import annotations

import signal
import socket
import threading
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import uvicorn

from ..batch import terminate_as_interrupt
from .app import create_app
from .config import ServeConfig, url_host

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``.

    Raises:
        OSError: the address cannot be bound (in use, not this machine's, no permission).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def page_url(config: ServeConfig) -> str:
    """The link to print: the page, with the token when there is one."""
    host = socket.gethostname() if config.host in _WILDCARDS else config.host
    token = f"?token={config.token}" if config.token else ""
    return f"http://{url_host(host)}:{config.port}/{token}"


def run_server(
    config: ServeConfig,
    say: Callable[[str], None],
    warn: Callable[[str], None],
    *,
    open_browser: bool = False,
) -> None:
    """Serve until Ctrl-C, SIGTERM or SIGHUP, which raise ``KeyboardInterrupt`` once the server
    has stopped and deleted its files.

    Args:
        config: the settings; a token is generated when it listens beyond loopback without one.
        say, warn: print a line for people (stderr), a plain one and a warning.
        open_browser: open the page in the default browser once the server listens.

    Raises:
        OSError: the address cannot be bound.
    """
    config = config.with_token()
    sock = bind(config.host, config.port)
    config = replace(config, port=sock.getsockname()[1])
    url = page_url(config)
    if not config.loopback:
        warn(
            f"listening on {config.host}, beyond this machine: whoever has the link below (with "
            "its token) can upload files and download the results; plain HTTP, so use it on "
            "networks you trust (--host 127.0.0.1 keeps it to this machine)"
        )
    say(f"sidraw serve: {url}")
    say(f"one file converted at a time; files are deleted after download, after "
        f"{config.keep_minutes:g} minutes and when the server stops (Ctrl-C)")  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level="warning",
            access_log=False,  # the URLs carry the token
            timeout_graceful_shutdown=10,
        )
    )
    if open_browser:
        threading.Timer(0.3, webbrowser.open, [url]).start()
    try:
        with terminate_as_interrupt(), _hangup_stops(server):
            server.run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def _hangup_stops(server: uvicorn.Server) -> Iterator[None]:
    """SIGHUP stops the server gracefully, as SIGTERM does (uvicorn handles only SIGINT and
    SIGTERM; a hang-up would otherwise end the process before the files are deleted)."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(hangup, lambda _, frame: server.handle_exit(signal.SIGTERM, frame))
    try:
        yield
    finally:
        signal.signal(hangup, previous)
