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


class CudaTimer:
    """GPU time of the work queued between ``start()`` and ``stop()`` (CUDA events on the current stream); ``stop``
    waits for the device and returns seconds. The host's launch time counts only where it delays the device (an
    idle GPU waiting for launches is measured), which is what a training step costs."""

    def __init__(self):
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        torch.cuda.synchronize()  # nothing queued before counts
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000.0


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc), so that no call pays for, or is measured with, another's
    leftovers; nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
