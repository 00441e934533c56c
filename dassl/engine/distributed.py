"""One run over several processes (``torchrun --nproc-per-node N train.py ...``): process group, rank helpers,
gathering, and DistributedDataParallel over the learned modules.

How a run is split
------------------
* Every process builds the same trainer from the same seed. The training loader's sampler is drawn on every rank
  and each global batch of ``DATALOADER.TRAIN_X.BATCH_SIZE`` images is cut into one contiguous shard per rank
  (:mod:`dassl.data.distributed_sampler`), so the shards of a step, concatenated in rank order, are exactly the
  single-process batch.
* Only the registered modules with learnable parameters are wrapped in ``DistributedDataParallel`` (the prompt
  learner for CLIP methods); the frozen encoders stay plain modules. The wrapped module keeps its identity:
  ``trainer.model.prompt_learner`` is still the learner, its ``state_dict`` has no ``module.`` prefix, and only its
  call with gradients enabled goes through the DDP wrapper (see :func:`_route_through_ddp`).
* Gradients are combined as ``sum_r (n_r / n) * grad_r`` where ``n_r`` is rank r's share of the global batch of
  ``n`` images. For losses that are means over the batch (plus batch-independent terms) that is the gradient of the
  single-process batch, also when the shards are unequal (a last, smaller batch); plain DDP would average.
* Logged losses and accuracies are the same weighted means over the global batch.
* Rank 0 writes everything (log.txt, checkpoints, tensorboard, result.json); the others wait at a barrier after
  each checkpoint, so every rank reads the same files when it loads or resumes.
* Evaluation is sharded (each rank evaluates a contiguous part of the split, no padding) and the evaluator gathers
  every rank's predictions before computing the metrics (:meth:`dassl.evaluation.Classification.evaluate`).

Outside ``torchrun`` (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) nothing here does anything.
"""
import datetime
import os
import sys
import warnings

import torch
import torch.distributed as dist

from dassl.utils import UserError

__all__ = [
    "DistributedError",
    "setup",
    "shutdown",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "sum_over_ranks",
    "DistributedTraining",
    "attach",
]

#: Seconds a process waits for the others (rendezvous, and any collective) before giving up.
DEFAULT_TIMEOUT_S = 1800


class DistributedError(UserError):
    """A multi-process run cannot start or continue (bad launch, unreachable rendezvous, a lost process)."""


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def launched_world_size():
    """``WORLD_SIZE`` as set by torchrun (1 when it is not set)."""
    return _env_int("WORLD_SIZE", 1)


def is_distributed():
    """True in a process of a multi-process run whose process group is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    if is_distributed():
        return dist.get_rank()
    return _env_int("RANK", 0) if launched_world_size() > 1 else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on rank 0 (and in a single-process run): the process that writes files."""
    return get_rank() == 0


def setup(cfg):
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); returns the world size.

    NCCL on CUDA (``cfg.USE_CUDA`` and a GPU, one per local rank), gloo otherwise. The timeout is
    ``DIST_TIMEOUT_S`` seconds (environment, default 1800). Ranks other than 0 print nothing on stdout.
    """
    world = launched_world_size()
    if world <= 1 or is_distributed():
        return get_world_size()
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if rank < 0 or rank >= world:
        raise DistributedError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}; launch with "
                               "torchrun --nproc-per-node N train.py ...")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun, which sets it")
    timeout_s = _env_int("DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    use_cuda = torch.cuda.is_available() and cfg.USE_CUDA
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                                   "use --nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=datetime.timedelta(seconds=timeout_s))
        dist.barrier()  # every rank is there (a rank 0 alone would otherwise only notice at the first collective)
    except (RuntimeError, ValueError, OSError) as err:
        if dist.is_initialized():
            dist.destroy_process_group()
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"rank {rank} of {world} could not join the other processes at {where} within {timeout_s} s ({first}); "
            "start all of them with the same torchrun command, check that the address is reachable, or raise "
            "DIST_TIMEOUT_S"
        ) from err
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 prints (and logs) for the run
    return world


def lost_process_message(err):
    """A one-line explanation when ``err`` means another process of the run is gone; ``None`` otherwise."""
    if not is_distributed() or isinstance(err, UserError):
        return None
    dist_errors = tuple(getattr(dist, n) for n in ("DistError",) if hasattr(dist, n))
    text = str(err)
    peer_gone = any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                        "NCCL communicator was aborted", "Timed out waiting"))
    if not (isinstance(err, dist_errors) or peer_gone):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    first = first.split(". This is typically")[0][:200]  # gloo appends advice that does not apply here
    return (f"rank {get_rank()} of {get_world_size()} lost contact with the other processes ({first}): one of them "
            "died or was killed (see its own error above); checkpoints on disk are complete (rank 0 writes them "
            "atomically, the others only read); run the same command again to resume from the last one")


def shutdown(finished=False):
    """Leave the process group. After a finished run every rank first waits for the others, so that no rank tears
    its connections down while a peer still uses them (gloo then aborts that peer at exit, seen as "terminate called
    without an active exception" and SIGABRT after a run that had written its result)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            try:
                dist.barrier()
            except (RuntimeError, ValueError, OSError):
                pass  # a peer is already gone; its own error says why
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _collective_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values):
    """Element-wise sum over ranks of a list of numbers (float64); the list itself in a single process."""
    if not is_distributed():
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


# ----------------------------------------------------------------------------------------------------------------
# DDP over the learned modules
# ----------------------------------------------------------------------------------------------------------------
class _GradWeight:
    """State of the gradient hook: this rank's share ``n_r / n`` of the current global batch."""

    def __init__(self, world):
        self.weight = 1.0 / world


def _weighted_sum_hook(state, bucket):
    """DDP communication hook: all-reduce ``weight * grad`` with a sum (the batch-weighted mean of the ranks)."""
    buf = bucket.buffer()
    buf.mul_(state.weight)
    fut = dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _route_through_ddp(module, ddp):
    """Make ``module(...)`` with gradients enabled run through ``ddp`` (so DDP prepares its gradient reduction),
    while the module stays the object the trainer knows (same attributes, same state-dict keys).

    DDP itself calls ``module(...)``: that inner call, and calls without gradients (evaluation, which is sharded
    and must not run collectives), use the module's own ``forward``. Forward hooks of the module run twice per
    training call.
    """
    own_forward = module.forward
    inside = [False]

    def forward(*args, **kwargs):
        if inside[0] or not torch.is_grad_enabled():
            return own_forward(*args, **kwargs)
        inside[0] = True
        try:
            return ddp(*args, **kwargs)
        finally:
            inside[0] = False

    module.forward = forward


class DistributedTraining:
    """DDP over a trainer's registered modules that have learnable parameters, and the per-step bookkeeping."""

    def __init__(self, trainer):
        from torch.nn.parallel import DistributedDataParallel as DDP

        world = get_world_size()
        self.grad_weight = _GradWeight(world)
        self.wrapped = {}
        device = trainer.device
        for name in trainer.get_model_names():
            module = trainer._models[name]
            if module is None or not any(p.requires_grad for p in module.parameters()):
                continue
            device_ids = None
            if device.type == "cuda":
                device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
            with warnings.catch_warnings():  # newer torch renames the flag; its meaning here stays the same
                warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
                # no buffer broadcasts: buffers are built identically on every rank, and a forward must not run
                # collectives (evaluation calls the module a different number of times on each rank)
                ddp = DDP(module, device_ids=device_ids, broadcast_buffers=False)
            ddp.register_comm_hook(self.grad_weight, _weighted_sum_hook)
            _route_through_ddp(module, ddp)
            self.wrapped[name] = ddp
        print(f"Distributed training over {world} processes (backend {dist.get_backend()}); DistributedDataParallel "
              f"over {', '.join(self.wrapped) or 'nothing (no learnable parameters)'}")
        self.step_images = 0

    def step(self, trainer, batch, local_images):
        """Run ``trainer.forward_backward(batch)`` on this rank's shard; returns the global batch's loss summary."""
        total = sum_over_ranks([local_images])[0]
        if total <= 0:
            raise DistributedError("a training step received no images on any process")
        self.grad_weight.weight = local_images / total
        summary = trainer.forward_backward(batch)
        self.step_images = int(total)
        if not summary:
            return summary
        keys = list(summary)  # the same order on every rank (the same code made it)
        sums = sum_over_ranks([float(summary[k]) * local_images for k in keys])
        return {k: s / total for k, s in zip(keys, sums)}


def attach(trainer):
    """A :class:`DistributedTraining` for ``trainer`` in a multi-process run; ``None`` otherwise."""
    if not is_distributed():
        return None
    return DistributedTraining(trainer)
