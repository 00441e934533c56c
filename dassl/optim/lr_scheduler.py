"""``build_lr_scheduler`` and the warmup wrappers (``dassl.optim.lr_scheduler``).

A warmup wrapper runs its own schedule for ``warmup_epoch`` steps, then hands over to a *successor* scheduler
(step, multi-step or cosine) and forwards every later ``step()`` to it.

Differences from Dassl 0.6.3, all fixes:

* no ``verbose`` argument is passed to torch's scheduler base class (PyTorch 2.7 removed it);
* ``state_dict()`` stores the successor's *state* instead of pickling the successor object. The original
  pickled it together with a copy of the optimizer, so after a resume the successor updated that copy and the
  learning rate of the live optimizer stopped decaying. ``load_state_dict`` also accepts the original's format.
"""
import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["build_lr_scheduler", "AVAI_SCHEDS", "ConstantWarmupScheduler", "LinearWarmupScheduler"]

AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]


class _BaseWarmupScheduler(LRScheduler):
    """Warmup for ``warmup_epoch`` steps, then delegate to ``successor``."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        raise NotImplementedError

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):
        """This scheduler's state with the successor's state nested under ``successor_state``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor_state"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        """Load a state from :meth:`state_dict`, or from the original Dassl (which pickled the successor)."""
        state = dict(state_dict)
        successor_state = state.pop("successor_state", None)
        old_successor = state.pop("successor", None)
        if successor_state is None and old_successor is not None:
            successor_state = old_successor.state_dict()
        self.__dict__.update(state)
        if successor_state is not None:
            self.successor.load_state_dict(successor_state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """Use the constant learning rate ``cons_lr`` during warmup."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """Ramp the learning rate linearly from ``min_lr`` (step 0) to the base lr (step ``warmup_epoch``)."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer, optim_cfg):
    """Build the scheduler named by ``optim_cfg.LR_SCHEDULER``, wrapped in a warmup if ``WARMUP_EPOCH > 0``.

    The trainer steps it once per epoch. Example (cosine, ``LR=0.0035``, ``MAX_EPOCH=5``, one constant warmup
    epoch at ``1e-5``): 1e-05, 3.5e-03, 3.1658e-03, 2.2908e-03, 1.2092e-03.
    """
    lr_scheduler = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    gamma = optim_cfg.GAMMA
    max_epoch = optim_cfg.MAX_EPOCH

    if lr_scheduler not in AVAI_SCHEDS:
        raise ValueError("scheduler must be one of {}, but got {}".format(AVAI_SCHEDS, lr_scheduler))

    if lr_scheduler == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError("For single_step lr_scheduler, stepsize must be an integer, but got {}".format(type(stepsize)))
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif lr_scheduler == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError("For multi_step lr_scheduler, stepsize must be a list, but got {}".format(type(stepsize)))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        if optim_cfg.WARMUP_TYPE == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
        elif optim_cfg.WARMUP_TYPE == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ValueError("Unknown warmup type: {}".format(optim_cfg.WARMUP_TYPE))
    return scheduler
