"""The precision policy: the one place in the project that names a floating-point dtype.

A run picks its precision once, by name, with :func:`resolve_precision`; everything else asks the returned
:class:`Precision` (or ``model.dtype``) instead of hard-coding ``.half()`` or ``torch.float16``.

==========  ===========================  ==================================================================
name        frozen CLIP weights          notes
==========  ===========================  ==================================================================
``fp32``    float32                      the reference for exactness tests; the default on CPU
``fp16``    float16                      what the reference repositories use on CUDA (no loss scaling);
                                         on a CPU it falls back to fp32 with a warning, unless half
                                         precision on the CPU is switched on (below)
``bf16``    bfloat16                     runs on CPU and CUDA
``amp``     float32 + autocast(float16)  with a ``GradScaler``; on a CPU the same fallback and switch
==========  ===========================  ==================================================================

Half precision on the CPU: PyTorch (2.x) runs fp16 convolution, matmul, SDPA and LayerNorm forward and backward
on a CPU, slowly. ``resolve_precision(name, "cpu", half_on_cpu=True)`` (``train.py``'s ``CPU_HALF True``) runs
fp16 and amp for real there instead of falling back, so the dtype paths a GPU run takes can be executed and tested
on any machine. The fallback stays the default.

LayerNorms always compute in fp32 and return their input's dtype (as OpenAI's CLIP does), and
:meth:`Precision.cast_model` keeps their parameters in fp32, like OpenAI's ``convert_weights``.
Learnable prompt parameters stay fp32 (master weights); methods cast them to ``model.dtype`` as they enter
the encoders.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

__all__ = ["Precision", "resolve_precision", "PRECISIONS", "NORM_DTYPE", "DEFAULT_DTYPE",
           "MASTER_DTYPE", "HALF_DTYPE"]

#: dtype in which LayerNorm computes, whatever the weights' dtype.
NORM_DTYPE = torch.float32
#: dtype of freshly built models and of models returned by ``build_model``.
DEFAULT_DTYPE = torch.float32
#: dtype of learnable prompt parameters (master weights), losses and the logits handed to metrics, whatever
#: the precision of the frozen model.
MASTER_DTYPE = torch.float32

#: dtype of the fp16 weights and of amp's autocast.
HALF_DTYPE = torch.float16

#: name -> (weight dtype, autocast dtype or None, uses a GradScaler)
_TABLE = {
    "fp32": (torch.float32, None, False),
    "fp16": (HALF_DTYPE, None, False),
    "bf16": (torch.bfloat16, None, False),
    "amp": (torch.float32, HALF_DTYPE, True),
}
PRECISIONS = tuple(_TABLE)
_NEEDS_CUDA = ("fp16", "amp")


@dataclass(frozen=True)
class Precision:
    """A resolved precision setting.

    Attributes:
        name: the precision asked for ("fp32" | "fp16" | "bf16" | "amp").
        effective: the precision used after any fallback (fp16 or amp on a CPU -> "fp32").
        param_dtype: dtype of the frozen CLIP weights and of the activations.
        autocast_dtype: ``torch.float16`` for amp (on CUDA), else None.
        use_grad_scaler: True for amp (on CUDA).
    """

    name: str
    effective: str
    param_dtype: torch.dtype
    autocast_dtype: Optional[torch.dtype]
    use_grad_scaler: bool

    def autocast(self, device: Union[str, torch.device]):
        """Context manager for forward passes: ``torch.autocast`` for amp, a no-op otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)

    def cast_model(self, model: nn.Module) -> nn.Module:
        """Cast ``model`` (in place) to ``param_dtype``; LayerNorm parameters stay fp32. Returns the model."""
        model.to(self.param_dtype)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.to(NORM_DTYPE)
        return model

    def __str__(self) -> str:
        return self.effective if self.effective == self.name else f"{self.name}->{self.effective}"


def resolve_precision(name: Optional[str], device: Union[str, torch.device, None] = "cpu",
                      half_on_cpu: bool = False) -> Precision:
    """Resolve a precision name for a device.

    ``fp16`` and ``amp`` are meant for CUDA: on a CPU they fall back to ``fp32`` with a warning, unless
    ``half_on_cpu`` is true. ``bf16`` runs
    anywhere. Unknown names raise ``ValueError`` listing the valid ones. ``None`` means ``fp32``.
    """
    requested = "fp32" if name is None else str(name).strip().lower()
    if requested not in _TABLE:
        raise ValueError(f"unknown precision {name!r}; valid precisions are: {', '.join(PRECISIONS)}")
    device_type = torch.device(device if device is not None else "cpu").type
    effective = requested
    if requested in _NEEDS_CUDA and device_type == "cpu" and not half_on_cpu:
        warnings.warn(
            f"precision {requested!r} is not supported on the CPU; falling back to 'fp32'", RuntimeWarning,
            stacklevel=2,
        )
        effective = "fp32"
    param_dtype, autocast_dtype, scaler = _TABLE[effective]
    return Precision(name=requested, effective=effective, param_dtype=param_dtype,
                     autocast_dtype=autocast_dtype, use_grad_scaler=scaler)
