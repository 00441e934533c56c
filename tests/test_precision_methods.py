"""Every registered method in every precision, executed for real on the CPU (``CPU_HALF True``).

For each trainer in the registry (present and future: the list is read from ``TRAINER_REGISTRY``) and each
precision, the trainer is built through ``train.py``'s config path on a tiny CLIP and a generated EuroSAT; its
evaluation logits on a fixed test batch must be finite and within a stated tolerance of the fp32 logits of the
same (untrained) prompts; one training step must give a finite loss, update the fp32 master prompts and, for
amp, go through the ``GradScaler``; then the whole test split is evaluated.

Tolerance: the largest absolute logit difference against fp32, relative to the largest fp32 logit, is at most 1%
for fp16 and amp and 5% for bf16 (bf16 keeps 8 mantissa bits, fp16 11). Measured on this tiny model (largest
logit about 6): fp16 at most 0.016 (0.27%), amp 0.013 (0.23%), bf16 0.11 (2.1%), over all methods.
"""
import math
import os.path as osp

import pytest
import torch

import clip
import train
import trainers  # noqa: F401  (registers the methods)
from clip.precision import set_half_on_cpu
from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.utils import set_random_seed
from datasets.fixtures import make_fixture
from tools.earlier_runs import earlier_run_opts

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRECISIONS = ["fp32", "bf16", "fp16", "amp"]
TOLERANCE = {"fp32": 0.0, "bf16": 0.05, "fp16": 0.01, "amp": 0.01}  # relative to the largest fp32 logit
METHODS = [n for n in TRAINER_REGISTRY.registered_names()
           if TRAINER_REGISTRY.get(n).__module__.startswith("trainers.")]


def _key(cls):
    return getattr(cls, "CFG_KEY", None) or getattr(cls, "PREC_KEY", None)


def _config_folder(key):
    """The configs/trainers folder of a config block (CoOp for TRAINER.COOP, ...)."""
    for folder in sorted(__import__("os").listdir(osp.join(REPO, "configs", "trainers"))):
        if folder.upper() == key and osp.isfile(osp.join(REPO, "configs", "trainers", folder, "tiny_digits.yaml")):
            return folder
    raise AssertionError(f"no configs/trainers/<folder>/tiny_digits.yaml for TRAINER.{key}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precisions")
    make_fixture("eurosat", root / "data", n_per_class=2, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=3)
    yield root, ckpt
    set_half_on_cpu(False)


def _build(setup, name, prec):
    root, ckpt = setup
    key = _key(TRAINER_REGISTRY.get(name))
    head = ["--root", str(root / "data"), "--seed", "1", "--dataset-config-file",
            osp.join(REPO, "configs/datasets/eurosat.yaml")]
    data = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]
    earlier = earlier_run_opts(name, (head, data), ckpt, root)  # e.g. PromptKD's teacher, a real PromptSRC run
    argv = [*head, "--trainer", name,
            "--config-file", osp.join(REPO, "configs/trainers", _config_folder(key), "tiny_digits.yaml"),
            "--output-dir", str(root / "out"), "MODEL.BACKBONE.NAME", str(ckpt), *data, *earlier,
            f"TRAINER.{key}.PREC", prec, "CPU_HALF", "True", "VERBOSE", "False"]
    cfg = build_cfg(argv)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def _test_batch(trainer):
    return next(iter(trainer.test_loader))["img"][:8]


@pytest.fixture(scope="module")
def fp32_logits(setup):
    cache = {}

    def get(name):
        if name not in cache:
            trainer = _build(setup, name, "fp32")
            trainer.set_model_mode("eval")
            with torch.no_grad():
                cache[name] = trainer.model_inference(_test_batch(trainer))
        return cache[name]

    return get


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_and_evaluates_in_every_precision_on_cpu(setup, fp32_logits, capsys, name, prec):
    trainer = _build(setup, name, prec)
    assert trainer.precision.effective == prec  # executed, not fallen back to fp32
    frozen = trainer.model.clip_model if hasattr(trainer, "model") else trainer.clip_model  # zero-shot: no prompts
    weights = {p.dtype for p in frozen.parameters() if p.dim() > 1}  # LayerNorms stay fp32
    assert weights == {clip.resolve_precision(prec, "cpu", half_on_cpu=True).param_dtype}

    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(_test_batch(trainer))
    reference = fp32_logits(name)
    assert logits.dtype == reference.dtype == clip.MASTER_DTYPE and torch.isfinite(logits).all()
    diff = (logits - reference).abs().max().item() / reference.abs().max().item()
    assert diff <= TOLERANCE[prec], (name, prec, diff)

    if trainer.get_model_names():  # a method that learns: one step
        learned = [p for p in trainer.model.parameters() if p.requires_grad]
        assert learned and all(p.dtype == clip.MASTER_DTYPE for p in learned)
        before = [p.detach().clone() for p in learned]
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
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
    accuracy = trainer.test()
    assert 0 <= accuracy <= 100
    capsys.readouterr()


def test_without_the_switch_half_precision_falls_back_on_cpu():
    set_half_on_cpu(False)
    with pytest.warns(RuntimeWarning, match="falling back to 'fp32'"):
        assert clip.resolve_precision("fp16", "cpu").effective == "fp32"
    assert clip.resolve_precision("amp", "cpu", half_on_cpu=True).use_grad_scaler
