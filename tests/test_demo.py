"""The offline demo end to end, as the README's first command runs it: Digits with the shipped tiny CLIP.

Zero-shot CLIP, then MPL trained on the base classes (0-4) through the real scripts: MPL must beat zero-shot
on the base classes, and its new-class accuracy (5-9) must be reported.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script, *args, env):
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def result(out, part, method, cfg):
    path = out / "base2new" / part / "digits" / "shots_16" / method / cfg / "seed1" / "result.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(root / "output"), PYTHON=sys.executable)
    run("zsclip/base2new_test.sh", "digits", "1", env=env)
    run("mpl/base2new_train.sh", "digits", "1", env=env)
    printed = run("mpl/base2new_test.sh", "digits", "1", env=env)
    return root / "output", printed


def test_zero_shot_is_well_above_chance(demo):
    out, _ = demo
    for part in ("test_base", "test_new"):
        zs = result(out, part, "ZeroshotCLIP", "tiny_digits")
        assert zs["num_classes"] == 5 and zs["accuracy"] >= 2 * 100 / 5  # twice chance among the 5 classes


def test_mpl_beats_zero_shot_on_base_and_reports_new(demo):
    out, printed = demo
    zs_base = result(out, "test_base", "ZeroshotCLIP", "tiny_digits")
    mpl_base = result(out, "train_base", "MPL", "tiny_digits")
    mpl_new = result(out, "test_new", "MPL", "tiny_digits")
    assert mpl_base["subsample"] == "base" and mpl_new["subsample"] == "new"
    assert mpl_base["accuracy"] > zs_base["accuracy"]
    assert mpl_new["num_test"] > 0 and 0 <= mpl_new["accuracy"] <= 100
    assert "* accuracy:" in printed
