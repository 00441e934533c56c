"""The CUDA tier (``python -m pytest -m cuda``): what must hold on a GPU, skipped where there is none.

Every test here takes a ``device`` parameter. Its ``cuda`` variant is marked ``cuda`` (skipped without a GPU; on a
GPU machine ``bench/gpu_check.sh`` runs it); its ``cpu`` variant runs the same body in the normal suite on a cheap
subset (one or two methods, one step), so the CUDA tests cannot rot between GPU runs.

- every registered method trains one step and evaluates in fp16, bf16 and amp on the device, with fp32 master
  weights, its logits within the precision's tolerance (``tools.selfcheck.TOLERANCE``) of an fp64 computation on
  the same weights;
- DistributedDataParallel over the learned modules, one process: NCCL on CUDA when it starts (else gloo on the CUDA
  tensors), gloo on the CPU; its step equals the plain step;
- CasPL's teacher cache computed on the device: cached logits equal the online teacher's on the fixed view, and a
  phase-1 step in cached mode trains.
"""
import math
import os

import pytest
import torch
import torch.distributed as dist

import clip
import trainers
from tools.selfcheck import TOLERANCE, fp64_logits
from trainers.base import PromptTrainer

from tiny_runs import build_for_classes, earlier_opts, fixed_batch, tiny_cfg

METHODS = [m.name for m in trainers.list_methods()]
HALF = ["fp16", "bf16", "amp"]
#: the cpu variant's cheap subset: a deep multi-modal method in amp, a text-only one in fp16 and bf16
CPU_CASES = [("MPL", "amp"), ("CoOp", "fp16"), ("CoOp", "bf16")]


def _cases():
    for name in METHODS:
        for prec in HALF:
            yield pytest.param("cuda", name, prec, marks=pytest.mark.cuda, id=f"cuda-{name}-{prec}")
    for name, prec in CPU_CASES:
        yield pytest.param("cpu", name, prec, id=f"cpu-{name}-{prec}")


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]


def _device(request, kind):
    return request.getfixturevalue("cuda_device") if kind == "cuda" else torch.device("cpu")


def _device_opts(device):
    return ["USE_CUDA", "True"] if device.type == "cuda" else ["USE_CUDA", "False", "CPU_HALF", "True"]


def test_tests_mean_the_cpu_unless_marked_cuda():
    """The session pin (tests/conftest.py): CUDA hidden here and in the processes tests start."""
    assert not torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") == ""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda_tier")


def _build(root, ckpt, teacher, name, prec, device):
    method = trainers.method_of(name)
    opts = [*earlier_opts(name, ckpt, root), f"TRAINER.{method.block}.PREC", prec, *_device_opts(device)]
    if name == "CasPL":
        opts += ["KD.BACKBONE_NAME", str(teacher)]
    return build_for_classes(tiny_cfg(root, ckpt, name, root / "out", opts))


@pytest.mark.parametrize("kind, name, prec", list(_cases()))
def test_method_trains_and_evaluates_in_half_precision_on_the_device(request, root, tiny_ckpt, tiny_teacher_ckpt,
                                                                     kind, name, prec):
    device = _device(request, kind)
    images = fixed_batch(4)["img"].to(device)
    reference = _build(root, tiny_ckpt, tiny_teacher_ckpt, name, "fp32", device)  # the same weights (same seed)
    assert reference.device.type == device.type
    ref64 = fp64_logits(reference, images)
    del reference

    trainer = _build(root, tiny_ckpt, tiny_teacher_ckpt, name, prec, device)
    assert trainer.device.type == device.type and trainer.precision.effective == prec
    frozen = trainer.model.clip_model if isinstance(trainer, PromptTrainer) else trainer.clip_model
    assert {p.device.type for p in frozen.parameters()} == {device.type}
    assert {p.dtype for p in frozen.parameters() if p.dim() > 1} == {trainer.precision.param_dtype}
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(images)
    assert logits.dtype == clip.MASTER_DTYPE and torch.isfinite(logits).all()
    diff = ((logits.double() - ref64).abs().max() / ref64.abs().max()).item()
    assert diff <= TOLERANCE[prec], (name, prec, diff)

    if isinstance(trainer, PromptTrainer):
        learned = [p for p in trainer.model.parameters() if p.requires_grad]
        assert learned and all(p.dtype == clip.MASTER_DTYPE and p.device.type == device.type for p in learned)
        before = [p.detach().clone() for p in learned]
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = trainer.forward_backward(fixed_batch(4))  # a CPU batch, as the loader yields it
        assert math.isfinite(summary["loss"]), summary
        changed = any(not torch.equal(a, p.detach()) for a, p in zip(before, learned))
        if prec == "amp":  # stepped, or skipped a step on overflow and lowered the scale
            assert changed or trainer.scaler.get_scale() < 2.0 ** 16
        else:
            assert changed


def _init_single_process_group(device, store_path):
    """A one-process group: NCCL on CUDA when it starts (else gloo), gloo on the CPU. Returns the backend."""
    backends = ["nccl", "gloo"] if device.type == "cuda" and dist.is_nccl_available() else ["gloo"]
    for i, backend in enumerate(backends):
        try:
            store = dist.FileStore(f"{store_path}-{backend}", 1)
            dist.init_process_group(backend, store=store, rank=0, world_size=1)
            dist.barrier()
            return backend
        except (RuntimeError, ValueError) as err:
            if dist.is_initialized():
                dist.destroy_process_group()
            if i == len(backends) - 1:
                raise
            print(f"{backend} did not start ({str(err).splitlines()[0] if str(err) else type(err).__name__})")


@pytest.mark.parametrize("kind", DEVICES)
def test_ddp_step_on_one_process_equals_the_plain_step(request, root, tiny_ckpt, tmp_path, kind):
    from dassl.engine.distributed import DistributedTraining

    device = _device(request, kind)
    plain = _build(root, tiny_ckpt, None, "MPL", "fp32", device)
    plain.set_model_mode("train")
    plain.batch_idx, plain.num_batches = 0, 2
    plain.forward_backward(fixed_batch(4))

    backend = _init_single_process_group(device, tmp_path / "store")
    try:
        trainer = _build(root, tiny_ckpt, None, "MPL", "fp32", device)
        ddp = DistributedTraining(trainer)
        assert ddp.wrapped and dist.get_backend() == backend
        if device.type == "cpu":
            assert backend == "gloo"
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = ddp.step(trainer, fixed_batch(4), 4)
    finally:
        dist.destroy_process_group()
    assert math.isfinite(summary["loss"])
    for (name, a), b in zip(plain.model.prompt_learner.named_parameters(),
                            trainer.model.prompt_learner.parameters()):
        assert b.device.type == device.type
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)  # one rank x weight 1: the same gradient


@pytest.mark.parametrize("kind", DEVICES)
def test_caspl_teacher_cache_on_the_device(request, tmp_path_factory, tiny_ckpt, kind):
    from datasets.fixtures import make_fixture
    from tiny_clip import write_tiny_checkpoint
    from trainers.api import build_cfg
    from tiny_runs import tiny_argv

    device = _device(request, kind)
    root = tmp_path_factory.mktemp("cache_device")
    make_fixture("eurosat", root / "data", n_per_class=2, image_size=40)
    teacher = write_tiny_checkpoint(root / "teacher.pt", kind="vit", seed=3, vision_layers=2, vision_width=128,
                                    transformer_width=128, embed_dim=48, image_resolution=48)
    opts = ["KD.BACKBONE_NAME", str(teacher), "KD.TEACHER_MODE", "cached", "KD.TEACHER_CACHE_DIR",
            str(root / "cache"), "DATASET.NUM_SHOTS", "-1", *_device_opts(device)]
    trainer = trainers.method_of("CasPL").cls(build_cfg(tiny_argv(root / "data", tiny_ckpt, "CasPL", root / "out",
                                                                  opts)))
    assert trainer.device.type == device.type
    # the teacher on fixed views of some training images (the cache pass's own transform), before the cache frees it
    from dassl.data import DatasetWrapper
    from dassl.data.transforms import build_transform
    from trainers.caspl import view_cfg

    view = view_cfg(trainer.cfg, trainer.teacher_cache_info["size"])
    rows = torch.tensor([3, 17, 0, 9, 12])
    wrapper = DatasetWrapper(view, trainer.dm.dataset.train_x, transform=build_transform(view, is_train=False),
                             is_train=False)
    images = torch.stack([wrapper[int(i)]["img"] for i in rows]).to(device)
    scale = trainer.model.clip_model.logit_scale.exp().detach()
    with torch.no_grad():
        online = trainer.teacher_logits_from_features(trainer.teacher_image_features(images), scale)

    trainer.prepare_teacher_cache()
    assert trainer.teacher_cache.device.type == "cpu" and trainer.teacher_cache.shape[0] == 20
    cached = trainer.cached_teacher_logits(rows, scale)
    assert cached.device.type == device.type
    # other batch sizes block the matrix products differently; on CUDA, cuDNN's TF32 convolutions round more
    tol = (1e-3 if device.type == "cuda" else 64 * torch.finfo(torch.float32).eps) * online.abs().max().item()
    torch.testing.assert_close(cached, online, rtol=0, atol=tol)

    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    assert math.isfinite(trainer.forward_backward(next(iter(trainer.train_loader_x)))["loss"])
