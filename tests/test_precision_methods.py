"""Every registered method in every precision, executed for real on the CPU (``CPU_HALF True``).

For each registered method (present and future) and each precision, the method is built from its
``tiny_digits.yaml`` on the tiny CLIP for fixed class names; its evaluation logits on a fixed batch must be finite
and within a stated tolerance of the fp32 logits of the same (untrained) prompts, and one training step must give
a finite loss, update the fp32 master prompts and, for amp, go through the ``GradScaler``.

Tolerance: the largest absolute logit difference against fp32, relative to the largest fp32 logit, is at most 1%
for fp16 and amp and 5% for bf16 (bf16 keeps 8 mantissa bits, fp16 11: a relative rounding of 2^-8 = 0.4% and
2^-11 = 0.05% per operation, growing with the depth of the encoders). Measured here (tiny CLIP, largest logit
3 to 6; the largest over all methods): fp16 0.29% (CoCoOp), amp 0.24% (CoCoOp), bf16 2.5% (MPL).
"""
import math

import pytest
import torch

import clip
import trainers
from trainers.base import PromptTrainer

from tiny_runs import build_for_classes, earlier_opts, fixed_batch, tiny_cfg

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

PRECISIONS = ["fp32", "bf16", "fp16", "amp"]
TOLERANCE = {"fp32": 0.0, "bf16": 0.05, "fp16": 0.01, "amp": 0.01}  # relative to the largest fp32 logit
METHODS = [m.name for m in trainers.list_methods()]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("precisions")


def _build(root, ckpt, teacher, name, prec):
    method = trainers.method_of(name)
    opts = [*earlier_opts(name, ckpt, root), f"TRAINER.{method.block}.PREC", prec, "CPU_HALF", "True"]
    if name == "CasPL":
        opts += ["KD.BACKBONE_NAME", str(teacher)]
    return build_for_classes(tiny_cfg(root, ckpt, name, root / "out", opts))


@pytest.fixture(scope="module")
def fp32_logits(root, tiny_ckpt, tiny_teacher_ckpt):
    cache = {}

    def get(name):
        if name not in cache:
            trainer = _build(root, tiny_ckpt, tiny_teacher_ckpt, name, "fp32")
            trainer.set_model_mode("eval")
            with torch.no_grad():
                cache[name] = trainer.model_inference(fixed_batch(4)["img"])
        return cache[name]

    return get


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_and_evaluates_in_every_precision_on_cpu(root, tiny_ckpt, tiny_teacher_ckpt, fp32_logits,
                                                               name, prec):
    trainer = _build(root, tiny_ckpt, tiny_teacher_ckpt, name, prec)
    assert trainer.precision.effective == prec  # executed, not fallen back to fp32
    frozen = trainer.model.clip_model if isinstance(trainer, PromptTrainer) else trainer.clip_model
    weights = {p.dtype for p in frozen.parameters() if p.dim() > 1}  # LayerNorms stay fp32
    assert weights == {clip.resolve_precision(prec, "cpu", half_on_cpu=True).param_dtype}

    batch = fixed_batch(4)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(batch["img"])
    reference = fp32_logits(name)
    assert logits.dtype == reference.dtype == clip.MASTER_DTYPE and torch.isfinite(logits).all()
    diff = (logits - reference).abs().max().item() / reference.abs().max().item()
    assert diff <= TOLERANCE[prec], (name, prec, diff)

    if isinstance(trainer, PromptTrainer):  # a method that learns: one step
        learned = [p for p in trainer.model.parameters() if p.requires_grad]
        assert learned and all(p.dtype == clip.MASTER_DTYPE for p in learned)
        before = [p.detach().clone() for p in learned]
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = trainer.forward_backward(batch)
        assert math.isfinite(summary["loss"]), (name, prec, summary)
        changed = any(not torch.equal(a, p.detach()) for a, p in zip(before, learned))
        if prec == "amp":
            # the GradScaler path ran: it stepped, or it found the scaled fp16 gradients overflowing at the initial
            # scale (2**16), skipped the step and halved the scale, as it does on a GPU
            assert trainer.scaler is not None
            assert changed or trainer.scaler.get_scale() < 2.0 ** 16, (name, trainer.scaler.get_scale())
        else:
            assert changed, (name, prec)
            assert getattr(trainer, "scaler", None) is None


def test_without_the_switch_half_precision_falls_back_on_cpu():
    with pytest.warns(RuntimeWarning, match="falling back to 'fp32'"):
        assert clip.resolve_precision("fp16", "cpu").effective == "fp32"
    assert clip.resolve_precision("amp", "cpu", half_on_cpu=True).use_grad_scaler
