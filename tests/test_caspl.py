"""CasPL: phase 1 (boosting prompts distilled from a larger frozen CLIP) and phase 2 (any method beside them)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

import clip
import train
import trainers
from datasets.fixtures import make_fixture
from trainers.caspl import distillation_loss
from trainers.compat import UserError

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("caspl")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    student = write_tiny_checkpoint(root / "student.pt", kind="vit", vision_layers=4)
    # a teacher larger than the student, with another embedding width (only logits are compared)
    teacher = write_tiny_checkpoint(root / "teacher.pt", kind="vit", seed=3, vision_layers=4, vision_width=128,
                                    transformer_width=128, embed_dim=48)
    yield root, student, teacher


def argv(root, student, trainer, out, opts=(), flags=()):
    return ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
            "--config-file", str(REPO / "configs/trainers" / trainer / "tiny_digits.yaml"), "--output-dir", str(out),
            *flags, "MODEL.BACKBONE.NAME", str(student), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "1",
            "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.01", *opts]


@pytest.fixture(scope="module")
def phase1(env):
    root, student, teacher = env
    out = root / "boost"
    rc = train.main(argv(root, student, "CasPL", out, ["KD.BACKBONE_NAME", str(teacher), "DATASET.NUM_SHOTS", "-1",
                                                        "KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2",
                                                        "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "3"]))
    assert rc == 0
    return out


def test_loss_equals_a_hand_written_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for temp in (1.0, 2.0):
        p = torch.softmax(t / temp, dim=1)
        ref = (p * (p.log() - torch.log_softmax(s / temp, dim=1))).sum() * temp ** 2 / 5
        torch.testing.assert_close(distillation_loss(s, t, temp), ref)


def test_phase1_with_a_larger_teacher_saves_exactly_the_boosting_prompts(phase1):
    result = json.loads((phase1 / "result.json").read_text())
    assert result["caspl"]["phase"] == 1 and result["caspl"]["transductive"] is True
    assert result["num_classes"] == 10  # every class, labels unused
    state = torch.load(phase1 / "BoostingPrompts" / "model.pth.tar-1", map_location="cpu",
                       weights_only=True)["state_dict"]
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}  # beside the record of the classes
    assert sorted(state) == ["ctx", "text_prompts.0", "vision_prompts.0", "vision_prompts.1", "vision_prompts.2"]
    assert result["learnable_params"] == sum(v.numel() for v in state.values()) == 2 * 64 * 2 + 3 * 2 * 64
    assert "teacher" not in " ".join(state)


@pytest.mark.parametrize("method", ["CoOp", "MPL"])
def test_phase2_keeps_the_boosting_prompts_frozen_and_records_them(env, phase1, method, tmp_path):
    root, student, _ = env
    kd = ["KD.BOOST_DIR", str(phase1), "KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2",
          "KD.PROMPT_DEPTH_VISION", "3", "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "2"]
    out = tmp_path / "phase2"
    assert train.main(argv(root, student, method, out, kd)) == 0
    result = json.loads((out / "result.json").read_text())
    boost_file = phase1 / "BoostingPrompts" / "model.pth.tar-1"
    assert result["frozen_sets"]["boost"]["sha256"] == hashlib.sha256(boost_file.read_bytes()).hexdigest()
    assert result["cascade"] == {"phase": 2, "boosting_run": str(boost_file),
                               "boosting_sha256": result["frozen_sets"]["boost"]["sha256"]}
    name = trainers.method_of(method).learner_name
    state = torch.load(out / name / "model.pth.tar-1", map_location="cpu", weights_only=True)["state_dict"]
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    assert sum(v.numel() for v in tensors.values()) == result["learnable_params"]  # the adapting prompts only

    # a rebuilt phase-2 model holds the phase-1 tensors bit for bit
    cfg = build_cfg(argv(root, student, method, tmp_path / "again", kd))
    trainer = trainers.method_of(method).cls(cfg)
    boost = torch.load(boost_file, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(boost[k], v) for k, v in trainer.model.frozen_sets["boost"].state_dict().items())

    # a phase-2 size that differs from phase 1 is one error naming both shapes
    bad = [*kd[:2], "KD.N_CTX_TEXT", "4", *kd[4:]]
    cfg = build_cfg(argv(root, student, method, tmp_path / "bad", bad))
    with pytest.raises(UserError, match=r"ctx has shape \(2, 64\) there but \(4, 64\) here"):
        trainers.method_of(method).cls(cfg)


def test_phase2_without_a_phase1_run_names_the_command(env, tmp_path):
    root, student, _ = env
    cfg = build_cfg(
        argv(root, student, "CoOp", tmp_path / "x", ["KD.BOOST_DIR", str(tmp_path / "none"), "KD.PROMPT_DEPTH_TEXT",
                                                      "2", "KD.PROMPT_DEPTH_VISION", "3"]))
    with pytest.raises(UserError, match="--trainer CasPL"):
        trainers.method_of("CoOp").cls(cfg)


# token orders per layer (shared/reference/caspl.md A7), read with clip.LayoutTrace
ORDERS = {
    "PromptSRC": (("adapt", "boost"), ("boost", "adapt"),
                  ["TRAINER.PROMPTSRC.N_CTX_TEXT", "3", "TRAINER.PROMPTSRC.N_CTX_VISION", "3",
                   "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3"]),
    "MaPLe": (("adapt", "boost"), ("boost", "adapt"), ["TRAINER.MAPLE.N_CTX", "3", "TRAINER.MAPLE.CTX_INIT", ""]),
    "CoOp": (("adapt", "boost"), ("boost", "adapt"), ["TRAINER.COOP.N_CTX", "3", "TRAINER.COOP.CTX_INIT", ""]),
    "MPL": (("boost", "adapt"), ("boost", "adapt"), ["TRAINER.MPL.N_CTX", "3"]),
}


@pytest.mark.parametrize("method", list(ORDERS))
def test_token_order_per_layer(env, phase1, method, tmp_path):
    root, student, _ = env
    text_order, vision_order, opts = ORDERS[method]
    kd = ["KD.BOOST_DIR", str(phase1), "KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2",
          "KD.PROMPT_DEPTH_VISION", "3"]
    cfg = build_cfg(argv(root, student, method, tmp_path, [*kd, *opts]))
    model = trainers.method_of(method).cls(cfg).model
    assert (model.text_order, model.vision_order) == (text_order, vision_order)
    prompts = model.prompts()
    vis, txt = clip.LayoutTrace(), clip.LayoutTrace()
    with torch.no_grad():
        model.clip_model.encode_image(torch.zeros(1, 3, 32, 32), ops=prompts.vision_ops, trace=vis)
        model.clip_model.encode_text_embeddings(prompts.text_embeddings, prompts.text_ids, ops=prompts.text_ops,
                                                n_prompt=prompts.n_text_prompt, trace=txt)
    first = 1 + (32 // 8) ** 2
    boost_v = vision_order.index("boost")
    for layer in range(3):  # boosting tokens: 2 at their place at every prompted layer, right after the patches
        parts = vis.layout[layer]
        assert parts[boost_v][1] == 2 and parts[0][0] == first
        assert boost_v == 0 or parts[0][1] == 0 or method == "CoOp"
    adapt_v = vision_order.index("adapt")
    if method != "CoOp":  # CoOp has no vision prompts; the others put theirs after the boosting tokens
        assert vis.layout[0][adapt_v][1] > 0 and vis.layout[0][adapt_v][0] == first + 2
    parts = txt.layout[0]
    b, a = text_order.index("boost"), text_order.index("adapt")
    assert parts[b][1] == 2 and parts[a][1] == 3 and parts[0][0] == 1  # right after SOS, in the declared order
    assert parts[1][0] == 1 + parts[0][1]


def test_an_unknown_teacher_is_the_usual_backbone_error(env, tmp_path, capsys):
    root, student, _ = env
    out = tmp_path / "boost"
    rc = train.main(argv(root, student, "CasPL", out, ["KD.BACKBONE_NAME", "ViT-Z/99", "DATASET.NUM_SHOTS", "-1"]))
    err = capsys.readouterr().err
    assert rc == 2 and "KD.BACKBONE_NAME: unknown model 'ViT-Z/99'" in err and "ViT-B/16" in err  # and the models
    assert not (out / "result.json").exists() and not (out / "BoostingPrompts").exists()
