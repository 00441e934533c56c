"""Test-session settings.

The suite runs in parallel processes (pytest-xdist, ``-n auto --dist loadfile`` in pytest.ini: one worker per CPU
core, a test file's tests on one worker so its module fixtures are built once). Each worker, and every process
a test starts, gets an equal share of the cores as torch/OpenMP threads, so two workers on two cores do not
oversubscribe them (OpenMP threads that wait for a busy core spin and slow everything down).
"""
import os

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)  # inherited by train.py and scripts started by tests
    os.environ.setdefault("MKL_NUM_THREADS", _threads)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
