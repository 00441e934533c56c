"""tools.sweep without a scheduler: spec checking, expansion, dependencies, dry runs, the paper specs' job counts,
and Slurm's failures (stand-ins for sbatch and squeue)."""
import json
import os
import shlex
from pathlib import Path

import pytest

from tools.sweep import __main__ as cli
from tools.sweep import spec as specs
from tools.sweep.driver import Sweep, last_error_line

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp_path, **kw):
    spec = dict(name="t", protocol="base2new", methods=["mpl"], datasets=["digits"], seeds=[1],
                output=str(tmp_path / "out"), data=str(tmp_path / "data"))
    spec.update(kw)
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def test_method_and_dataset_names_come_from_the_scripts_and_the_registry():
    methods = specs.method_folders()
    assert methods["mpl"] == "MPL" and methods["zsclip"] == "ZeroshotCLIP" and methods["coop"] == "CoOp"
    names = specs.dataset_names()
    assert {"digits", "imagenet", "eurosat", "imagenet_sketch"} <= set(names)


@pytest.mark.parametrize("field,value,expected", [
    ("methods", ["mpl", "nosuchmethod"], ["unknown method 'nosuchmethod'", "mpl (MPL)", "coop (CoOp)"]),
    ("datasets", ["digits", "nosuchset"], ["unknown dataset 'nosuchset'", "eurosat", "digits"]),
    ("protocol", "b2n", ["unknown protocol 'b2n'", "base2new, crossdataset, dg, fewshot"]),
    ("executor", "kubernetes", ["unknown executor"]),
    ("opts", ["OPTIM.MAX_EPOCH"], ["KEY VALUE pairs"]),
    ("opts", {"OPTIM.MAX_EPOCH": [1, 2]}, ["'opts' must be KEY VALUE pairs of single values"]),
    ("checkpoint_every", "abc", ["'checkpoint_every' must be a whole number >= 0, got 'abc'"]),
    ("checkpoint_every", -1, ["'checkpoint_every' must be a whole number >= 0, got -1"]),
    ("checkpoint_every", True, ["'checkpoint_every' must be a whole number >= 0, got True"]),
    ("max_attempts", "abc", ["'max_attempts' must be a whole number >= 1, got 'abc'"]),
    ("max_attempts", 0, ["'max_attempts' must be a whole number >= 1, got 0"]),
    ("name", 123, ["'name' must be one folder name", "got 123"]),
    ("name", "../../../x", ["'name' must be one folder name", "got '../../../x'"]),
    ("name", "a/b", ["'name' must be one folder name", "got 'a/b'"]),
    ("seeds", ["1"], ["'seeds' must be a non-empty list of non-negative integers, got ['1']"]),
    ("source", 7, ["'source' must be a dataset name, got 7"]),
    ("output", ["x"], ["'output' must be a folder path, got ['x']"]),
    ("env", {"CFG": ["a"]}, ["'env' must be a mapping NAME: VALUE"]),
    ("env", {"BAD NAME": "a"}, ["'env' must be a mapping NAME: VALUE"]),
    ("env", {"CFG": "../../../../../../../../x"}, ["outside the output folder", "use plain names"]),
    ("local", {"workers": 0}, ["'local.workers' must be a whole number >= 1, got 0"]),
    ("slurm", {"time": "abc"}, ["'slurm.time' must be a whole number >= 1, got 'abc'"]),
    ("slurm", {"gpus": -1}, ["'slurm.gpus' must be a whole number >= 0, got -1"]),
    ("slurm", {"mem": "lots"}, ["'slurm.mem' must be a memory size such as 16000 (MB), 32G or 32GB, got 'lots'"]),
    ("slurm", {"partition": 5}, ["'slurm.partition' must be a partition name, got 5"]),
    ("slurm", {"nodes": 2}, ["'slurm' must be a mapping with the keys partition, time"]),
])
def test_bad_specs_fail_before_anything_is_written(tmp_path, capsys, field, value, expected):
    """One line naming the key, the value and what is allowed; exit status 2; no folder anywhere (the spec's
    output folder is three levels down, so a name that climbs out of it would show)."""
    path = write_spec(tmp_path, **{"output": str(tmp_path / "a" / "b" / "out"), field: value})
    before = sorted(tmp_path.rglob("*"))
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and all(e in err for e in expected), err
    assert sorted(tmp_path.rglob("*")) == before and not list(tmp_path.parent.glob("x"))


@pytest.mark.parametrize("flags,expected", [
    (["--time", "0"], "the command line: 'slurm.time' must be a whole number >= 1, got 0"),
    (["--max-concurrent", "0"], "'slurm.max_concurrent' must be a whole number >= 1, got 0"),
    (["--mem", "a lot"], "'slurm.mem' must be a memory size"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--max-attempts", "0"], "'max_attempts' must be a whole number >= 1, got 0"),
])
def test_bad_flags_fail_before_anything_is_written(tmp_path, capsys, flags, expected):
    path = write_spec(tmp_path)
    assert cli.main([str(path), "--executor", "slurm", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def _fake_slurm(tmp_path, monkeypatch, sbatch="", squeue=""):
    """Stand-ins for sbatch and squeue on PATH: each prints its text on stderr and exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, text in (("sbatch", sbatch), ("squeue", squeue)):
        if text:
            (bin_dir / tool).write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(text)} >&2\nexit 1\n")
            (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_an_sbatch_refusal_is_one_line_with_exit_status_3(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    _fake_slurm(tmp_path, monkeypatch, sbatch="sbatch: error: invalid partition specified: nope\n"
                                                "sbatch: error: Batch job submission failed: Invalid partition name")
    path = write_spec(tmp_path)
    assert cli.main([str(path), "--executor", "slurm", "--partition", "nope", "--poll", "0", "--no-tables"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: sbatch refused the 1 job(s): invalid partition specified: nope; Batch job submission "
                   "failed: Invalid partition name; check the slurm options (partition, account, qos, time, gpus, "
                   "cpus, mem, constraint) and run the same command again (finished jobs are skipped)"]


def test_squeue_failures_are_tolerated_for_a_while_then_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    from tools.sweep.executors import SchedulerError, SlurmExecutor

    _fake_slurm(tmp_path, monkeypatch, squeue="squeue: error: slurm_load_jobs error: Unable to contact slurm "
                                              "controller (connect failure)")
    executor = SlurmExecutor(tmp_path / "logs")
    records = {"job": {"slurm_id": "7"}}
    assert executor.poll(records) is None and executor.poll(records) is None  # a controller that restarts
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: squeue failed (slurm_load_jobs error: Unable to contact")
    executor.squeue_patience_s = 0
    with pytest.raises(SchedulerError, match=r"^squeue has failed for \d+ s \(slurm_load_jobs error: Unable to "
                                             r"contact slurm controller \(connect failure\)\); the submitted jobs"):
        executor.poll(records)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no squeue at all
    with pytest.raises(SchedulerError, match="squeue cannot be run"):
        executor.poll(records)


def test_unknown_spec_key_and_a_method_without_the_protocol(tmp_path):
    with pytest.raises(specs.SpecError, match="unknown key.*epochs.*valid keys"):
        specs.load(write_spec(tmp_path, epochs=2))
    with pytest.raises(specs.SpecError, match="zsclip.*no script for protocol 'fewshot'"):
        specs.load(write_spec(tmp_path, protocol="fewshot", methods=["zsclip"]))


def test_trainer_names_are_accepted_and_jobs_are_the_scripts_commands(tmp_path):
    spec = specs.load(write_spec(tmp_path, methods=["MPL", "ZeroshotCLIP"], seeds=[1, 2],
                                 opts={"OPTIM.MAX_EPOCH": 2}, env={"SHOTS": 4}))
    jobs = {j.key: j for j in specs.expand(spec)}
    assert sorted(jobs) == ["mpl/base2new/test/digits/seed1", "mpl/base2new/test/digits/seed2",
                            "mpl/base2new/train/digits/seed1", "mpl/base2new/train/digits/seed2",
                            "zsclip/base2new/test/digits/seed1", "zsclip/base2new/test/digits/seed2"]
    train = jobs["mpl/base2new/train/digits/seed1"]
    assert train.command == ["bash", "scripts/mpl/base2new_train.sh", "digits", "1", "--", "OPTIM.MAX_EPOCH", "2",
                             "TRAIN.CHECKPOINT_FREQ", "1"]
    out = tmp_path / "out"
    assert train.dirs == [str(out / "base2new/train_base/digits/shots_4/MPL/tiny_digits/seed1")]
    test = jobs["mpl/base2new/test/digits/seed1"]
    assert test.after == [train.key] and "TRAIN.CHECKPOINT_FREQ" not in test.command
    assert test.dirs == [str(out / "base2new/test_new/digits/shots_4/MPL/tiny_digits/seed1")]
    zs = jobs["zsclip/base2new/test/digits/seed2"]
    assert zs.after == [] and zs.command == ["bash", "scripts/zsclip/base2new_test.sh", "digits", "2", "--",
                                              "OPTIM.MAX_EPOCH", "2"]
    assert zs.dirs == [str(out / f"base2new/test_{p}/digits/shots_4/ZeroshotCLIP/tiny_digits/seed2")
                       for p in ("base", "new")]
    assert train.env["SHOTS"] == "4" and train.env["OUTPUT"] == str(out)


def test_cross_dataset_tests_share_one_imagenet_training_per_seed(tmp_path):
    spec = specs.load(write_spec(tmp_path, protocol="crossdataset", datasets=["eurosat", "dtd"], seeds=[1, 2]))
    jobs = specs.expand(spec)
    trains = [j for j in jobs if j.phase == "train"]
    assert [j.key for j in trains] == ["mpl/crossdataset/train/imagenet/seed1", "mpl/crossdataset/train/imagenet/seed2"]
    assert trains[0].command[:4] == ["bash", "scripts/mpl/xd_train.sh", "imagenet", "1"]
    assert trains[0].dirs[0].endswith("crossdataset/imagenet/MPL/vit_b4_c1_add2_rm1_cross_datasets_16shots/seed1")
    tests = [j for j in jobs if j.phase == "test"]
    assert len(tests) == 4 and all(j.after == [f"mpl/crossdataset/train/imagenet/seed{j.args[1]}"] for j in tests)
    assert tests[0].dirs[0].endswith("crossdataset/evaluation/eurosat/MPL/vit_b4_c1_add2_rm1_cross_datasets_16shots/seed1")


def test_a_dataset_or_shot_count_of_its_own_gets_its_own_config_folder(tmp_path):
    # ProGrad's few-shot config depends on the shots and the dataset, CoOp's base-to-new one on the dataset: the
    # sweep must expect the folders the scripts write (tools/method_defaults.py), not the method's generic ones.
    spec = specs.load(write_spec(tmp_path, protocol="fewshot", methods=["prograd"], datasets=["dtd", "caltech101"],
                                 shots=[1, 8]))
    dirs = {j.key: j.dirs[0] for j in specs.expand(spec)}
    out = tmp_path / "out"
    assert dirs["prograd/fewshot/train/dtd/shots8/seed1"] == str(out / "fewshot/dtd/shots_8/ProGrad/vit_b16_lambda0.8/seed1")
    assert dirs["prograd/fewshot/train/dtd/shots1/seed1"] == str(out / "fewshot/dtd/shots_1/ProGrad/vit_b16_ep50/seed1")
    assert dirs["prograd/fewshot/train/caltech101/shots8/seed1"] == str(out / "fewshot/caltech101/shots_8/ProGrad/vit_b16/seed1")
    spec = specs.load(write_spec(tmp_path, methods=["prograd"], datasets=["imagenet", "dtd"]))
    dirs = {j.key: j.dirs[0] for j in specs.expand(spec)}
    assert dirs["prograd/base2new/train/imagenet/seed1"].endswith("/ProGrad/vit_b16_ep50/seed1")
    assert dirs["prograd/base2new/train/dtd/seed1"].endswith("/ProGrad/vit_b16_ep100/seed1")


def test_caspl_sweeps_share_one_phase1_run_per_dataset_and_expect_run_sh_folders(tmp_path):
    spec = specs.load(write_spec(tmp_path, methods=["mpl", "promptsrc"], datasets=["digits", "eurosat"],
                                 seeds=[1, 2], caspl=True))
    jobs = {j.key: j for j in specs.expand(spec)}
    out = tmp_path / "out"
    boosts = sorted(k for k in jobs if "/boost/" in k)
    assert boosts == ["caspl/base2new/boost/digits/seed1", "caspl/base2new/boost/eurosat/seed1"]  # not per method
    boost = jobs["caspl/base2new/boost/eurosat/seed1"]
    assert boost.command == ["bash", "scripts/caspl/run.sh", "boost", "eurosat", "base2new_train"]
    assert boost.dirs == [str(out / "caspl/boost/eurosat/CasPL/vit_b16_c2_ep20_batch4_8+8ctx_l12/seed1")]
    assert boost.env["BOOST_OPTS"] == "TRAIN.CHECKPOINT_FREQ 1"  # phase 1 resumes from its last epoch too
    train = jobs["promptsrc/base2new/train/eurosat/seed2"]
    assert train.command[:6] == ["bash", "scripts/caspl/run.sh", "promptsrc", "base2new_train", "eurosat", "2"]
    assert train.after == [boost.key]
    # the method's CasPL config (CASPL_SCRIPT_CONFIGS), under the folder named after the phase-1 config
    assert train.dirs == [str(out / "caspl/vit_b16_c2_ep20_batch4_8+8ctx_l12/base2new/train_base/eurosat/shots_16"
                              / "PromptSRC/caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12/seed2")]
    test = jobs["mpl/base2new/test/digits/seed1"]
    assert set(test.after) == {"mpl/base2new/train/digits/seed1", "caspl/base2new/boost/digits/seed1"}
    assert test.dirs == [str(out / "caspl/tiny_digits/base2new/test_new/digits/shots_16/MPL/tiny_digits/seed1")]

    spec = specs.load(write_spec(tmp_path, protocol="crossdataset", datasets=["dtd"], source="eurosat", caspl=True,
                                 env={"INDUCTIVE": 1}))
    jobs = {j.key: j for j in specs.expand(spec)}
    tag = "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1_inductive"
    assert jobs["caspl/crossdataset/boost/eurosat/seed1"].dirs == [str(out / "caspl/boost/eurosat/CasPL" / tag / "seed1")]
    assert jobs["mpl/crossdataset/train/eurosat/seed1"].after == ["caspl/crossdataset/boost/eurosat/seed1"]
    test = jobs["mpl/crossdataset/test/dtd/seed1"]
    assert test.env["SOURCE"] == "eurosat" and test.command[:5] == ["bash", "scripts/caspl/run.sh", "mpl", "xd_test", "dtd"]
    assert test.dirs[0].startswith(str(out / "caspl" / tag / "crossdataset/evaluation/dtd/MPL/"))


def test_caspl_sweep_needs_methods_that_train(tmp_path):
    with pytest.raises(specs.SpecError, match="ZeroshotCLIP does not"):
        specs.load(write_spec(tmp_path, methods=["zsclip", "mpl"], caspl=True))
    with pytest.raises(specs.SpecError, match="'caspl' must be true or false"):
        specs.load(write_spec(tmp_path, caspl="yes"))


def test_a_phase_shared_by_all_seeds_is_one_declarative_entry(tmp_path, monkeypatch):
    # The shape of CasPL: a phase-1 run per dataset (seed 1) that every phase-2 seed waits for.
    protocol = (
        specs.Phase("phase1", "fewshot_train", ("dataset",), ("{dataset}", "{seed}"), fixed={"seed": 1}, trains=True),
        specs.Phase("phase2", "base2new_train", ("dataset", "seed"), ("{dataset}", "{seed}"), after=("phase1",)),
    )
    monkeypatch.setitem(specs.PROTOCOLS, "cascade", protocol)
    spec = specs.load(write_spec(tmp_path, protocol="cascade", datasets=["digits", "eurosat"], seeds=[1, 2, 3]))
    jobs = specs.expand(spec)
    phase1 = [j.key for j in jobs if j.phase == "phase1"]
    assert phase1 == ["mpl/cascade/phase1/digits/seed1", "mpl/cascade/phase1/eurosat/seed1"]
    phase2 = [j for j in jobs if j.phase == "phase2"]
    assert len(phase2) == 6 and all(j.after == [f"mpl/cascade/phase1/{j.args[0]}/seed1"] for j in phase2)


def test_dry_run_shows_finished_unfinished_and_to_run(tmp_path, capsys):
    path = write_spec(tmp_path, seeds=[1, 2])
    spec = specs.load(path)
    jobs = {j.key: j for j in specs.expand(spec)}
    done = Path(jobs["mpl/base2new/train/digits/seed1"].dirs[0])
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    Path(jobs["mpl/base2new/train/digits/seed2"].dirs[0]).mkdir(parents=True)  # crashed: no result.json
    assert cli.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "4 jobs: 1 finished, 3 to run, 1 unfinished"
    lines = {ln.split()[-1] if "after" not in ln else ln.split(" after ")[0].split()[-1]: ln for ln in out[:-1]}
    assert any(ln.startswith("finished") and "train/digits/seed1" in ln for ln in out)
    assert any(ln.startswith("unfinished (will resume)") and "train/digits/seed2" in ln for ln in out)
    assert any("test/digits/seed2" in ln and "after mpl/base2new/train/digits/seed2" in ln for ln in out)
    assert lines and not (tmp_path / "out" / "sweeps").exists()


@pytest.mark.parametrize("name,count", [("demo", 33), ("mpl_table2_base2new", 363), ("mpl_table3_crossdataset", 195),
                                        ("mpl_dg", 87), ("mpl_fewshot", 825), ("test_demo_slurm", 4),
                                        ("caspl_base2new", 341), ("caspl_fewshot", 176), ("caspl_demo", 13)])
def test_paper_specs_dry_run_to_their_job_counts(name, count, capsys):
    assert cli.main([str(REPO / "configs" / "sweeps" / f"{name}.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{count} jobs: ")


class FakeExecutor:
    """Ends every submitted job at the next poll, writing result.json only for the keys in `succeed`."""

    name = "fake"
    concurrency = 2

    def __init__(self, jobs, succeed):
        self.jobs, self.succeed, self.submitted, self.pending = {j.key: j for j in jobs}, succeed, [], []

    def describe(self):
        return "fake"

    def submit(self, jobs_attempts):
        out = {}
        for job, attempt in jobs_attempts:
            self.submitted.append((job.key, attempt))
            self.pending.append(job.key)
            log = Path(job.dirs[0]).parent / f"{job.key.replace('/', '_')}.{attempt}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("+ bash ...\nTraceback\nerror: the thing broke on attempt %d\n" % attempt)
            out[job.key] = {"log": str(log)}
        return out

    def poll(self, records):
        states = {}
        for key in self.pending:
            if key in self.succeed:
                for d in self.jobs[key].dirs:
                    Path(d).mkdir(parents=True, exist_ok=True)
                    (Path(d) / "result.json").write_text("{}")
            states[key] = "ended"
        self.pending = []
        return states

    def shutdown(self):
        pass


def test_a_failing_job_is_tried_three_times_then_reported_and_its_dependants_not_run(tmp_path, capsys):
    spec = specs.load(write_spec(tmp_path, seeds=[1, 2]))
    jobs = specs.expand(spec)
    ok = {"mpl/base2new/train/digits/seed1", "mpl/base2new/test/digits/seed1"}
    ex = FakeExecutor(jobs, ok)
    counts = Sweep(spec, jobs, ex, poll_s=0).run()
    assert counts["done"] == 2 and counts["failed"] == 1 and counts["blocked"] == 1
    assert [a for k, a in ex.submitted if k == "mpl/base2new/train/digits/seed2"] == [1, 2, 3]
    assert "mpl/base2new/test/digits/seed2" not in [k for k, _ in ex.submitted]
    out = capsys.readouterr().out
    assert "FAILED mpl/base2new/train/digits/seed2 after 3 attempt(s): error: the thing broke on attempt 3" in out
    assert "log: " in out and "NOT RUN mpl/base2new/test/digits/seed2" in out
    state = json.loads((tmp_path / "out" / "sweeps" / "t" / "state.json").read_text())
    assert state["counts"]["failed"] == 1
    assert state["jobs"]["mpl/base2new/train/digits/seed2"]["error"].startswith("error: the thing broke")
    assert (tmp_path / "out" / "sweeps" / "t" / "status.txt").read_text().startswith("[")
    # a second command submits only what is missing or failed
    ex2 = FakeExecutor(jobs, ok | {"mpl/base2new/train/digits/seed2", "mpl/base2new/test/digits/seed2"})
    counts = Sweep(spec, jobs, ex2, poll_s=0).run()
    assert counts["done"] == 4 and [k for k, _ in ex2.submitted] == ["mpl/base2new/train/digits/seed2",
                                                                      "mpl/base2new/test/digits/seed2"]
    ex3 = FakeExecutor(jobs, set())
    assert Sweep(spec, jobs, ex3, poll_s=0).run()["done"] == 4 and ex3.submitted == []


def test_last_error_line(tmp_path):
    log = tmp_path / "log"
    log.write_text("epoch 1\nerror: DATA has no eurosat folder; run python -m datasets.prepare\nbye\n")
    assert last_error_line(log).startswith("error: DATA has no eurosat")
    assert last_error_line(tmp_path / "missing") == "(no log output)"


def test_eta_uses_the_finished_durations_and_the_jobs_running_now(tmp_path):
    spec = specs.load(write_spec(tmp_path, seeds=[1, 2, 3]))
    jobs = specs.expand(spec)
    sweep = Sweep(spec, jobs, FakeExecutor(jobs, set()), poll_s=0)
    assert sweep.eta_s() is None  # nothing finished yet
    sweep.durations = [10.0, 20.0]
    states = ["done", "done", "running", "running", "queued", "waiting"]
    sweep.state = dict(zip(sweep.state, states))
    assert sweep.eta_s() == pytest.approx(15.0 * 4 / 2)  # 4 jobs left, 2 side by side
    assert "done 2/6, running 2, queued 2, failed 0; ETA 0m30s" in sweep._line()
