"""The method contract, checked for every registered trainer (present and future) on a tiny CLIP.

For each trainer of ``trainers/``: it builds from its ``tiny_digits.yaml``; with a frozen prompt set composed
beside its own prompts it trains a step with a finite loss, the frozen set stays bit-identical and is neither
learnable nor saved; it evaluates; a checkpoint round trip gives bit-identical logits. Learnable counts at
ViT-B/16 on the meta device equal the README's table (read from README.md, not copied here). Plus the
contract's pieces: frozen sets from an earlier run with their origin recorded, the deployed best model, the one
``CTX_INIT`` rule and a clear error for a ResNet backbone.
"""
import json
import math
import re
from pathlib import Path

import pytest
import torch

import clip
import train
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import save_checkpoint
from datasets.fixtures import make_fixture
from tools.earlier_runs import earlier_run_opts
from trainers.common import (DeepPrompts, PromptTrainer, UserError, learned_context, load_prompt_set,
                             resolve_run_checkpoint)

from tiny_clip import write_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


def project_trainers():
    return sorted(n for n in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(n).__module__.startswith("trainers."))


PROMPT_TRAINERS = [n for n in project_trainers() if issubclass(TRAINER_REGISTRY.get(n), PromptTrainer)]
OTHER_TRAINERS = [n for n in project_trainers() if n not in PROMPT_TRAINERS]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=4)  # the depth of tiny-digits
    mp = pytest.MonkeyPatch()
    mp.setattr(train, "collect_env_info", lambda: "(environment report skipped in tests)")
    yield root, ckpt
    mp.undo()


def make_cfg(root, ckpt, name, out, opts=()):
    cls = TRAINER_REGISTRY.get(name)
    folder = getattr(cls, "CONFIG_DIR", name)
    cfg_file = REPO / "configs" / "trainers" / folder / "tiny_digits.yaml"
    assert cfg_file.is_file(), f"every method needs {cfg_file.relative_to(REPO)} (the demo and these tests use it)"
    head = ["--root", str(root / "data"), "--seed", "1", "--dataset-config-file",
            str(REPO / "configs/datasets/eurosat.yaml")]
    data = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "DATALOADER.TEST.BATCH_SIZE", "16", "DATASET.NUM_SHOTS", "2"]
    earlier = earlier_run_opts(name, (head, data), ckpt, root)  # e.g. PromptKD's teacher, a real PromptSRC run
    argv = [*head, "--trainer", name, "--config-file", str(cfg_file), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(ckpt), *data, "DATASET.SUBSAMPLE_CLASSES", "base", *earlier, *opts]
    return train.setup_cfg(train.build_parser().parse_args(argv))


def with_frozen_set(cls):
    """The trainer with a frozen deep-prompt set composed beside its own prompts (text: after, vision: before)."""
    def build_frozen_sets(self, cfg, classnames, clip_model):
        sets = cls.build_frozen_sets(self, cfg, classnames, clip_model)  # the method's own frozen sets, if any
        torch.manual_seed(123)
        return {**sets, "boost": DeepPrompts(clip_model, n_text=2, depth_text=2, n_vision=2, depth_vision=2)}

    def prompt_order(self, names=()):
        if list(names) == ["boost"]:
            return ("adapt", "boost"), ("boost", "adapt")
        return None, None  # the learner first, then the frozen sets

    return type(cls.__name__, (cls,), {"build_frozen_sets": build_frozen_sets, "prompt_order": prompt_order})


def fixed_images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def logits_of(trainer):
    trainer.set_model_mode("eval")
    with torch.no_grad():
        return trainer.model_inference(fixed_images())


@pytest.mark.parametrize("name", PROMPT_TRAINERS)
def test_prompt_trainer_contract(env, name, tmp_path):
    root, ckpt = env
    cls = with_frozen_set(TRAINER_REGISTRY.get(name))
    trainer = cls(make_cfg(root, ckpt, name, tmp_path / "run"))
    model = trainer.model
    frozen = dict(model.frozen_sets.named_parameters())
    assert frozen and not any(p.requires_grad for p in frozen.values())
    learnable = {id(p) for p in model.prompt_learner.parameters() if p.requires_grad}
    in_optim = {id(p) for group in trainer.optim.param_groups for p in group["params"]}
    assert in_optim == learnable and not in_optim & {id(p) for p in frozen.values()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"prompt_learner.{n}" for n, p in model.prompt_learner.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in frozen.items()}
    learner_before = {k: v.clone() for k, v in model.prompt_learner.named_parameters()}

    trainer.set_model_mode("train")
    trainer.num_batches, trainer.batch_idx = 10, 0
    for batch in [next(iter(trainer.train_loader_x))] * 2:
        summary = trainer.forward_backward(batch)
        assert math.isfinite(summary["loss"])
    assert all(torch.equal(before[k], v) for k, v in frozen.items())
    assert any(not torch.equal(learner_before[k], v) for k, v in model.prompt_learner.named_parameters())

    accuracy = trainer.test()
    assert 0.0 <= float(accuracy) <= 100.0

    trainer.save_model(0, str(tmp_path / "ckpt"))
    state = torch.load(tmp_path / "ckpt" / cls.MODEL_NAME / "model.pth.tar-1", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert not any("boost" in k or k.startswith(("frozen_sets", "clip_model")) for k in state)
    expected = logits_of(trainer)
    again = cls(make_cfg(root, ckpt, name, tmp_path / "run2"))
    again.load_model(str(tmp_path / "ckpt"), epoch=1)
    assert torch.equal(logits_of(again), expected)


@pytest.mark.parametrize("name", OTHER_TRAINERS)
def test_evaluation_only_trainers_build_and_evaluate(env, name, tmp_path):
    root, ckpt = env
    trainer = TRAINER_REGISTRY.get(name)(make_cfg(root, ckpt, name, tmp_path / "run"))
    assert 0.0 <= float(trainer.test()) <= 100.0


# ---------------------------------------------------------------------------------------------------------
# Learnable parameters at ViT-B/16, from the README's table
# ---------------------------------------------------------------------------------------------------------
def readme_counts():
    text = (REPO / "README.md").read_text()
    section = text.split("### Learnable parameters at ViT-B/16", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|\s*([^|]*)\|\s*([\d,]+)\s*\|", line)
        if m:
            opts = m.group(3).replace("`", "").split()
            rows.append((m.group(1), m.group(2), opts, int(m.group(4).replace(",", ""))))
    return rows


def test_readme_table_covers_every_prompt_trainer():
    covered = {row[0] for row in readme_counts()}
    assert set(PROMPT_TRAINERS) <= covered, f"add README rows for {sorted(set(PROMPT_TRAINERS) - covered)}"


@pytest.mark.parametrize("name,config,opts,count", readme_counts(), ids=lambda v: str(v))
def test_learnable_counts_vit_b16_meta(name, config, opts, count, tmp_path):
    cls = TRAINER_REGISTRY.get(name)
    args = train.build_parser().parse_args(
        ["--trainer", name, "--config-file", str(REPO / "configs/trainers" / name / config), "--output-dir",
         str(tmp_path), *opts])
    cfg = train.setup_cfg(args)
    with torch.device("meta"):
        model = clip.create_model("ViT-B/16", device="meta")
    trainer = cls.__new__(cls)
    trainer.cfg, trainer.device = cfg, torch.device("meta")
    learner = trainer.build_prompt_learner(cfg, [f"class {i}" for i in range(10)], model)
    assert sum(p.numel() for p in learner.parameters()) == count


# ---------------------------------------------------------------------------------------------------------
# The contract's pieces
# ---------------------------------------------------------------------------------------------------------
def test_frozen_set_from_an_earlier_run_is_recorded(env, tmp_path):
    """A frozen set is loaded from a run folder (epoch from its result.json), checked, and its origin (path +
    SHA256) is written into the new run's checkpoint and result.json."""
    root, ckpt = env
    model = clip.load(str(ckpt), device="cpu", precision="fp32")[0]
    source = DeepPrompts(model, n_text=2, depth_text=2, n_vision=2, depth_vision=2)
    run = tmp_path / "phase1"
    save_checkpoint({"state_dict": source.state_dict(), "epoch": 3}, str(run / "Boost"), model_name="model.pth.tar-3")
    (run / "result.json").write_text(json.dumps({"epochs": 3}))

    class CoOpBeside(TRAINER_REGISTRY.get("CoOp")):
        def build_frozen_sets(self, cfg, classnames, clip_model):
            boost = DeepPrompts(clip_model, n_text=2, depth_text=2, n_vision=2, depth_vision=2)
            return {"boost": self.load_frozen_set("boost", boost, str(run), "Boost")}

    out = tmp_path / "phase2"
    trainer = CoOpBeside(make_cfg(root, ckpt, "CoOp", out, ["OPTIM.MAX_EPOCH", "1"]))
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.frozen_sets["boost"].parameters(), source.parameters()))
    trainer.train()
    origin = json.loads((out / "result.json").read_text())["frozen_sets"]["boost"]
    path = run / "Boost" / "model.pth.tar-3"
    assert origin["path"] == str(path) and origin["epoch"] == 3
    import hashlib
    assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    state = torch.load(out / "prompt_learner" / "model.pth.tar-1", map_location="cpu", weights_only=True)["state_dict"]
    assert json.loads(state["frozen_set_origins._extra_state"]["origins"])["boost"]["sha256"] == origin["sha256"]

    wrong = DeepPrompts(model, n_text=4, depth_text=2, n_vision=2, depth_vision=2)
    with pytest.raises(UserError, match=r"ctx has shape \(2, 64\) there but \(4, 64\) here"):
        load_prompt_set(wrong, str(run), "Boost")
    with pytest.raises(UserError, match="no run folder"):
        resolve_run_checkpoint(str(tmp_path / "missing"), "Boost")


def test_no_epoch_deploys_the_best_validation_model(env, tmp_path):
    """TEST.FINAL_MODEL best_val: load_model(dir) without an epoch loads model-best, not the newest epoch."""
    root, ckpt = env
    trainer = TRAINER_REGISTRY.get("CoOp")(make_cfg(root, ckpt, "CoOp", tmp_path / "run"))
    ctx = trainer.model.prompt_learner.ctx
    with torch.no_grad():
        ctx.fill_(1.0)
    trainer.save_model(0, str(tmp_path / "ckpt"), is_best=True, model_name="model-best.pth.tar")
    with torch.no_grad():
        ctx.fill_(2.0)
    trainer.save_model(2, str(tmp_path / "ckpt"))  # the last epoch, named by the checkpoint pointer
    trainer.load_model(str(tmp_path / "ckpt"))
    assert torch.all(ctx == 1.0)
    trainer.load_model(str(tmp_path / "ckpt"), epoch=3)
    assert torch.all(ctx == 2.0)


def test_one_ctx_init_rule():
    assert learned_context("a photo of a", 16, "COOP", "phrase") == ("a photo of a", 4, True)
    assert learned_context("", 3, "COOP", "phrase") == ("X X X", 3, False)
    assert learned_context("a photo of a", 2, "MAPLE", "first_tokens") == ("a photo of a", 2, True)
    assert learned_context("a photo of a", 8, "IVLP", "first_tokens") == (" ".join(["X"] * 8), 8, False)
    with pytest.raises(UserError, match='CTX_INIT "a" has 1 token.*fewer than N_CTX=2.*class name'):
        learned_context("a", 2, "MAPLE", "first_tokens")


def test_maple_short_init_phrase_and_resnet_are_clear_errors(env, tmp_path):
    root, ckpt = env
    with pytest.raises(UserError, match="fewer than N_CTX=2"):
        TRAINER_REGISTRY.get("MaPLe")(make_cfg(root, ckpt, "MaPLe", tmp_path / "a", ["TRAINER.MAPLE.CTX_INIT", "a"]))
    resnet = write_tiny_checkpoint(tmp_path / "rn.pt", kind="resnet")
    for name in ("MPL", "MaPLe", "VPT", "IVLP"):
        with pytest.raises(UserError, match="needs a Vision Transformer backbone"):
            TRAINER_REGISTRY.get(name)(make_cfg(root, resnet, name, tmp_path / name))
