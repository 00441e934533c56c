"""DePT on the offline demo through the real scripts under CoOp (``VARIANT=dept``): trained on the base digits with
the fused head, tested on the new digits with the method's logits alone, shown as "CoOp + DePT". DePT beside every
other method runs in-process in tests/test_contract.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainers

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, env):
    proc = subprocess.run(["bash", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dept")
    env = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(root / "output"), PYTHON=sys.executable, SHOTS="4",
               VARIANT="dept")
    run(["scripts/coop/base2new_train.sh", "digits", "1", "--", "OPTIM.MAX_EPOCH", "2"], env)
    run(["scripts/coop/base2new_test.sh", "digits", "1"], env)
    return root / "output"


def test_dept_trains_on_base_and_tests_new_with_the_methods_logits(runs):
    method = "CoOp"
    tail = Path("digits/shots_4") / method / "dept_tiny_digits" / "seed1"
    train, test = runs / "base2new/train_base" / tail, runs / "base2new/test_new" / tail
    base, new = (json.loads((d / "result.json").read_text()) for d in (train, test))
    assert base["extensions"] == new["extensions"] == ["DePT"]
    assert base["dept"] == {"weight": 0.7, "lr_mult": 6.5, "fusion": True, "film": True}
    assert "DePT: the head was trained on other classes" in (test / "log.txt").read_text()
    assert base["subsample"] == "base" and new["subsample"] == "new" and new["num_test"] > 0
    # the saved learner: the method's prompts and DePT's FiLM and head (5 base digits x the embedding width)
    learner = trainers.method_of(method).learner_name
    state = torch.load(train / learner / "model.pth.tar-2", map_location="cpu", weights_only=True)["state_dict"]
    assert state["dept.head.weight"].shape[0] == 5 and "dept.film_image.scale" in state


def test_results_show_method_plus_dept_rows(runs):
    printed = subprocess.run([sys.executable, "-m", "tools.results", str(runs), "--protocol", "base2new",
                              "--datasets", "digits"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    rows = [line for line in printed.stdout.splitlines() if "+ DePT" in line]
    assert any(line.startswith("| CoOp + DePT") for line in rows)
