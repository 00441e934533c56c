"""Helpers of the sweep tests that run real jobs (tests/test_sweep_slurm.py, tests/test_sweep_caspl.py)."""
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_spec(folder, data_root, **kw):
    """configs/sweeps/test_demo_slurm.yaml with its output under ``folder``, data from ``data_root`` and ``kw``."""
    with open(REPO / "configs" / "sweeps" / "test_demo_slurm.yaml") as f:
        spec = yaml.safe_load(f)
    spec.update(output=str(folder / "out"), data=str(data_root), **kw)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def state(folder, name="test_demo_slurm"):
    """The sweep's state.json under ``folder``."""
    return json.loads((folder / "out" / "sweeps" / name / "state.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Digits in its real layout (the sweeps' jobs run the real scripts on it)."""
    from datasets import digits

    root = tmp_path_factory.mktemp("sweep_data")
    digits.build(str(root / "digits"))
    return root
