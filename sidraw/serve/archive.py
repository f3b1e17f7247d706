"""The zip of several results, written to a file in the work folder (never built in memory)."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

from .names import unique_names

# TIFF (deflate) and PNG outputs are compressed already: storing them saves the CPU for the
# network. Denoised DNGs are written uncompressed, so they are deflated (fast level).
_STORED = frozenset({".tif", ".png"})


def write_zip(entries: list[tuple[Path, str]], folder: Path) -> Path:
    """Write the files ``entries`` (path, name in the zip) into a new zip in ``folder``.

    Names are made unique (``a.tif``, ``a (2).tif``); they are plain names (no folders, see
    :mod:`sidraw.serve.names`), so unpacking the zip cannot write outside its folder.

    Returns:
        The zip's path; the caller deletes it once it is sent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}.zip"
    names = unique_names([name for _, name in entries])
    with zipfile.ZipFile(target, "x") as archive:
        for (path, _), name in zip(entries, names, strict=True):
            stored = Path(name).suffix.lower() in _STORED
            archive.write(
                path,
                name,
                compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                compresslevel=None if stored else 1,
            )
    return target
