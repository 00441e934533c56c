"""tools.sweep end to end: a real one-node Slurm cluster (sbatch through submitit) and the local pool.

The cluster (tests/slurm_cluster.py) needs Debian's slurm-wlm and munge (`.ci/run` installs them); without
slurmctld the Slurm tests are skipped with that reason. Jobs are the real protocol scripts on Digits with the
tiny CLIP, 1 shot per class and 4 epochs (configs/sweeps/test_demo_slurm.yaml).
"""
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from dassl.utils import load_checkpoint
from slurm_cluster import SlurmCluster, missing_reason
from sweep_helpers import data_root, make_spec, state  # noqa: F401 (data_root: a fixture)
from tools.sweep import __main__ as cli

REPO = Path(__file__).resolve().parents[1]
NO_SLURM = missing_reason()
needs_slurm = pytest.mark.skipif(NO_SLURM is not None, reason=f"no Slurm cluster: {NO_SLURM}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def weights(run_dir):
    """The learned tensors of a run's last checkpoint."""
    state = load_checkpoint(str(Path(run_dir) / "MultiModalPromptLearner" / "model.pth.tar-4"))["state_dict"]
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


@pytest.fixture(scope="module")
def demo_sweep(cluster, data_root, tmp_path_factory):
    """The demo spec (CoOp and MPL, seed 1, train + test) through real sbatch; returns (folder, stdout, seconds)."""
    folder = tmp_path_factory.mktemp("demo_sweep")
    path = make_spec(folder, data_root)
    t0 = time.time()
    proc = subprocess.run(["python3", "-m", "tools.sweep", str(path), "--poll", "1"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc.stdout, seconds


@needs_slurm
@pytest.mark.slow
def test_demo_spec_runs_through_sbatch_and_prints_its_table(demo_sweep):
    folder, out, seconds = demo_sweep
    print(f"demo sweep on Slurm: {seconds:.1f} s")
    st = state(folder)
    assert st["counts"]["done"] == 4 and st["counts"]["failed"] == 0
    for key, rec in st["jobs"].items():
        assert rec["attempts"] == 1, (key, rec)
        assert all((Path(d) / "result.json").is_file() for d in rec["dirs"])
        assert Path(rec["stdout"]).is_file()
    assert all("_" in st["jobs"][k]["slurm_id"] for k in st["jobs"] if "/train/" in k)  # one array: JOBID_INDEX
    trains = {st["jobs"][k]["slurm_id"].split("_")[0] for k in st["jobs"] if "/train/" in k}
    tests = {st["jobs"][k]["slurm_id"].split("_")[0] for k in st["jobs"] if "/test/" in k}
    assert len(trains) >= 1 and not trains & tests  # tests went out in later waves than their trainings
    assert "done 4/4" in out and "4 submitted by this command" in out
    table = out[out.index("$ python -m tools.results"):]
    assert "| CoOp" in table and "| MPL" in table and "Base" in table and "New" in table


@needs_slurm
@pytest.mark.slow
def test_rerunning_the_sweep_submits_nothing(demo_sweep, cluster, capsys):
    folder, _, _ = demo_sweep
    ids = {r["slurm_id"] for r in state(folder)["jobs"].values()}
    assert cli.main([str(folder / "spec.yaml"), "--poll", "0.2", "--no-tables"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs, 4 already finished" in out and "0 submitted by this command" in out
    assert {r["slurm_id"] for r in state(folder)["jobs"].values()} == ids
    assert cluster.squeue() == [""]


@needs_slurm
@pytest.mark.slow
def test_a_job_cancelled_mid_run_is_resubmitted_and_resumes_to_the_same_weights(demo_sweep, data_root,
                                                                                 tmp_path, capsys):
    path = make_spec(tmp_path, data_root, methods=["mpl"], seeds=[1])
    result = {}
    runner = threading.Thread(target=lambda: result.update(rc=cli.main([str(path), "--poll", "0.5"])))
    runner.start()
    run_dir = tmp_path / "out/base2new/train_base/digits/shots_1/MPL/tiny_digits/seed1"
    deadline = time.time() + 300
    while not (run_dir / "MultiModalPromptLearner" / "model.pth.tar-1").exists():
        assert time.time() < deadline and runner.is_alive(), "the training job never saved its first epoch"
        time.sleep(0.1)
    key = "mpl/base2new/train/digits/seed1"
    slurm_id = state(tmp_path)["jobs"][key]["slurm_id"]
    subprocess.run(["scancel", slurm_id], check=True)
    runner.join(timeout=400)
    assert not runner.is_alive() and result["rc"] == 0
    rec = state(tmp_path)["jobs"][key]
    assert rec["attempts"] == 2 and rec["slurm_id"] != slurm_id
    first = tmp_path / "out/sweeps/test_demo_slurm/logs" / slurm_id.split("_")[0] / f"{slurm_id}_0_log.err"
    assert "exited with status -15" in first.read_text()  # the script was killed by scancel's SIGTERM
    assert "Unfinished run found" in Path(rec["stdout"]).read_text()
    reference = Path(demo_sweep[0] / "out/base2new/train_base/digits/shots_1/MPL/tiny_digits/seed1")
    got, want = weights(run_dir), weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    acc = [json.loads((d / "result.json").read_text())["accuracy"] for d in (run_dir, reference)]
    assert acc[0] == acc[1]


@needs_slurm
def test_a_bad_spec_submits_nothing(cluster, data_root, tmp_path, capsys):
    path = make_spec(tmp_path, data_root, methods=["mpl", "caspl_typo"])
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'caspl_typo'" in err and "mpl (MPL)" in err
    assert cluster.squeue() == [""] and not (tmp_path / "out").exists()


@pytest.mark.slow
@needs_slurm
def test_an_sbatch_refusal_is_one_line_and_exit_status_3(cluster, data_root, tmp_path, capsys):
    """A partition the cluster does not have: sbatch itself refuses the first wave."""
    path = make_spec(tmp_path, data_root)
    assert cli.main([str(path), "--partition", "no_such_partition", "--poll", "0.2", "--no-tables"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: sbatch refused the 2 job(s): ") and "partition" in err[0], err
    assert cluster.squeue() == [""]


@pytest.mark.slow
def test_local_executor_runs_two_cpu_jobs_at_once(data_root, tmp_path, capsys):
    path = make_spec(tmp_path, data_root, protocol="fewshot", methods=["coop"], shots=[1], seeds=[1, 2],
                     executor="local", opts={"OPTIM.MAX_EPOCH": 1})
    assert cli.main([str(path), "--workers", "2", "--poll", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "local pool: 2 worker(s) on CPU" in out and "running 2" in out and "done 2/2" in out
    st = state(tmp_path)
    for seed in (1, 2):
        rec = st["jobs"][f"coop/fewshot/train/digits/shots1/seed{seed}"]
        assert rec["state"] == "done" and "CUDA_VISIBLE_DEVICES" not in rec["log"]
        assert Path(rec["log"]).read_text().startswith("+ bash scripts/coop/fewshot_train.sh digits")
        assert (Path(rec["dirs"][0]) / "result.json").is_file()
    assert "| CoOp" in out[out.index("$ python -m tools.results"):]

