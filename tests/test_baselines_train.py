"""Each baseline end to end through ``train.py``: train on the base classes of a generated EuroSAT with a tiny CLIP
checkpoint, save only what is learned, reload in eval-only mode and evaluate on the new classes.
"""
import json
import re

import pytest
import torch

import train
from datasets.fixtures import make_fixture

from tiny_clip import write_tiny_checkpoint

REPO_CONFIGS = "configs/trainers"
# method -> (config folder, options for the tiny model, registered model name)
METHODS = {
    "CoOp": ("CoOp", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"], "prompt_learner"),
    "CoCoOp": ("CoCoOp", ["TRAINER.COCOOP.PREC", "fp32", "TRAINER.COCOOP.PROMPTS_PER_CHUNK", "10"], "prompt_learner"),
    "VPT": ("VPT", ["TRAINER.VPT.PREC", "fp32", "TRAINER.VPT.PROMPT_DEPTH_VISION", "2"], "prompt_learner"),
    "IVLP": ("IVLP", ["TRAINER.IVLP.PREC", "fp32", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2",
                      "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2"], "VLPromptLearner"),
    "PromptSRC": ("PromptSRC", ["TRAINER.PROMPTSRC.PREC", "fp32", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2",
                                "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.GPA_MEAN", "1",
                                "TRAINER.PROMPTSRC.GPA_STD", "1"], "VLPromptLearner"),
}
LOSS = re.compile(r"^epoch \[(\d+)/2\] batch \[(\d+)/(\d+)\] .* loss \S+ \((\S+)\)", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    make_fixture("eurosat", root / "data", n_per_class=4, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit")
    yield root, ckpt


def argv(root, ckpt, trainer, folder, out, flags=(), opts=()):
    return ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", "configs/datasets/eurosat.yaml",
            "--config-file", f"{REPO_CONFIGS}/{folder}/tiny_digits.yaml", "--output-dir", str(out), *flags,
            "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.NUM_SHOTS", "4", *opts]


@pytest.mark.parametrize("method", list(METHODS))
def test_train_save_reload_on_new_classes(setup, method):
    root, ckpt = setup
    folder, opts, name = METHODS[method]
    out = root / method / "train"
    rc = train.main(argv(root, ckpt, method, folder, out, opts=[*opts, "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.01",
                                                                 "OPTIM.WARMUP_EPOCH", "0",
                                                                 "DATASET.SUBSAMPLE_CLASSES", "base"]))
    assert rc == 0
    log = (out / "log.txt").read_text()
    ends = {}  # epoch -> running mean of the loss at its last batch
    for m in LOSS.finditer(log):
        ends[int(m.group(1))] = float(m.group(4))
    assert ends[2] < ends[1], log[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["subsample"] == "base" and result["num_classes"] == 5 and result["epochs"] == 2
    state = torch.load(out / name / "model.pth.tar-2", map_location="cpu", weights_only=False)["state_dict"]
    # only what is learned: no CLIP weights, no class-dependent buffers, no teachers
    assert not any(k.startswith(("clip_model", "visual", "transformer", "token_", "class_prompts", "fixed"))
                   for k in state)
    # learned tensors only (PromptSRC's Gaussian aggregation sum rides along as the learner's extra state)
    assert sum(v.numel() for k, v in state.items() if not k.endswith("_extra_state")) == result["learnable_params"] > 0

    test = root / method / "test_new"
    rc = train.main(argv(root, ckpt, method, folder, test, flags=["--eval-only", "--model-dir", str(out),
                                                                  "--load-epoch", "2"],
                         opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "new"]))
    assert rc == 0
    new = json.loads((test / "result.json").read_text())
    assert new["subsample"] == "new" and new["eval_only"] and new["num_classes"] == 5 and new["num_test"] == 20
    log = (test / "log.txt").read_text()
    assert f'Loading weights to {name} from "{out / name / "model.pth.tar-2"}" (epoch = 2)' in log
    assert "* accuracy:" in log


def test_zero_shot_clip_evaluates_without_training(setup):
    root, ckpt = setup
    out = root / "zs"
    rc = train.main(argv(root, ckpt, "ZeroshotCLIP2", "CoOp", out, flags=["--eval-only"],
                         opts=["TRAINER.COOP.PREC", "fp32", "DATASET.SUBSAMPLE_CLASSES", "new"]))
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["learnable_params"] == 0 and result["num_classes"] == 5 and result["precision"] == "fp32"
    assert "load_model() is skipped" in (out / "log.txt").read_text()
    # it does not train
    assert train.main(argv(root, ckpt, "ZeroshotCLIP", "CoOp", root / "zs_train")) == 2
