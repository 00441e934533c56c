"""Host (CPU) memory: let glibc keep freed activation buffers for reuse instead of returning them to the system.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its *mmap threshold* with fresh ``mmap`` calls
and hands freed memory at the top of the heap back to the system once it exceeds the *trim threshold*; both
thresholds adapt to the sizes it has seen. An encoder whose sequence length is the same at every layer frees and
reallocates blocks of one size, which the adapted thresholds serve from the heap. A prompt method whose sequence
length changes from layer to layer (MPL adds and removes vision tokens at every layer) asks for a slightly larger
block at each layer: glibc maps fresh pages, and the first touch of every page faults and zero-fills it. Measured
on ViT-B/16 (batch 10, one thread, no grad), that made QuickGELU's elementwise products 2 to 5 times slower than
the same products in the plain encoder, about 9% of MPL's image encoding.

:func:`reuse_freed_memory` fixes both thresholds (the mmap threshold at glibc's largest, 32 MiB on 64-bit systems;
the trim threshold at 2 GiB, the largest ``mallopt`` takes), so that freed blocks stay in the heap, where later
blocks are served from them (alone or merged with free neighbours) without new pages -- what CUDA's caching
allocator does on a GPU. Blocks above 32 MiB are still mapped one by one. The cost: the process's resident memory stays near its peak
instead of shrinking between steps (memory is returned when the process ends, or by ``malloc_trim``). Nothing
changes on other C libraries (the call reports ``False``). ``train.py`` calls it for CPU runs unless
``CPU_REUSE_MEMORY False``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

__all__ = ["reuse_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD = 32 * 2 ** 20
#: freed memory at the top of the heap is kept up to this size (the largest int ``mallopt`` takes)
TRIM_THRESHOLD = 2 ** 31 - 1


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.gnu_get_libc_version  # glibc only: musl and others have no such symbol
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Fix glibc's malloc thresholds so that freed blocks are reused (see the module docstring).

    Returns True when the settings took effect, False on a C library other than glibc or when glibc refused them.
    Safe to call more than once; affects the whole process (every thread, every later allocation).
    """
    libc = _glibc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
