"""Arrays in ordinary pages (sidraw.buffers)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from sidraw import buffers


@pytest.mark.parametrize(
    ("shape", "dtype"), [((3, 5, 7), np.float16), ((2, 1 << 20), np.float32), ((0, 4), np.uint8)]
)
def test_empty_is_a_writable_contiguous_array(shape: tuple[int, ...], dtype: type) -> None:
    a = buffers.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable
    a[...] = 1
    assert a.sum() == a.size


def test_its_memory_lives_as_long_as_a_view_of_it() -> None:
    a = buffers.empty((4, 1024), np.float32)
    a[...] = 2.0
    view = a[1:3]
    owner = weakref.ref(a.base) if isinstance(a.base, np.ndarray) else None
    del a
    gc.collect()
    np.testing.assert_array_equal(view, 2.0)
    assert owner is None or owner() is not None
