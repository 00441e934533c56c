"""What the benchmarks share: waiting for the device, and handing freed heap pages back between measured calls."""
from __future__ import annotations

import ctypes

import torch

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim
except (OSError, AttributeError):  # not glibc
    _LIBC = None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc), so that no call pays for, or is measured with, another's
    leftovers; nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
