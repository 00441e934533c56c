"""MMA (adapters) and CLIP-LoRA (low-rank updates): what is particular to each beyond the method contract
(tests/test_contract.py runs both through shapes, the hand-written loss, gradient reach, checkpoints, counts)."""
import math

import pytest
import torch

import clip
import trainers
from trainers.compat import UserError
from trainers.mma import AdapterBranch

from tiny_runs import CLASSNAMES, build_for_classes, fixed_batch, tiny_cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def build(root, ckpt, name, opts=(), seed=0):
    return build_for_classes(tiny_cfg(root, ckpt, name, root / "run", list(opts)), CLASSNAMES, seed=seed)


def zero_shot_logits(trainer, images, scale):
    """CLIP's logits with "a photo of a {class}." and no adaptation."""
    model = trainer.model.clip_model
    ids = clip.tokenize([f"a photo of a {c}." for c in CLASSNAMES])
    with torch.no_grad():
        text = model.encode_text(ids)
        image = model.encode_image(images)
    text, image = text / text.norm(dim=-1, keepdim=True), image / image.norm(dim=-1, keepdim=True)
    return scale * image @ text.t()


def eval_logits(trainer, images):
    trainer.set_model_mode("eval")
    with torch.no_grad(), trainer.model.frozen_text_features():
        return trainer.model_inference(images)


# ------------------------------------------------------------------------------------------------------- MMA
def test_mma_adapters_get_the_gradient_of_an_unscaled_branch(root, tiny_ckpt):
    """The gradient-scale layers: identical forward, the adapters' gradients 1/ADAPTER_SCALE = 1000x."""
    trainer = build(root, tiny_ckpt, "MMA")
    learner = trainer.model.prompt_learner
    batch = fixed_batch(4)

    def grads(grad_scale):
        learner.zero_grad()
        text = learner.block_ops(learner.text_adapter, learner.n_text_layers, grad_scale)
        vision = learner.block_ops(learner.visual_adapter, learner.n_vision_layers, grad_scale)
        prompts = trainers.prompts.Prompts(text_ids=learner.class_prompts.token_ids, text_block_ops=text,
                                           vision_block_ops=vision)
        t = trainer.model.encode_text(prompts)
        i = trainer.model.encode_image(batch["img"], prompts)
        logits = 100 * (i / i.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).t()
        torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}

    scaled_logits, scaled = grads(True)
    plain_logits, plain = grads(False)
    assert torch.equal(scaled_logits, plain_logits)
    assert learner.scale == 0.001
    for name in plain:
        assert plain[name].abs().max() > 0, name
        want = plain[name] / learner.scale  # float rounding of x 0.001 then x 1000: 1e-5 of the largest
        torch.testing.assert_close(scaled[name], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_mma_branch_reads_ln_1_and_adds_after_the_mlp(root, tiny_ckpt):
    """With every adapter's up layer at zero, MMA is zero-shot CLIP with its fixed text; with them, it is not."""
    trainer = build(root, tiny_ckpt, "MMA")
    images = fixed_batch(3)["img"]
    scale = trainer.model.clip_model.logit_scale.exp()
    assert not torch.allclose(eval_logits(trainer, images), zero_shot_logits(trainer, images, scale), atol=1e-4)
    with torch.no_grad():
        for adapters in (trainer.model.prompt_learner.text_adapter, trainer.model.prompt_learner.visual_adapter):
            for pair in adapters.values():
                pair["up"].weight.zero_()
                pair["up"].bias.zero_()
    torch.testing.assert_close(eval_logits(trainer, images), zero_shot_logits(trainer, images, scale),
                               rtol=1e-5, atol=1e-5)


def test_mma_vit_b16_adapts_blocks_5_to_12_of_both_encoders_with_one_shared_layer(tmp_path):
    from trainers.api import build_cfg

    method = trainers.method_of("MMA")
    cfg = build_cfg(["--trainer", "MMA", "--config-file", method.config_path("vit_b16_ep5"), "--output-dir",
                     str(tmp_path)], check=False)
    model = clip.create_model("ViT-B/16", device="meta")
    learner = trainers.mma.MultiModalAdapter(cfg.TRAINER.MMA, ["a", "b"], model)
    prompts = learner()
    for ops in (prompts.text_block_ops, prompts.vision_block_ops):
        assert [i + 1 for i, op in enumerate(ops) if op is not None] == list(range(5, 13))
        assert all(op.branches[0].reads == "ln_1" and op.branches[0].scale == 0.001 for op in ops if op)
    text, vision = prompts.text_block_ops[4].branches[0].fn, prompts.vision_block_ops[4].branches[0].fn
    assert isinstance(text, AdapterBranch) and text.shared is vision.shared
    assert text.down.weight.shape == (32, 512) and vision.down.weight.shape == (32, 768)
    # Kaiming-normal, fan_out, relu: std sqrt(2 / out)
    assert learner.text_adapter["5"]["up"].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def test_mma_adapter_blocks_outside_the_encoders_are_one_error(root, tiny_ckpt):
    with pytest.raises(UserError, match="ADAPTER_START 1 and ADAPTER_END 5 must satisfy"):
        build(root, tiny_ckpt, "MMA", ["TRAINER.MMA.ADAPTER_END", "5"])


# ------------------------------------------------------------------------------------------------- CLIP-LoRA
def test_clip_lora_starts_as_zero_shot_clip_at_a_fixed_scale_100(root, tiny_ckpt):
    trainer = build(root, tiny_ckpt, "CLIPLoRA")
    images = fixed_batch(3)["img"]
    torch.testing.assert_close(eval_logits(trainer, images), zero_shot_logits(trainer, images, 100.0),
                               rtol=1e-5, atol=1e-4)


def test_clip_lora_updates_q_k_v_of_every_block_with_scale_alpha_over_sqrt_r(root, tiny_ckpt):
    trainer = build(root, tiny_ckpt, "CLIPLoRA", ["TRAINER.CLIPLORA.RANK", "4", "TRAINER.CLIPLORA.ALPHA", "3.0"])
    learner = trainer.model.prompt_learner
    learner.train()
    prompts = learner()
    model = trainer.model.clip_model
    for ops, layers in ((prompts.text_block_ops, model.transformer.layers),
                        (prompts.vision_block_ops, model.visual.transformer.layers)):
        assert len(ops) == layers
        for op in ops:
            assert [u.target for u in op.updates] == ["q", "k", "v"]
            assert all(u.scale == pytest.approx(3 / 2) and u.dropout == 0.25 for u in op.updates)
            assert all(u.down.shape[0] == 4 and not u.up.any() for u in op.updates)
    learner.eval()
    assert all(u.dropout == 0 for op in learner().vision_block_ops for u in op.updates)  # no dropout in evaluation


def test_clip_lora_dropout_acts_in_training_only(root, tiny_ckpt):
    trainer = build(root, tiny_ckpt, "CLIPLoRA")
    with torch.no_grad():
        for name, p in trainer.model.prompt_learner.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.5)
    images = fixed_batch(2)["img"]
    trainer.set_model_mode("train")
    with torch.no_grad():
        torch.manual_seed(0)
        a = trainer.model(images).logits
        torch.manual_seed(1)
        b = trainer.model(images).logits
    assert not torch.allclose(a, b)
    assert torch.equal(eval_logits(trainer, images), eval_logits(trainer, images))


def test_clip_lora_counts_iterations_and_steps_its_cosine_every_iteration(tiny_ckpt, eurosat_root, tmp_path,
                                                                          monkeypatch, capsys):
    """2 shots x 3 iterations per shot = 6 iterations of 5 batches per epoch: 2 epochs (recorded), the last cut
    after 1 batch, the schedule stepped 6 times down to MIN_LR; the length is printed when training starts (an
    eval-only run builds the same trainer and prints none)."""
    from trainers.api import build_trainer

    cfg = tiny_cfg(eurosat_root, tiny_ckpt, "CLIPLoRA", tmp_path / "run",
                   ["TRAINER.CLIPLORA.ITERS_PER_SHOT", "3", "TRAIN.CHECKPOINT_FREQ", "0", "TEST.NO_TEST", "True"])
    trainer = build_trainer(cfg)
    assert len(trainer.train_loader_x) == 5
    assert trainer.max_epoch == 2 and cfg.OPTIM.MAX_EPOCH == 2
    assert "iterations of" not in capsys.readouterr().out
    lrs = []
    real = trainer.forward_backward

    def counted(batch):
        out = real(batch)
        lrs.append(trainer.optim.param_groups[0]["lr"])
        return out

    monkeypatch.setattr(trainer, "forward_backward", counted)
    trainer.train()
    assert len(lrs) == 6
    assert "6 iterations of 5 batches per epoch: 2 epoch(s)" in capsys.readouterr().out
    cosine = [1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(1, 7)]
    assert lrs == pytest.approx(cosine, rel=1e-6)


def test_clip_lora_iterations_need_shots(root, tiny_ckpt):
    with pytest.raises(UserError, match="ITERS_PER_SHOT counts iterations per shot"):
        tiny_cfg(root, tiny_ckpt, "CLIPLoRA", root / "x", ["DATASET.NUM_SHOTS", "-1"])
    with pytest.raises(UserError, match="PARAMS"):
        tiny_cfg(root, tiny_ckpt, "CLIPLoRA", root / "x", ["TRAINER.CLIPLORA.PARAMS", "['q', 'qkv']"])


# ------------------------------------------------------------------------------------------------------ MMRL
OTHER_NAMES = ["Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


def test_mmrl_fuses_its_heads_only_on_the_dataset_and_classes_it_was_trained_on(root, tiny_ckpt, tmp_path):
    trained = build(root, tiny_ckpt, "MMRL")
    with torch.no_grad():
        for p in trained.model.prompt_learner.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    images = fixed_batch(3)["img"]
    trained.set_model_mode("eval")
    with torch.no_grad():
        out = trained.model(images)
    assert torch.equal(eval_logits(trained, images), out.logits)  # its own classes: fused
    fused = 0.7 * out.extras["logits_cls"] + 0.3 * out.extras["logits_rep"]
    torch.testing.assert_close(out.logits, fused)
    trained.save_model(0, str(tmp_path))

    def loaded(names, opts=()):
        t = build_for_classes(tiny_cfg(root, tiny_ckpt, "MMRL", root / "run", list(opts)), names, seed=1)
        t.load_model(str(tmp_path), epoch=1)
        t.set_model_mode("eval")
        with torch.no_grad():
            return t, t.model(images)

    again, out_again = loaded(CLASSNAMES)
    assert again.uses_fused_logits() and torch.equal(eval_logits(again, images), out_again.logits)
    new, out_new = loaded(OTHER_NAMES)  # new classes: the class-token logits
    assert not new.uses_fused_logits()
    assert torch.equal(eval_logits(new, images), out_new.extras["logits_cls"])
    other, _ = loaded(CLASSNAMES, ["DATASET.NAME", "ImageNetV2", "TRAINER.MMRL.REP_DIM", "2048"])  # same names,
    # another dataset (outside the table, so its REP_DIM is given as the training run had it)
    assert not other.uses_fused_logits()


def test_mmrl_dataset_table_overrides_the_yaml_and_cross_dataset_turns_it_off(root, tiny_ckpt):
    from trainers.mmrl import settings

    eurosat = tiny_cfg(root, tiny_ckpt, "MMRL", root / "run", ["TRAINER.MMRL.REG_WEIGHT", "3.0"])
    assert eurosat.DATASET.NAME == "EuroSAT" and settings(eurosat) == (0.01, 2048)
    off = tiny_cfg(root, tiny_ckpt, "MMRL", root / "run", ["TRAINER.MMRL.DATASET_TABLE", "False",
                                                           "TRAINER.MMRL.REG_WEIGHT", "0.2"])
    assert settings(off) == (0.2, 512)
    xd = tiny_cfg(root, tiny_ckpt, "MMRL", root / "run", config="vit_b16_cross_datasets")
    assert settings(xd) == (0.2, 512)
    trainer = build(root, tiny_ckpt, "MMRL")
    assert trainer.model.prompt_learner.compound_rep_tokens.shape == (5, 2048)
    assert trainer.result_extras()["mmrl"] == {"reg_weight": 0.01, "rep_dim": 2048}


def test_mmrl_vit_b16_tokens_enter_at_block_6_and_are_replaced_to_12(tmp_path):
    from trainers.api import build_cfg
    from trainers.mmrl import RepresentationLearner

    method = trainers.method_of("MMRL")
    cfg = build_cfg(["--trainer", "MMRL", "--config-file", method.config_path("vit_b16"), "--output-dir",
                     str(tmp_path)], check=False)
    model = clip.create_model("ViT-B/16", device="meta")
    learner = RepresentationLearner(cfg, ["a", "b"], model)
    prompts = learner()
    for ops, width in ((prompts.text_ops, 512), (prompts.vision_ops, 768)):
        assert [i + 1 for i, op in enumerate(ops) if op is not None] == list(range(6, 13))
        assert ops[5].add.shape == (5, width) and ops[5].replace is None
        assert all(op.replace.shape == (5, width) and op.add is None for op in ops[6:])
    assert learner.proj_rep.shape == (768, 512)


def test_mmrl_projections_start_as_copies_and_proj_rep_random(root, tiny_ckpt):
    learner = build(root, tiny_ckpt, "MMRL").model.prompt_learner
    for projections in (learner.compound_rep_tokens_r2vproj, learner.compound_rep_tokens_r2tproj):
        assert all(torch.equal(p.weight, projections[0].weight) for p in projections)
    width = learner.proj_rep.shape[0]
    assert learner.proj_rep.std().item() == pytest.approx(width ** -0.5, rel=0.2)


def test_bench_families_times_one_method_of_each_family_against_the_floor(tmp_path):
    """bench/bench_families.py end to end on the tiny CLIP (the README quotes its ViT-B/16 run): a row per method
    and class count, both text modes measured, their logits equal up to float32 sums in another order."""
    import json

    from bench import bench_families

    report = tmp_path / "families.json"
    bench_families.main(["--arch", "tiny", "--classes", "3", "--repeats", "0", "--json", str(report)])
    rows = json.loads(report.read_text())["rows"]
    assert [(r["method"], r["classes"]) for r in rows] == [(m, 3) for m in bench_families.METHODS]
    for r in rows:
        assert r["floor_s"] > 0 and r["shared_s"] > 0 and r["unshared_s"] > 0
        assert r["relative_logit_difference"] < 1e-5, r
