"""Test-session settings and the fixtures most test files share.

The suite runs in parallel processes (pytest-xdist, ``-n auto --dist loadfile`` in pytest.ini: one worker per CPU
core, a test file's tests on one worker so its module fixtures are built once). Each worker, and every process
a test starts, gets an equal share of the cores as torch/OpenMP threads, so two workers on two cores do not
oversubscribe them (OpenMP threads that wait for a busy core spin and slow everything down).

Devices: a test means the CPU unless it is marked ``cuda`` (``-m cuda``, ``tests/test_cuda.py``). For every
other test CUDA is hidden for the whole session -- ``torch.cuda.is_available()`` answers False in this process and
``CUDA_VISIBLE_DEVICES`` is empty for the processes tests start -- so the suite builds the same CPU trainers on a
GPU workstation as on a laptop. A ``cuda`` test asks for the ``cuda_device`` fixture, which lifts the pin for that
test (and skips it where there is no GPU).

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


import torch  # noqa: E402  (after the thread settings above)

#: the machine's own answer and setting, read once before the pin below (``cuda_device`` restores them)
_REAL_IS_AVAILABLE = torch.cuda.is_available
CUDA_PRESENT = _REAL_IS_AVAILABLE()
_ENV_CUDA_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="session", autouse=True)
def _cpu_pinned():
    """Hide CUDA from every test (session-wide, so module fixtures that build trainers are covered too)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.cuda, "is_available", lambda: False)
    patch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield
    patch.undo()


@pytest.fixture
def cuda_device(request):
    """``torch.device("cuda")`` for a test marked ``cuda``, with the CPU pin lifted for it; skipped without a GPU."""
    if request.node.get_closest_marker("cuda") is None:
        raise RuntimeError("the cuda_device fixture is for tests marked @pytest.mark.cuda")
    if not CUDA_PRESENT:
        pytest.skip("no CUDA device")
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.cuda, "is_available", _REAL_IS_AVAILABLE)
    patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if _ENV_CUDA_VISIBLE is not None:
        patch.setenv("CUDA_VISIBLE_DEVICES", _ENV_CUDA_VISIBLE)
    yield torch.device("cuda")
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def _no_environment_report():
    """Session-wide, so that module fixtures which run train.py in this process are covered too."""
    import trainers.runner

    patch = pytest.MonkeyPatch()
    patch.setattr(trainers.runner, "collect_env_info", lambda: "(environment report skipped in tests)")
    yield
    patch.undo()


def pytest_collection_modifyitems(config, items):
    """tests/suite.py reruns the numeric tests from the files it finds the marker in: a numeric test anywhere else
    (a marker applied another way) stops the session here rather than escaping the capability reruns."""
    from suite import numeric_files

    files = set(numeric_files())
    stray = sorted({str(item.path) for item in items if item.get_closest_marker("numeric")} - files)
    if stray:
        raise pytest.UsageError(f"numeric tests outside the files tests/suite.py reruns: {stray}; mark them with "
                                f"pytest.mark.numeric in the file")


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
