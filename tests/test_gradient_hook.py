"""The gradient hooks: the engine's ``before_optimizer_step`` (Dassl-style trainers) and the method contract's
``adjust_gradients`` (the prompt trainers): once per step, with the final gradients, before the optimizer (and so
before its weight decay and momentum) acts; unscaled under a GradScaler, with a skipped step staying skipped; the
contract's hook also on a Dassl whose engine has no hook of its own."""
import os.path as osp

import pytest
import torch
import torch.nn as nn

import trainers
from dassl.engine import TrainerBase
from dassl.utils import set_random_seed
from datasets.fixtures import make_fixture

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class Recording(TrainerBase):
    """A bare engine trainer whose hook records what it sees and then replaces the gradients."""

    def __init__(self, module, optim, replace_with=None):
        super().__init__()
        self.register_model("m", module, optim, None)
        self.calls, self.replace_with = [], replace_with

    def before_optimizer_step(self, names=None):
        module = self._models["m"]
        self.calls.append({"grads": [p.grad.clone() for p in module.parameters()],
                           "params": [p.detach().clone() for p in module.parameters()]})
        if self.replace_with is not None:
            for p in module.parameters():
                p.grad.fill_(self.replace_with)


def test_engine_hook_sees_final_gradients_before_the_step_and_its_changes_are_stepped():
    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    lr, wd = 0.5, 0.1
    optim = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    trainer = Recording(module, optim, replace_with=0.0)
    x = torch.randn(4, 3)
    expected = torch.autograd.grad(module(x).square().sum(), list(module.parameters()))
    before = [p.detach().clone() for p in module.parameters()]
    for p in module.parameters():  # a stale gradient: the step must start from zero
        p.grad = torch.ones_like(p)

    trainer.model_backward_and_update(module(x).square().sum())

    assert len(trainer.calls) == 1
    assert all(torch.equal(g, e) for g, e in zip(trainer.calls[0]["grads"], expected))
    assert all(torch.equal(p, b) for p, b in zip(trainer.calls[0]["params"], before))  # not stepped yet
    # the step used the hook's (zero) gradient: only weight decay moved the weights (first step: no momentum yet)
    assert all(torch.allclose(p.detach(), b - lr * wd * b) for p, b in zip(module.parameters(), before))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook")
    make_fixture("eurosat", root / "data", n_per_class=2, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=2)
    return root, ckpt


class HookedCoOp(trainers.method_of("CoOp").cls):
    """CoOp recording the hook's gradients (and optionally overwriting them)."""

    replace_with = None

    def adjust_gradients(self, result):
        super().adjust_gradients(result)
        ctx = self.model.prompt_learner.ctx
        self.calls = getattr(self, "calls", []) + [(ctx.grad.clone(), ctx.detach().clone())]
        if self.replace_with is not None:
            ctx.grad.fill_(self.replace_with)


def build(env, prec, opts=()):
    root, ckpt = env
    argv = ["--root", str(root / "data"), "--seed", "1", "--trainer", "CoOp",
            "--dataset-config-file", osp.join(REPO, "configs/datasets/eurosat.yaml"),
            "--config-file", osp.join(REPO, "configs/trainers/CoOp/tiny_digits.yaml"), "--output-dir",
            str(root / "out"), "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS",
            "['normalize']", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.PREC", prec, "CPU_HALF", "True", "VERBOSE", "False",
            *opts]
    cfg = build_cfg(argv)
    set_random_seed(1)
    trainer = HookedCoOp(cfg)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer


def reference_gradient(trainer, batch):
    """d loss / d ctx in fp32, computed apart from the trainer's step."""
    image, label = trainer.parse_batch_train(batch)
    with trainer.precision.autocast(trainer.device):
        loss = trainer.loss({**batch, "img": image, "label": label}, trainer.model(image)).loss
    return torch.autograd.grad(loss, [trainer.model.prompt_learner.ctx])[0]


@pytest.mark.parametrize("prec", ["fp32", "amp"])
def test_prompt_trainer_calls_the_hook_once_with_unscaled_gradients(env, prec):
    trainer = build(env, prec)
    assert (trainer.scaler is not None) == (prec == "amp")
    if trainer.scaler is not None:  # a scale at which this tiny model's fp16 backward does not overflow
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    batch = next(iter(trainer.train_loader_x))
    expected = reference_gradient(trainer, batch)
    before = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.forward_backward(batch)
    assert len(trainer.calls) == 1
    grad, ctx = trainer.calls[0]
    assert torch.equal(ctx, before)  # before the step
    if prec == "fp32":
        assert torch.equal(grad, expected)
    else:  # fp16 backward: the unscaled gradient, not 2**8 times it
        assert torch.allclose(grad, expected, rtol=2e-2, atol=1e-3 * expected.abs().max().item())


def test_a_step_the_scaler_skips_stays_skipped_whatever_the_hook_does(env):
    trainer = build(env, "amp")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # the fp16 backward overflows
    trainer.replace_with = 0.0  # the hook writes finite gradients: the step must still be skipped
    before = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert len(trainer.calls) == 1 and not torch.isfinite(trainer.calls[0][0]).all()
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), before)  # no weight decay step either
    assert trainer.scaler.get_scale() < 2.0 ** 120


def test_prompt_trainers_call_their_hook_on_an_engine_without_one(env, monkeypatch):
    """The real Dassl.pytorch: TrainerBase has no before_optimizer_step and its update does not call one; the
    contract's hook belongs to the prompt trainer's own step."""
    def plain_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    monkeypatch.delattr(TrainerBase, "before_optimizer_step")
    monkeypatch.setattr(TrainerBase, "model_backward_and_update", plain_update)
    trainer = build(env, "fp32")
    batch = next(iter(trainer.train_loader_x))
    expected = reference_gradient(trainer, batch)
    trainer.forward_backward(batch)
    assert len(trainer.calls) == 1 and torch.equal(trainer.calls[0][0], expected)
