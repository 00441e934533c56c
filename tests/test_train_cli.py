"""End-to-end tests of train.py on a tiny generated dataset with a trainer written against Dassl's public API.

One module-scoped set of runs is shared by several tests:
  A: a full 4-epoch training run;
  B: the same command interrupted (Ctrl-C) after epoch 2, then run again (it resumes from B's checkpoints);
  E: ``--eval-only --model-dir A --load-epoch 4``.
"""
import json
import os
import os.path as osp
import re

import pytest
import torch

import dassl_tiny as tiny
import train
from dassl.utils import UserError
from trainers.api import build_cfg

ITER_LINE = re.compile(
    r"^epoch \[(\d+)/4\] batch \[(\d+)/3\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) lr (\d\.\d{4}e[+-]\d\d) eta \d+:\d\d:\d\d$"
)
RESULT_BLOCK = re.compile(
    r"^=> result\n\* total: 9\n\* correct: \d+\n\* accuracy: (\d+\.\d)%\n\* error: \d+\.\d%\n"
    r"\* macro_f1: \d+\.\d%$",
    re.M,
)
# LR of each epoch: constant warmup 1e-5, then cosine from 0.002 over T=4 (printed before the epoch's last step)
EPOCH_LRS = ["1.0000e-05", "2.0000e-03", "1.7071e-03", "1.0000e-03"]


def _read(path):
    with open(path) as f:
        return f.read()


def _epoch_lrs(log):
    return {int(m.group(1)): m.group(3) for m in map(ITER_LINE.match, log.splitlines()) if m}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny.write_tiny_images(root)
    a, b, e = root / "A", root / "B", root / "E"
    out = {"root": root, "A": a, "B": b, "E": e}

    out["rc_A"] = train.main(tiny.tiny_argv(root, a))

    tiny.DasslTinyLinear.stop_after_epoch = 2
    try:
        out["rc_B1"] = train.main(tiny.tiny_argv(root, b))
    finally:
        tiny.DasslTinyLinear.stop_after_epoch = None
    out["B1_files"] = sorted(os.listdir(b))
    out["B1_log"] = _read(b / "log.txt")
    out["rc_B2"] = train.main(tiny.tiny_argv(root, b))

    out["rc_E"] = train.main(
        tiny.tiny_argv(root, e, "--eval-only", "--model-dir", str(a), "--load-epoch", "4")
    )
    return out


def test_training_log_has_dassls_lines_in_order(runs):
    assert runs["rc_A"] == 0
    log = _read(runs["A"] / "log.txt")
    lines = log.splitlines()
    iter_lines = [line for line in lines if line.startswith("epoch [")]
    assert len(iter_lines) == 4 and all(ITER_LINE.match(line) for line in iter_lines)  # PRINT_FREQ 2 of 3 batches
    assert _epoch_lrs(log) == dict(enumerate(EPOCH_LRS, 1))
    i = lines.index("Finish training")
    assert lines[i + 1:i + 3] == ["Deploy the last-epoch model", "Evaluate on the *test* set"]
    assert re.match(r"Elapsed: \d+:\d\d:\d\d$", lines[-1])
    block = RESULT_BLOCK.search(log)
    assert block and block.start() > log.index("Finish training")
    assert "Setting fixed seed" not in log  # printed before the logger starts, as in the original


def test_training_checkpoints_are_dassls_layout(runs):
    ckpt_dir = runs["A"] / "linear_probe"
    assert sorted(os.listdir(ckpt_dir)) == ["checkpoint"] + [f"model.pth.tar-{e}" for e in range(1, 5)]
    assert _read(ckpt_dir / "checkpoint") == "model.pth.tar-4\n"
    ckpt = torch.load(ckpt_dir / "model.pth.tar-4", weights_only=True)
    assert {"state_dict", "epoch", "optimizer", "scheduler", "val_result"} <= set(ckpt) and ckpt["epoch"] == 4
    assert (runs["A"] / "tensorboard").is_dir() and os.listdir(runs["A"] / "tensorboard")


def test_result_json_records_the_run(runs):
    a = runs["A"]
    rec = json.loads(_read(a / "result.json"))
    assert rec["schema"] == 1 and rec["status"] == "finished" and rec["eval_only"] is False
    assert (rec["method"], rec["config"], rec["dataset"], rec["dataset_config"]) == (
        "DasslTinyLinear", "tiny_method", "DasslTinyColors", "tiny_data")
    assert (rec["seed"], rec["epochs"], rec["split"], rec["num_test"], rec["num_classes"]) == (1, 4, "test", 9, 3)
    assert rec["subsample"] == "all" and rec["shots"] == -1 and rec["device"] == "cpu"
    assert rec["learnable_params"] == 3 * 8 * 8 * 3 + 3
    assert "{:.1f}".format(rec["accuracy"]) == RESULT_BLOCK.search(_read(a / "log.txt")).group(1)
    assert rec["error"] == pytest.approx(100 - rec["accuracy"])
    assert rec["train_time_s"] > 0 and rec["train_images_per_s"] > 0 and rec["eval_images_per_s"] > 0
    assert rec["model_dir"] is None and rec["output_dir"] == str(a)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["finished_at"])
    assert set(rec["versions"]) == {"python", "torch", "torchvision", "project"}
    assert rec["resolved_config"] == "config.yaml" and (a / "config.yaml").is_file()


def test_eval_only_reloads_the_saved_model(runs):
    assert runs["rc_E"] == 0
    log = _read(runs["E"] / "log.txt")
    assert 'Loading weights to linear_probe from "{}" (epoch = 4)'.format(
        osp.join(runs["A"], "linear_probe", "model.pth.tar-4")) in log
    assert "Evaluate on the *test* set" in log and "Finish training" not in log
    rec = json.loads(_read(runs["E"] / "result.json"))
    trained = json.loads(_read(runs["A"] / "result.json"))
    assert rec["eval_only"] is True and rec["epochs"] == 4 and rec["model_dir"] == str(runs["A"])
    assert rec["train_time_s"] == 0 and rec["train_images_per_s"] is None
    assert rec["accuracy"] == trained["accuracy"] and rec["macro_f1"] == trained["macro_f1"]
    assert RESULT_BLOCK.search(log).group(1) == "{:.1f}".format(rec["accuracy"])


def test_eval_only_without_registered_models(runs, tmp_path):
    """ZeroshotCLIP-style trainers register nothing: load_model("") is skipped and test() still works."""
    out = tmp_path / "zs"
    assert train.main(tiny.tiny_argv(runs["root"], out, "--eval-only", "--trainer", "DasslTinyZeroShot")) == 0
    log = _read(out / "log.txt")
    assert "Note that load_model() is skipped as no pretrained model is given" in log
    assert RESULT_BLOCK.search(log)
    rec = json.loads(_read(out / "result.json"))
    assert rec["learnable_params"] == 0 and rec["epochs"] is None and rec["model_dir"] is None


def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(runs):
    assert runs["rc_B1"] == 130 and runs["rc_B2"] == 0
    assert "result.json" not in runs["B1_files"]  # an interrupted run is not a finished run
    assert "Finish training" not in runs["B1_log"]
    resumed_logs = [f for f in os.listdir(runs["B"]) if f.startswith("log.txt-")]
    assert len(resumed_logs) == 1  # the second run did not overwrite the first run's log
    log2 = _read(runs["B"] / resumed_logs[0])
    assert "Previous epoch: 2" in log2
    assert _epoch_lrs(log2) == {3: EPOCH_LRS[2], 4: EPOCH_LRS[3]}  # LR decay continues after the resume
    for epoch in (3, 4):
        a, b = tiny.final_weights(runs["A"], epoch), tiny.final_weights(runs["B"], epoch)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (epoch, k)
    assert json.loads(_read(runs["B"] / "result.json"))["accuracy"] == json.loads(
        _read(runs["A"] / "result.json"))["accuracy"]


def test_interrupt_message_says_how_to_resume(runs, capsys, tmp_path):
    tiny.DasslTinyLinear.stop_after_epoch = 1
    try:
        rc = train.main(tiny.tiny_argv(runs["root"], tmp_path / "out", "OPTIM.MAX_EPOCH", "2"))
    finally:
        tiny.DasslTinyLinear.stop_after_epoch = None
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == ['interrupted: run the same command with --resume "{}" to continue from the last '
                                 "saved epoch".format(tmp_path / "out")]


def test_best_val_mode_saves_and_deploys_the_best_model(runs, tmp_path):
    out = tmp_path / "bv"
    argv = tiny.tiny_argv(runs["root"], out, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2",
                          "TRAIN.CHECKPOINT_FREQ", "0", "TRAIN.PRINT_FREQ", "5")
    assert train.main(argv) == 0
    log = _read(out / "log.txt")
    assert log.count("Evaluate on the *val* set") == 2
    assert len([line for line in log.splitlines() if line.startswith("epoch [")]) == 6  # 3 batches < PRINT_FREQ
    assert "Deploy the model with the best val performance" in log
    best = torch.load(out / "linear_probe" / "model-best.pth.tar", weights_only=True)
    assert sorted(os.listdir(out / "linear_probe")) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-2"]
    # the selected epoch is the first with the best validation accuracy of those the log printed
    val = [float(m) for m in re.findall(r"Evaluate on the \*val\* set\n=> result\n(?:.*\n){2}\* accuracy: "
                                        r"(\d+\.\d)%", log)]
    assert len(val) == 2 and best["val_result"] == pytest.approx(max(val), abs=0.05)
    assert best["epoch"] == val.index(max(val)) + 1
    last = torch.load(out / "linear_probe" / "model.pth.tar-2", weights_only=True)
    same = all(torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())
    assert same == (best["epoch"] == 2)  # the deployed weights are the selected epoch's


# ------------------------------------------------------------------------------------------------------------------
# Config merge order and flags
# ------------------------------------------------------------------------------------------------------------------
def _cfg(tmp_path, *argv):
    return build_cfg(list(argv))


def test_merge_order_defaults_dataset_method_flags_opts(tmp_path):
    data = tiny.write_yaml(tmp_path / "d.yaml", "SEED: 1\nOUTPUT_DIR: from_dataset\nOPTIM:\n  MAX_EPOCH: 7\n")
    method = tiny.write_yaml(tmp_path / "m.yaml", "SEED: 2\nOUTPUT_DIR: from_method\n")
    files = ["--dataset-config-file", data, "--config-file", method]
    cfg = _cfg(tmp_path, *files)
    assert (cfg.SEED, cfg.OUTPUT_DIR, cfg.OPTIM.MAX_EPOCH) == (2, "from_method", 7)
    assert "SUBSAMPLE_CLASSES" in cfg.DATASET  # the project's keys (trainers.extend_cfg) are there
    cfg = _cfg(tmp_path, *files, "--seed", "3", "--output-dir", "from_flag")
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (3, "from_flag")
    cfg = _cfg(tmp_path, *files, "--seed", "3", "--output-dir", "from_flag", "SEED", "4", "OUTPUT_DIR", "from_opts")
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (4, "from_opts")
    assert cfg.is_frozen()


def test_seed_zero_is_honoured_and_default_keeps_the_config_seed(tmp_path):
    assert _cfg(tmp_path, "--seed", "0").SEED == 0
    assert _cfg(tmp_path).SEED == -1
    method = tiny.write_yaml(tmp_path / "m.yaml", "SEED: 5\n")
    assert _cfg(tmp_path, "--config-file", method).SEED == 5


def test_unknown_keys_and_bad_values_are_clear_errors(tmp_path):
    bad = tiny.write_yaml(tmp_path / "bad.yaml", "OPTIM:\n  LRR: 0.1\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown config key OPTIM\.LRR \(did you mean OPTIM\.LR\?\)"):
        _cfg(tmp_path, "--config-file", bad)
    with pytest.raises(UserError, match=r"command-line options: unknown config key DATASET\.NUM_SHOT "):
        _cfg(tmp_path, "DATASET.NUM_SHOT", "16")
    with pytest.raises(UserError, match=r"command-line options: Type mismatch .* OPTIM\.LR"):
        _cfg(tmp_path, "OPTIM.LR", "1")
    with pytest.raises(UserError, match="KEY VALUE pairs"):
        _cfg(tmp_path, "OPTIM.LR")


# ------------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status 2
# ------------------------------------------------------------------------------------------------------------------
def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_config_file(tmp_path, capsys):
    missing = str(tmp_path / "nope" / "vit_b16.yaml")
    assert train.main(["--config-file", missing, "--output-dir", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert missing in line and "--config-file" in line
    assert not (tmp_path / "o").exists()  # nothing was started


def test_unknown_key_in_a_file_through_main(tmp_path, capsys):
    bad = tiny.write_yaml(tmp_path / "bad.yaml", "TRAINER:\n  NAME: x\n  NOT_A_KEY: 1\n")
    assert train.main(["--dataset-config-file", bad]) == 2
    assert "unknown config key TRAINER.NOT_A_KEY" in _one_error_line(capsys)


def test_missing_model_dir_and_checkpoint(runs, tmp_path, capsys):
    root = runs["root"]
    missing_dir = str(tmp_path / "no_such_run")
    argv = tiny.tiny_argv(root, tmp_path / "e1", "--eval-only", "--model-dir", missing_dir, "--load-epoch", "4")
    assert train.main(argv) == 2
    assert missing_dir in _one_error_line(capsys)

    argv = tiny.tiny_argv(root, tmp_path / "e2", "--eval-only", "--model-dir", str(runs["A"]), "--load-epoch", "9")
    assert train.main(argv) == 2
    line = _one_error_line(capsys)
    assert osp.join(str(runs["A"]), "linear_probe", "model.pth.tar-9") in line
    assert "--load-epoch: 1, 2, 3, 4" in line
    assert not (tmp_path / "e2" / "result.json").exists()


def test_unknown_trainer_name(runs, tmp_path, capsys):
    argv = tiny.tiny_argv(runs["root"], tmp_path / "o", "--trainer", "DasslTinyLinar")
    assert train.main(argv) == 2
    assert "do you mean [DasslTinyLinear]" in _one_error_line(capsys)
