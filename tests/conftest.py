"""Test-session settings and the fixtures most test files share.

The suite runs in parallel processes (pytest-xdist, ``-n auto --dist loadfile`` in pytest.ini: one worker per CPU
core, a test file's tests on one worker so its module fixtures are built once). Each worker, and every process
a test starts, gets an equal share of the cores as torch/OpenMP threads, so two workers on two cores do not
oversubscribe them (OpenMP threads that wait for a busy core spin and slow everything down).

Fixtures: ``tiny_ckpt`` (a tiny CLIP in OpenAI's format, the depth of ``tiny-digits``), ``tiny_teacher_ckpt`` (a
wider one), ``eurosat_root`` (EuroSAT generated in its real layout). Runs started in this process skip Dassl's
environment report (it calls ``pip``), so the tests stay fast; the builders are in ``tests/tiny_runs.py``.
"""
import os

import pytest

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)  # inherited by train.py and scripts started by tests
    os.environ.setdefault("MKL_NUM_THREADS", _threads)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def _no_environment_report():
    """Session-wide, so that module fixtures which run train.py in this process are covered too."""
    import trainers.runner

    patch = pytest.MonkeyPatch()
    patch.setattr(trainers.runner, "collect_env_info", lambda: "(environment report skipped in tests)")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tiny_clip import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt", kind="vit", vision_layers=4)


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(tmp_path_factory):
    from tiny_clip import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt", kind="vit", seed=5,
                                 vision_layers=4, transformer_width=128, vision_width=128, embed_dim=48)


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory):
    from datasets.fixtures import make_fixture

    root = tmp_path_factory.mktemp("eurosat")
    make_fixture("eurosat", root, n_per_class=3, image_size=32)
    return root
