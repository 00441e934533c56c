"""``COMPILE_STEP`` (issue 31): the prompted CLIP's forward compiled in place, off by default.

On a CPU only the plumbing is tested, with the ``eager`` backend (dynamo traces the model, no code is generated):
the same logits, loss and update as the uncompiled run, bit for bit, and the same state-dict keys. ``inductor``
compiles for minutes on this machine (measured: 143 s for the tiny MPL's evaluation forward on 2 shared cores,
logits within 3.1e-6 of eager), so it and ``cudagraphs`` are measured by ``bench.gpu_check`` on a GPU."""
import pytest
import torch

from dassl.utils import UserError

from tiny_runs import build_for_classes, fixed_batch, tiny_cfg


def _run(root, ckpt, out, compile_step):
    trainer = build_for_classes(tiny_cfg(root, ckpt, "CoOp", out, ["COMPILE_STEP", compile_step,
                                                                    "TRAINER.COOP.PREC", "fp32"]))
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(fixed_batch(4)["img"])
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    loss = trainer.forward_backward(fixed_batch(4))["loss"]
    return trainer, logits, loss


def test_compiled_forward_equals_eager(eurosat_root, tiny_ckpt, tmp_path):
    plain, logits, loss = _run(eurosat_root, tiny_ckpt, tmp_path / "off", "off")
    compiled, c_logits, c_loss = _run(eurosat_root, tiny_ckpt, tmp_path / "eager", "eager")
    assert compiled.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    assert torch.equal(c_logits, logits) and c_loss == loss
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    for (name, a), b in zip(plain.model.prompt_learner.named_parameters(),
                            compiled.model.prompt_learner.parameters()):
        assert torch.equal(a, b), name  # the same update


@pytest.mark.parametrize("value, message", [
    ("jit", "COMPILE_STEP is 'jit'; choose one of off, eager, inductor, cudagraphs"),
    ("cudagraphs", "COMPILE_STEP is 'cudagraphs'; CUDA graphs need a GPU"),
])
def test_bad_compile_step_is_one_error(eurosat_root, tiny_ckpt, tmp_path, value, message):
    with pytest.raises(UserError, match=message):
        tiny_cfg(eurosat_root, tiny_ckpt, "CoOp", tmp_path / "out", ["COMPILE_STEP", value])
    assert not (tmp_path / "out").exists()
