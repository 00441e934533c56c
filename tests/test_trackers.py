"""Experiment trackers (``TRACKER``: tensorboard, wandb, mlflow; dassl/engine/scalar_sinks.py) and evaluation
progress lines.

A short demo run (CoOp on Digits, 2 epochs) and an evaluation-only run log to all three trackers (W&B offline,
MLflow's local file store in a temporary folder); their scalars, steps and config are read back from what each
tracker wrote. Checks without a run: the default (tensorboard, Dassl's layout), ``none``, bad names, a missing
package, a tracker that cannot start, one that fails mid-run, and the progress lines.
"""
import glob
import json
import os
import struct
import sys
from pathlib import Path

import pytest

import train
from dassl.config import get_cfg_default
from dassl.engine import scalar_sinks, trainer as engine
from dassl.engine.scalar_sinks import ScalarSinks, check_trackers, open_sinks
from trainers.api import build_cfg
from trainers.compat import UserError
from trainers.config import extend_cfg

REPO = Path(__file__).resolve().parents[1]


def demo_argv(root, out, *opts, flags=()):
    return [*flags, "--root", str(root / "data"), "--seed", "1", "--trainer", "CoOp", "--dataset-config-file",
            "configs/datasets/digits.yaml", "--config-file", "configs/trainers/CoOp/tiny_digits.yaml",
            "--output-dir", str(out), "DATASET.NUM_SHOTS", "1", "DATALOADER.NUM_WORKERS", "0", *map(str, opts)]


# ---------------------------------------------------------------------------------------------------------
# Reading back what each tracker wrote (no project code)
# ---------------------------------------------------------------------------------------------------------
def read_tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path):
    """The protobuf records of a ``.wandb`` file (LevelDB's log format: 32 KiB blocks of 7-byte-header chunks,
    after W&B's 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = Path(path).read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            pending = b""
            yield record
        else:
            pending = chunk if kind == 2 else pending + chunk


def read_wandb(run_dir):
    """``(config, {tag: [(step, value), ...]})`` of the offline W&B run in ``run_dir/wandb``."""
    [path] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    config, scalars = {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)  # W&B splits "train/loss" into a nested key
                if not key.startswith("_"):
                    scalars.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return config, scalars


def read_mlflow(run_dir):
    """``(params, {tag: [(step, value), ...]})`` of the MLflow run logged for ``run_dir``."""
    import mlflow

    client = mlflow.MlflowClient()
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               filter_string=f"tags.output_dir = '{run_dir}'")
    scalars = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in run.data.metrics}
    return run.data.params, scalars


# ---------------------------------------------------------------------------------------------------------
# A training run and an evaluation-only run with every tracker (W&B offline, MLflow in a temporary file store)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("trackers")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_DIR", raising=False)
    mp.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a new local file store without it
    mp.setattr(engine, "EVAL_PROGRESS_EVERY_S", 0.0)  # a progress line after every batch (stdout: the log)
    trained, evaluated = root / "train", root / "test_new"
    try:
        assert train.main(demo_argv(root, trained, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", 2,
                                    "TRACKER", "tensorboard,wandb,mlflow")) == 0
        assert train.main(demo_argv(root, evaluated, "DATASET.SUBSAMPLE_CLASSES", "new", "TRACKER",
                                    "wandb,mlflow,tensorboard", flags=["--eval-only", "--model-dir", trained])) == 0
        yield trained, evaluated, {"wandb": read_wandb(trained), "mlflow": read_mlflow(trained),
                                   "tensorboard": ({}, read_tensorboard(trained / "tensorboard"))}, \
            {"wandb": read_wandb(evaluated), "mlflow": read_mlflow(evaluated),
             "tensorboard": ({}, read_tensorboard(evaluated / "tensorboard"))}
    finally:
        mp.undo()


@pytest.mark.slow
def test_every_tracker_holds_the_train_and_test_scalars_on_one_step_axis(tracked):
    trained, _, logged, _ = tracked
    result = json.loads((trained / "result.json").read_text())
    steps = None
    for name, (_, scalars) in logged.items():
        loss, lr = scalars["train/loss"], scalars["train/lr"]
        assert [s for s, _ in loss] == list(range(len(loss))) and len(loss) >= 2, name
        steps = steps or [s for s, _ in loss]
        assert [s for s, _ in loss] == steps and [s for s, _ in lr] == steps, name  # the same steps everywhere
        # the final test at the last training iteration (it used to be the epoch number)
        assert [s for s, _ in scalars["test/accuracy"]] == [steps[-1]], name
        assert scalars["test/accuracy"][0][1] == pytest.approx(result["accuracy"], abs=1e-4), name
    assert [v for _, v in logged["wandb"][1]["train/loss"]] == pytest.approx(
        [v for _, v in logged["tensorboard"][1]["train/loss"]], abs=1e-6)


@pytest.mark.slow
def test_wandb_and_mlflow_hold_the_resolved_config(tracked):
    trained, _, logged, _ = tracked
    wandb_config, params = logged["wandb"][0], logged["mlflow"][0]
    assert wandb_config["TRAINER"]["NAME"] == "CoOp" and wandb_config["OPTIM"]["MAX_EPOCH"] == 2
    assert wandb_config["TRACKER"] == "tensorboard,wandb,mlflow" and wandb_config["OUTPUT_DIR"] == str(trained)
    assert params["TRAINER.NAME"] == "CoOp" and params["OPTIM.MAX_EPOCH"] == "2"
    assert params["DATASET.SUBSAMPLE_CLASSES"] == "base" and float(params["OPTIM.LR"]) == 0.001
    assert len(params) > 100  # every key, in batches of MLflow's 100
    # W&B's files are in the run folder
    assert (trained / "wandb").is_dir() and not (REPO / "wandb").exists()


@pytest.mark.slow
def test_an_evaluation_only_run_logs_its_results_at_step_zero(tracked):
    _, evaluated, _, logged = tracked
    result = json.loads((evaluated / "result.json").read_text())
    for name, (_, scalars) in logged.items():
        assert set(scalars) == {"test/accuracy", "test/error_rate", "test/macro_f1"}, name
        assert scalars["test/accuracy"] == [(0, pytest.approx(result["accuracy"], abs=1e-4))], name
    assert logged["wandb"][0]["DATASET"]["SUBSAMPLE_CLASSES"] == "new"


@pytest.mark.slow
def test_evaluation_prints_progress_lines_into_the_log(tracked):
    trained, evaluated, _, _ = tracked
    log = (evaluated / "log.txt").read_text()
    lines = [line for line in log.splitlines() if line.startswith("Evaluate on the *test* set: ")]
    assert lines and lines[-1].startswith("Evaluate on the *test* set: 269/269 images (100.0%), ")


# ---------------------------------------------------------------------------------------------------------
# Without a run
# ---------------------------------------------------------------------------------------------------------
def default_cfg(**keys):
    cfg = extend_cfg(get_cfg_default())
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def test_the_default_is_tensorboard_in_dassls_layout_and_none_is_nothing(tmp_path):
    cfg = default_cfg()
    assert cfg.TRACKER == "tensorboard"
    sinks = open_sinks(cfg, str(tmp_path / "tensorboard"))
    assert sinks.names == ["tensorboard"]
    sinks.add_scalar("train/loss", 0.5, 3)
    sinks.close()
    assert read_tensorboard(tmp_path / "tensorboard") == {"train/loss": [(3, 0.5)]}
    assert open_sinks(default_cfg(TRACKER="none"), str(tmp_path / "none")) is None
    assert open_sinks(default_cfg(TRACKER=""), str(tmp_path / "none")) is None
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("value,words", [
    ("tensorbord", "unknown tracker 'tensorbord'"),
    ("wandb,comet", "unknown tracker 'comet'"),
    ("none,wandb", "none cannot be combined"),
])
def test_bad_tracker_names_are_one_error_before_the_run_folder(tmp_path, value, words, capsys):
    with pytest.raises(UserError, match=words):
        build_cfg(["TRACKER", value])
    out = tmp_path / "run"
    assert train.main(demo_argv(tmp_path, out, "TRACKER", value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TRACKER is ") and words in err[0]
    assert not out.exists()


def test_a_missing_package_is_one_error_naming_what_to_install(tmp_path, monkeypatch, capsys):
    real = scalar_sinks.importlib.util.find_spec
    monkeypatch.setattr(scalar_sinks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert check_trackers("tensorboard,wandb") == ["tensorboard", "wandb"]
    out = tmp_path / "run"
    assert train.main(demo_argv(tmp_path, out, "TRACKER", "tensorboard,mlflow")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: TRACKER mlflow: the mlflow package is not installed; pip install mlflow-skinny (or the "
                   "project's [trackers] extra), or leave mlflow out of TRACKER"]
    assert not out.exists()


def test_a_tracker_that_cannot_start_is_one_error_line_at_run_start(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses a new file store
    out = tmp_path / "run"
    assert train.main(demo_argv(tmp_path, out, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", 1,
                                "TRACKER", "tensorboard,mlflow")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tracker mlflow could not start: "), err
    assert "leave it out of TRACKER" in err[0]
    assert not (out / "prompt_learner").exists()  # nothing was trained


class Recording:
    name = "recording"

    def __init__(self):
        self.seen = []

    def write(self, tag, value, step):
        self.seen.append((tag, value, step))

    def close(self):
        self.seen.append("closed")


class FailingAfter(Recording):
    name = "wandb"

    def __init__(self, good):
        super().__init__()
        self.good = good

    def write(self, tag, value, step):
        if len(self.seen) >= self.good:
            raise RuntimeError("network unreachable\nsecond line")
        super().write(tag, value, step)


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(capsys):
    good, bad = Recording(), FailingAfter(good=1)
    sinks = ScalarSinks([good, bad])
    for step in range(3):
        sinks.add_scalar("train/loss", 1.0 / (step + 1), step)
    sinks.close()
    assert [s[2] for s in good.seen[:-1]] == [0, 1, 2] and good.seen[-1] == "closed"
    assert bad.seen == [("train/loss", 1.0, 0), "closed"]
    assert capsys.readouterr().err == ("warning: tracker wandb failed (network unreachable); the run continues "
                                       "without it\n")
    assert sinks.names == []


def test_tensorboards_refused_writes_still_stop_the_run():
    class Refused(Recording):
        name = "tensorboard"

        def write(self, tag, value, step):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        ScalarSinks([Refused()]).add_scalar("train/loss", 1.0, 0)


def test_progress_lines_every_interval_when_stdout_is_not_a_terminal(monkeypatch, capsys):
    class Loader:
        sampler = range(50_000)

    monkeypatch.setattr(engine, "EVAL_PROGRESS_EVERY_S", 0.0)
    lines = engine._ProgressLines("test", Loader())
    lines.update(12_800)
    assert capsys.readouterr().out.startswith("Evaluate on the *test* set: 12,800/50,000 images (25.6%), ")
    monkeypatch.setattr(engine, "EVAL_PROGRESS_EVERY_S", 30.0)
    lines = engine._ProgressLines("test", Loader())
    lines.update(100)  # within 30 s of the start: nothing
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(engine, "_stdout_is_tty", lambda: True)  # a terminal has its progress bar instead
    monkeypatch.setattr(engine, "EVAL_PROGRESS_EVERY_S", 0.0)
    engine._ProgressLines("test", Loader()).update(5)
    assert capsys.readouterr().out == ""
