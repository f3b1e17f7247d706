"""Large arrays in the kernel's ordinary pages.

numpy advises the kernel to back every array of 4 MiB or more with transparent huge pages
(``madvise(MADV_HUGEPAGE)``). Where the kernel then compacts memory to find free 2 MiB pages at
the first touch (``/sys/kernel/mm/transparent_hugepage/defrag`` set to ``madvise``, as Ubuntu
and Debian ship it), filling a fresh array of a few hundred MB costs far more system time than
with 4 KiB pages: on the 2-core benchmark machine, 0.45 s instead of 0.11 s for 250 MB. Staged
inference fills that much once per frame (its skip connections and input), so it allocates those
arrays here, from anonymous memory maps, which carry no such advice. The memory is returned to
the system when the last array viewing it is released.
"""

from __future__ import annotations

import math
import mmap

import numpy as np
from numpy.typing import DTypeLike


def empty(shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """An uninitialised C-contiguous array, as :func:`numpy.empty`, in ordinary pages."""
    dt = np.dtype(dtype)
    size = math.prod(shape) * dt.itemsize
    if size == 0:
        return np.empty(shape, dt)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dt).reshape(shape)
