"""``sidraw serve``: a local web page (and a JSON API) in front of :func:`sidraw.convert_file`.

The modules, one job each:

* :mod:`.config`: the server's settings (:class:`~.config.ServeConfig`), no web import;
* :mod:`.names`: what an uploaded file's name may become (display name, download name);
* :mod:`.uploads`: multipart uploads streamed to the work folder, with their size limits;
* :mod:`.conversion`: one job's conversion and before/after preview, through the library;
* :mod:`.jobs`: the queue, its single worker thread, client sessions and clean-up;
* :mod:`.security`: the token, the Host check and the response headers;
* :mod:`.app`: the routes, built by :func:`~.app.create_app` (no global state);
* :mod:`.server`: binding, printing the address, running uvicorn.

Only :mod:`.config`, :mod:`.names` and this module import without the ``web`` extra, so that
``import sidraw`` and ``sidraw --help`` never need it.
"""

from __future__ import annotations

import importlib.util

#: The modules of the ``web`` extra (import name, what pip installs).
WEB_MODULES: tuple[tuple[str, str], ...] = (
    ("starlette", "starlette"),
    ("uvicorn", "uvicorn"),
    ("python_multipart", "python-multipart"),
)

INSTALL_HINT = 'pip install "sidraw[web]"'


def missing_web_extra() -> str | None:
    """The pip name of the first missing module of the ``web`` extra, or None if all are there."""
    for module, package in WEB_MODULES:
        if importlib.util.find_spec(module) is None:
            return package
    return None
