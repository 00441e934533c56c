"""Running averages of scalar values (``dassl.utils.meters``)."""
from collections import defaultdict

import torch

__all__ = ["AverageMeter", "MetricMeter"]


class AverageMeter:
    """Track the last value, sum, count and (exponential moving or plain) average of a scalar.

    Args:
        ema (bool): average as ``0.9 * avg + 0.1 * val`` instead of ``sum / count``.
    """

    def __init__(self, ema=False):
        self.ema = ema
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A group of :class:`AverageMeter` keyed by name, printed as ``name val (avg)`` pairs.

    Example::

        losses = MetricMeter()
        losses.update({"loss": 0.5, "acc": 75.0})
        str(losses)  # 'loss 0.5000 (0.5000) acc 75.0000 (75.0000)'
    """

    def __init__(self, delimiter=" "):
        self.meters = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self):
        return self.delimiter.join(
            "{} {:.4f} ({:.4f})".format(name, meter.val, meter.avg) for name, meter in self.meters.items()
        )
