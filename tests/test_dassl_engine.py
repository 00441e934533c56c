"""Unit tests of the Dassl-compatible engine: config, registries, LR schedules, checkpoints, evaluator, logging."""
import math
import os
import os.path as osp
import pickle
import random
import re
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from dassl.config import clean_cfg, get_cfg_default
from dassl.engine.run_result import build_run_result
from dassl.evaluation import EVALUATOR_REGISTRY, build_evaluator
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    CheckpointNotFoundError,
    MetricMeter,
    Registry,
    UnknownNameError,
    UserError,
    check_availability,
    get_rng_state,
    load_checkpoint,
    resume_from_checkpoint,
    save_checkpoint,
    set_rng_state,
    setup_logger,
)


# ------------------------------------------------------------------------------------------------------------------
# Config (yacs)
# ------------------------------------------------------------------------------------------------------------------
def test_default_config_is_an_independent_yacs_node():
    a, b = get_cfg_default(), get_cfg_default()
    assert isinstance(a, CN)
    a.OPTIM.LR = 0.5
    assert b.OPTIM.LR == 0.0003
    assert a.INPUT.SIZE == (224, 224) and isinstance(a.INPUT.SIZE, tuple)
    assert a.OPTIM.WARMUP_CONS_LR == 1e-5 and a.SEED == -1 and a.USE_CUDA is True
    assert a.TRAINER.FIXMATCH.CONF_THRE == 0.95  # Dassl's own trainer nodes are kept (print(cfg) matches)


def test_client_extend_cfg_with_yacs_nodes_and_merge_types():
    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN()  # what CoOp's extend_cfg does
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.SUBSAMPLE_CLASSES = "base"  # re-assignment is allowed while unfrozen
    cfg.merge_from_list(["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True", "OPTIM.LR", "0.002",
                         "DATASET.SUBSAMPLE_CLASSES", "new"])
    assert cfg.TRAINER.COOP.N_CTX == 4 and cfg.TRAINER.COOP.CSC is True
    assert cfg.OPTIM.LR == 0.002 and cfg.DATASET.SUBSAMPLE_CLASSES == "new"
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.OPTIM.LR = 1.0


def test_yacs_refuses_unknown_keys_and_wrong_types(tmp_path):
    cfg = get_cfg_default()
    with pytest.raises(AssertionError, match="Non-existent key: OPTIM.LRR"):
        cfg.merge_from_list(["OPTIM.LRR", "0.1"])
    path = tmp_path / "bad.yaml"
    path.write_text("OPTIM:\n  NOPE: 1\n")
    with pytest.raises(KeyError, match="Non-existent config key: OPTIM.NOPE"):
        cfg.merge_from_file(str(path))
    with pytest.raises(ValueError, match="Type mismatch"):
        cfg.merge_from_list(["OPTIM.LR", "1"])  # an int where the default is a float
    with pytest.raises(ValueError, match="Type mismatch"):
        cfg.merge_from_list(["OPTIM.MAX_EPOCH", "five"])


def test_yaml_strings_are_literal_evaluated(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("INPUT:\n  SIZE: (32, 32)\n  TRANSFORMS: ['normalize']\nOPTIM:\n  WARMUP_CONS_LR: 1e-5\n")
    cfg = get_cfg_default()
    cfg.merge_from_file(str(path))
    assert cfg.INPUT.SIZE == (32, 32) and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    assert cfg.INPUT.TRANSFORMS == ("normalize",)  # list -> tuple to match the default's type


def test_clean_cfg_keeps_only_the_named_trainer_node():
    cfg = get_cfg_default()
    clean_cfg(cfg, "fixmatch")
    assert sorted(cfg.TRAINER.keys()) == ["FIXMATCH", "NAME"]


# ------------------------------------------------------------------------------------------------------------------
# Registries
# ------------------------------------------------------------------------------------------------------------------
def test_registry_rejects_duplicates_and_lists_names():
    reg = Registry("THING")

    @reg.register()
    class Alpha:
        pass

    def beta():
        pass

    reg.register(beta)
    assert reg.registered_names() == ["Alpha", "beta"] and "Alpha" in reg and len(reg) == 2
    assert reg.get("Alpha") is Alpha
    with pytest.raises(KeyError, match='An object named "Alpha" was already registered in "THING" registry'):
        reg.register(Alpha)
    reg.register(Alpha, force=True)
    with pytest.raises(KeyError, match="does not exist"):
        reg.get("Gamma")
    assert "Alpha" in repr(reg)


def test_check_availability_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match=r"but got \[CoOP\] \(do you mean \[CoOp\]\?\)") as info:
        check_availability("CoOP", ["CoOp", "CoCoOp", "MaPLe"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
    check_availability("MaPLe", ["CoOp", "MaPLe"])


def test_evaluator_registry_and_builder():
    assert "Classification" in EVALUATOR_REGISTRY.registered_names()
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "Clasification"
    with pytest.raises(ValueError, match="do you mean"):
        build_evaluator(cfg)


# ------------------------------------------------------------------------------------------------------------------
# Optimizer and LR schedule
# ------------------------------------------------------------------------------------------------------------------
def _optim_cfg(lr=0.0035, max_epoch=5, warmup_type="constant", warmup_epoch=1, scheduler="cosine"):
    cfg = get_cfg_default()
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = lr
    cfg.OPTIM.MAX_EPOCH = max_epoch
    cfg.OPTIM.LR_SCHEDULER = scheduler
    cfg.OPTIM.WARMUP_EPOCH = warmup_epoch
    cfg.OPTIM.WARMUP_TYPE = warmup_type
    return cfg.OPTIM


def _run_epochs(model, optim, sched, n):
    """LR used in each of ``n`` epochs (one optimizer step per epoch, then the scheduler step, as trainers do)."""
    lrs = []
    for _ in range(n):
        lrs.append(optim.param_groups[0]["lr"])
        optim.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        optim.step()
        sched.step()
    return lrs


def _build(optim_cfg, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(2, 2)
    optim = build_optimizer(model, optim_cfg)
    return model, optim, build_lr_scheduler(optim, optim_cfg)


MAPLE_LRS = ["1.0000e-05", "3.5000e-03", "3.1658e-03", "2.2908e-03", "1.2092e-03"]


def test_cosine_with_constant_warmup_gives_the_reference_values():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated `verbose`, no "step() before optimizer.step()" warnings
        model, optim, sched = _build(_optim_cfg())
        lrs = _run_epochs(model, optim, sched, 5)
    assert ["{:.4e}".format(lr) for lr in lrs] == MAPLE_LRS


def test_coop_schedule_and_linear_warmup():
    model, optim, sched = _build(_optim_cfg(lr=0.002, max_epoch=200))
    lrs = _run_epochs(model, optim, sched, 200)
    assert ["{:.4e}".format(x) for x in lrs[:4]] == ["1.0000e-05", "2.0000e-03", "1.9999e-03", "1.9995e-03"]
    assert "{:.4e}".format(lrs[199]) == "4.9344e-07"

    model, optim, sched = _build(_optim_cfg(lr=0.3, max_epoch=10, warmup_type="linear", warmup_epoch=3))
    lrs = _run_epochs(model, optim, sched, 5)
    expected = [1e-5, 0.1, 0.2, 0.3, 0.3 * (1 + math.cos(math.pi / 10)) / 2]
    assert lrs == pytest.approx(expected)

    model, optim, sched = _build(_optim_cfg(lr=0.01, warmup_epoch=-1, scheduler="single_step"))
    assert _run_epochs(model, optim, sched, 5) == [0.01] * 5


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_lr_decay_continues_after_resume(tmp_path, stop):
    """Save after epoch ``stop``, resume into fresh objects: the live optimizer keeps following the schedule."""
    optim_cfg = _optim_cfg()
    model, optim, sched = _build(optim_cfg)
    first = _run_epochs(model, optim, sched, stop)
    state = {"state_dict": model.state_dict(), "epoch": stop, "optimizer": optim.state_dict(),
             "scheduler": sched.state_dict(), "val_result": None}
    save_checkpoint(state, str(tmp_path / "m"))

    model2, optim2, sched2 = _build(optim_cfg, seed=1)
    assert resume_from_checkpoint(str(tmp_path / "m"), model2, optim2, sched2) == stop
    rest = _run_epochs(model2, optim2, sched2, 5 - stop)
    assert ["{:.4e}".format(lr) for lr in first + rest] == MAPLE_LRS


def test_scheduler_state_of_the_original_dassl_loads(tmp_path):
    """The original pickled the successor scheduler (with a copy of the optimizer) inside the wrapper's state."""
    optim_cfg = _optim_cfg()
    model, optim, sched = _build(optim_cfg)
    _run_epochs(model, optim, sched, 2)
    legacy = {k: v for k, v in sched.__dict__.items() if k != "optimizer"}  # the original's state_dict()
    assert isinstance(legacy["successor"], torch.optim.lr_scheduler.CosineAnnealingLR)
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "optimizer": optim.state_dict(),
                "scheduler": legacy, "val_result": None}, tmp_path / "legacy.pth")
    with pytest.raises(pickle.UnpicklingError):  # not loadable safely ...
        torch.load(tmp_path / "legacy.pth", weights_only=True)
    ckpt = load_checkpoint(str(tmp_path / "legacy.pth"))  # ... load_checkpoint admits its scheduler objects by name

    model2, optim2, sched2 = _build(optim_cfg, seed=1)
    optim2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.successor.optimizer is optim2  # still drives the live optimizer
    assert ["{:.4e}".format(lr) for lr in _run_epochs(model2, optim2, sched2, 3)] == MAPLE_LRS[2:]


def test_build_optimizer_choices_and_staged_lr():
    cfg = get_cfg_default()
    model = nn.Sequential()
    model.add_module("base", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 2))
    for name, cls in [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                      ("rmsprop", torch.optim.RMSprop), ("radam", torch.optim.RAdam)]:
        cfg.OPTIM.NAME = name
        assert isinstance(build_optimizer(model, cfg.OPTIM), cls)
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.STAGED_LR = True
    cfg.OPTIM.NEW_LAYERS = ("head",)
    optim = build_optimizer(model, cfg.OPTIM)
    assert [g["lr"] for g in optim.param_groups] == pytest.approx([0.0003 * 0.1, 0.0003])
    cfg.OPTIM.NAME = "lbfgs"
    with pytest.raises(ValueError, match="optim must be one of"):
        build_optimizer(model, cfg.OPTIM)


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints and random state
# ------------------------------------------------------------------------------------------------------------------
def test_checkpoint_layout_atomic_and_weights_only(tmp_path, capsys):
    model = nn.Linear(2, 3)
    state = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 5,
             "optimizer": None, "scheduler": None, "val_result": 81.5, "rng_state": get_rng_state()}
    save_dir = str(tmp_path / "prompt_learner")
    save_checkpoint(state, save_dir, is_best=True)
    out = capsys.readouterr().out
    path = osp.join(save_dir, "model.pth.tar-5")
    assert "Checkpoint saved to {}".format(path) in out
    assert sorted(os.listdir(save_dir)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-5"]  # no temp files
    assert open(osp.join(save_dir, "checkpoint")).read() == "model.pth.tar-5\n"
    loaded = torch.load(path, weights_only=True)  # our checkpoints need no pickled objects
    assert list(loaded["state_dict"]) == ["weight", "bias"] and loaded["epoch"] == 5
    assert torch.equal(load_checkpoint(osp.join(save_dir, "model-best.pth.tar"))["state_dict"]["bias"], model.bias)

    with pytest.raises(CheckpointNotFoundError, match="No checkpoint file at") as info:
        load_checkpoint(str(tmp_path / "missing.pth"))
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError, match="File path is None"):
        load_checkpoint(None)


def test_rng_state_round_trip():
    state = get_rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


# ------------------------------------------------------------------------------------------------------------------
# Metrics, evaluator, meters, logger
# ------------------------------------------------------------------------------------------------------------------
def test_compute_accuracy_topk():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.5, 0.2]])
    target = torch.tensor([1, 1, 2, 2])
    top1, top2 = compute_accuracy(logits, target, topk=(1, 2))
    assert top1.item() == 50.0 and top2.item() == 75.0
    assert compute_accuracy((logits, None), target)[0].item() == 50.0


def test_classification_evaluator_matches_sklearn_and_prints_the_block(capsys):
    from sklearn.metrics import f1_score  # imported here: 1.4 s that every worker would pay at collection

    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    evaluator = build_evaluator(cfg, lab2cname={0: "a", 1: "b", 2: "c", 3: "d"})
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1234, 4, generator=g)
    labels = torch.randint(0, 4, (1234,), generator=g)
    evaluator.reset()
    for i in range(0, 1234, 100):
        evaluator.process(logits[i:i + 100], labels[i:i + 100])
    res = evaluator.evaluate()
    pred = logits.argmax(1)
    acc = 100.0 * (pred == labels).sum().item() / 1234
    assert list(res)[:3] == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == pytest.approx(acc) and res["error_rate"] == pytest.approx(100 - acc)
    assert res["macro_f1"] == pytest.approx(100 * f1_score(labels.numpy(), pred.numpy(), average="macro"))
    out = capsys.readouterr().out
    correct = (pred == labels).sum().item()
    assert out.startswith("Loading evaluator: Classification\n")
    assert (
        "=> result\n* total: 1,234\n* correct: {:,}\n* accuracy: {:.1f}%\n* error: {:.1f}%\n* macro_f1: {:.1f}%\n"
        "=> per-class result\n* class: 0 (a)\ttotal: ".format(correct, acc, 100 - acc, res["macro_f1"])
    ) in out
    assert re.search(r"\* accuracy: ([\.\deE+-]+)%", out).group(1) == "{:.1f}".format(acc)  # parse_test_res.py
    assert re.search(r"^\* average: \d+\.\d%$", out, re.M)


@pytest.mark.parametrize("case", range(6))
def test_macro_f1_and_confusion_matrix_equal_sklearns(case):
    """The evaluator's NumPy metrics equal scikit-learn's (what Dassl calls), including labels never predicted,
    predictions of labels absent from the ground truth, and one-class splits."""
    from sklearn.metrics import confusion_matrix, f1_score

    from dassl.evaluation.evaluator import macro_f1_score, normalized_confusion_matrix

    g = torch.Generator().manual_seed(case)
    n, k = [(50, 5), (7, 3), (200, 37), (1, 1), (30, 4), (100, 10)][case]
    y_true = torch.randint(0, k, (n,), generator=g).numpy() + (3 if case == 4 else 0)  # case 4: labels 3..6
    y_pred = torch.randint(0, k + 2, (n,), generator=g).numpy()  # some predicted labels never occur in y_true
    if case == 5:
        y_pred = y_true.copy()
    want = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
    assert macro_f1_score(y_true.tolist(), y_pred.tolist()) == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(normalized_confusion_matrix(y_true, y_pred),
                               confusion_matrix(y_true, y_pred, normalize="true"), atol=1e-12)


def test_metric_meter_format():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(2.0), "acc": 50.0})
    meter.update({"loss": 1.0, "acc": 100.0})
    assert str(meter) == "loss 1.0000 (1.5000) acc 100.0000 (75.0000)"
    with pytest.raises(TypeError):
        meter.update(1.0)


def test_setup_logger_tees_and_never_overwrites(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    first = setup_logger(str(tmp_path))
    print("hello")
    first.close()
    second = setup_logger(str(tmp_path))
    print("again")
    second.close()
    names = sorted(os.listdir(tmp_path))
    assert names[0] == "log.txt" and re.fullmatch(r"log\.txt-\d{4}(-\d\d){5}", names[1])
    assert open(tmp_path / "log.txt").read() == "hello\n"
    assert capsys.readouterr().out == "hello\nagain\n"


# ------------------------------------------------------------------------------------------------------------------
# result.json record
# ------------------------------------------------------------------------------------------------------------------
RESULT_KEYS = [
    "schema", "status", "method", "config", "dataset", "dataset_config", "seed", "subsample", "shots", "epochs",
    "eval_only", "split", "accuracy", "macro_f1", "error", "num_test", "num_classes", "classnames", "train_time_s",
    "eval_time_s", "train_images_per_s", "eval_images_per_s", "learnable_params", "backbone", "device",
    "precision", "model_dir", "output_dir", "log_file", "versions", "finished_at",
]


def _fake_trainer(**attrs):
    cfg = get_cfg_default()
    cfg.TRAINER.NAME = "MyMethod"
    model = nn.Linear(4, 2)
    model.weight.requires_grad_(False)
    base = dict(cfg=cfg, _models={"prompt_learner": model, "alias": model}, device=torch.device("cpu"),
                last_evaluation={"split": "test", "results": {"accuracy": 75.0, "error_rate": 25.0,
                                                              "macro_f1": 70.0},
                                 "num_images": 8, "time_s": 2.0},
                num_classes=2, train_time=4.0, train_images_seen=40)
    base.update(attrs)
    return types.SimpleNamespace(**base)


def test_run_result_record_fields_and_precision_sources():
    rec = build_run_result(_fake_trainer())
    assert list(rec) == RESULT_KEYS
    assert rec["learnable_params"] == 2  # the bias only, counted once although registered twice
    assert rec["train_images_per_s"] == 10.0 and rec["eval_images_per_s"] == 4.0
    assert rec["classnames"] is None  # a trainer without lab2cname
    assert build_run_result(_fake_trainer(lab2cname={1: "dog", 0: "cat"}))["classnames"] == ["cat", "dog"]
    assert rec["precision"] is None and rec["config"] is None and rec["subsample"] is None
    assert rec["method"] == "MyMethod" and rec["device"] == "cpu" and rec["accuracy"] == 75.0

    with_obj = _fake_trainer(precision=types.SimpleNamespace(name="fp16", effective="fp32"))
    assert build_run_result(with_obj)["precision"] == "fp32"
    from_cfg = _fake_trainer()
    from_cfg.cfg.TRAINER.MYMETHOD = CN()
    from_cfg.cfg.TRAINER.MYMETHOD.PREC = "fp16"
    assert build_run_result(from_cfg)["precision"] == "fp16"

    ev = build_run_result(_fake_trainer(loaded_epoch=7), eval_only=True, model_dir="out/x")
    assert ev["epochs"] == 7 and ev["train_time_s"] == 0.0 and ev["train_images_per_s"] is None
    assert ev["model_dir"] == "out/x" and ev["eval_only"] is True
