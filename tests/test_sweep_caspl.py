"""tools.sweep with ``caspl: true`` end to end on the local pool: CasPL's phase 1 once, then a method beside it.

A file of its own so that pytest-xdist runs it beside the Slurm tests (``--dist loadfile``).
"""
import json
from pathlib import Path

import pytest

from sweep_helpers import data_root, make_spec, state  # noqa: F401 (data_root: a fixture)
from tools.sweep import __main__ as cli


@pytest.mark.slow
def test_local_caspl_sweep_runs_phase1_once_then_the_method_beside_it(data_root, tmp_path, capsys):
    boost_opts = "OPTIM.MAX_EPOCH 1 DATALOADER.TRAIN_X.BATCH_SIZE 32"  # phase 1: one epoch of 28 steps
    path = make_spec(tmp_path, data_root, methods=["coop"], caspl=True, executor="local",
                     opts={"OPTIM.MAX_EPOCH": 1}, env={"SHOTS": 1, "BOOST_OPTS": boost_opts})
    assert cli.main([str(path), "--workers", "2", "--poll", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "done 3/3" in out
    jobs = state(tmp_path)["jobs"]
    assert sorted(jobs) == ["caspl/base2new/boost/digits/seed1", "coop/base2new/test/digits/seed1",
                            "coop/base2new/train/digits/seed1"]
    boost = Path(jobs["caspl/base2new/boost/digits/seed1"]["dirs"][0])
    tested = json.loads((Path(jobs["coop/base2new/test/digits/seed1"]["dirs"][0]) / "result.json").read_text())
    assert tested["subsample"] == "new" and tested["cascade"]["boosting_run"].startswith(str(boost))
    assert "| CoOp + CasPL" in out[out.index("$ python -m tools.results"):]
