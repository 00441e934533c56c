"""A Dassl.pytorch-compatible engine for prompt learning on CLIP.

This package re-implements the part of Dassl.pytorch 0.6.3 (Kaiyang Zhou's domain-adaptation toolbox) that the
CoOp family of prompt-learning methods imports: ``dassl.config``, ``dassl.data``, ``dassl.engine``,
``dassl.optim``, ``dassl.evaluation``, ``dassl.metrics`` and ``dassl.utils``. Trainers written for the real Dassl
run on it unchanged, and its log lines and checkpoint files have the same format.

It was written from a behavioural specification, not from Dassl's code. It also fixes the original's breakages
on current PyTorch (``weights_only`` checkpoint loading, the removed scheduler ``verbose`` argument, and LR decay
that stopped after resuming a run with warmup).

Importing ``dassl`` does not import its subpackages; import the ones you need.
"""

#: Dassl release whose public API this package follows, with a local-version tag.
__version__ = "0.6.3+compat"
