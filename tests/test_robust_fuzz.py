"""Fuzzing: damaged DNGs give a SidrawError (or a valid image), never a crash, a hang or debris.

Small valid DNGs (Bayer and X-Trans) are damaged by bit flips, byte overwrites, truncation,
insertions and deletions (mostly in the header area, where the structure is) and by rewriting the
fields of TIFF directory entries; each is converted with ``convert_file`` and random-weight test
models. ``SIDRAW_FUZZ_EXAMPLES`` raises the number of examples for a longer local run.
"""

from __future__ import annotations

import faulthandler
import io
import os
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unet_onnx import write_model

import sidraw
from sidraw import output
from sidraw.model import ModelCache
from sidraw.sample import write_sample

EXAMPLES = int(os.environ.get("SIDRAW_FUZZ_EXAMPLES", "60"))
HANG_SECONDS = 60  # hard bound per example: a hang kills the run with a traceback, never blocks CI

_BASES: dict[str, bytes] = {}


def base(pattern: str) -> bytes:
    if pattern not in _BASES:
        buf = io.BytesIO()
        write_sample(buf, width=96, height=72, pattern=pattern, seed=3)
        _BASES[pattern] = buf.getvalue()
    return _BASES[pattern]


def header_end(data: bytes) -> int:
    """Where the image data starts: everything before it is TIFF structure and tag values."""
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        return int(tf.pages[0].tags[273].value[0])


# One mutation: (kind, position in [0, 1), a value in [0, 2**32)).
_KINDS = ["flip", "byte", "truncate", "insert", "delete", "entry_code", "entry_type",
          "entry_count", "entry_value"]
_VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 6, 9, 16, 255, 256, 0xFFFF, 0x10000, 60000, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
_mutation = st.tuples(
    st.sampled_from(_KINDS), st.floats(0, 1, exclude_max=True), _VALUES, st.booleans()
)


def mutate(data: bytes, mutations: list[tuple[str, float, int, bool]]) -> bytes:
    b = bytearray(data)
    head = header_end(data)
    n_entries = struct.unpack_from("<H", data, 8)[0]
    for kind, where, value, anywhere in mutations:
        if not b:
            break
        span = len(b) if anywhere else min(head, len(b))
        pos = int(where * span)
        if kind == "flip":
            b[pos] ^= 1 << (value % 8)
        elif kind == "byte":
            b[pos] = value % 256
        elif kind == "truncate":
            del b[int(where * len(b)) :]
        elif kind == "insert":
            b[pos:pos] = value.to_bytes(4, "little")[: 1 + value % 4]
        elif kind == "delete":
            del b[pos : pos + 1 + value % 16]
        else:  # rewrite a field of one IFD0 entry: code (2 bytes), type (2), count (4), value (4)
            entry = 10 + 12 * int(where * n_entries)
            field = {"entry_code": (0, "<H"), "entry_type": (2, "<H"),
                     "entry_count": (4, "<I"), "entry_value": (8, "<I")}[kind]
            if entry + 12 <= len(b):
                size = struct.calcsize(field[1])
                struct.pack_into(field[1], b, entry + field[0], value % (1 << (8 * size)))
    return bytes(b)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    folder = tmp_path_factory.mktemp("tiny-models")
    for cfa in ("bayer", "xtrans"):
        write_model(folder, cfa, width=4)
    return ModelCache(folder, "cpu", 1)


@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=20),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    pattern=st.sampled_from(["RGGB", "xtrans"]),
    mutations=st.lists(_mutation, min_size=1, max_size=4),
)
def test_damaged_dng_fails_cleanly(
    cache: ModelCache, pattern: str, mutations: list[tuple[str, float, int, bool]]
) -> None:
    data = mutate(base(pattern), mutations)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src, dst = folder / "in.dng", folder / "out" / "in.tif"
        src.write_bytes(data)
        dst.parent.mkdir()
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            sidraw.convert_file(src, dst, sidraw.ConvertOptions(ratio=10), models=cache)
        except sidraw.SidrawError as exc:
            assert str(exc).startswith(str(src)) and "\n" not in str(exc)
            assert not dst.exists()
        else:
            img = tifffile.imread(dst)  # a complete, valid image
            assert img.ndim == 3 and img.shape[2] == 3
        finally:
            faulthandler.cancel_dump_traceback_later()
        assert list(dst.parent.glob(f"{output.TMP_PREFIX}*")) == []
        assert src.read_bytes() == data
