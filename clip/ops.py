"""Per-layer token operations: the one mechanism through which prompt methods change CLIP's token sequences.

A method is a schedule of :class:`LayerOp` (one optional entry per transformer layer) plus the modules that
produce the prompt tensors. ``clip.model.Transformer`` applies ``ops[i]`` to the sequence before block ``i``.

Every sequence holds one *prompt segment*, a run of consecutive positions that ops grow and shrink like a stack:

- vision: ``[CLS, patch_1 .. patch_N, prompt segment]`` (segment at the end, initially empty);
- text:   ``[SOS, prompt segment, words.., EOT, pad..]`` (segment at positions ``1 .. n_prompt``).

Examples (``p``: an ``(n, D)`` tensor)::

    VPT-shallow   ops = [LayerOp(add=p0)]
    VPT-deep      ops = [LayerOp(add=p0)] + [LayerOp(remove=n, add=p_i) for i in 1..depth-1]
    MPL           ops = [LayerOp(add=v0)] + [LayerOp(remove=n_rm, add=V_i) for i in 1..depth-1]
    text deep     ops = [None] + [LayerOp(replace=t_i, replace_at=1) for i in 1..depth-1]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["LayerOp", "PromptSegment", "check_ops"]


@dataclass
class LayerOp:
    """What happens to the token sequence before one transformer layer. Order: remove, then add, then replace.

    Attributes:
        remove: drop this many tokens from the END of the prompt segment (the most recently added go first).
        add: ``(n, D)`` (broadcast over the batch) or ``(B, n, D)``; appended at the end of the prompt segment.
            Added tokens get no positional embedding.
        replace: ``(n, D)`` or ``(B, n, D)``; overwrites positions ``[replace_at, replace_at + n)``.
        replace_at: absolute position in the current sequence (1 = right after CLS / SOS).
    """

    remove: int = 0
    add: Optional[Tensor] = None
    replace: Optional[Tensor] = None
    replace_at: int = 1


def check_ops(ops: Optional[Sequence[Optional[LayerOp]]], n_layers: int) -> List[Optional[LayerOp]]:
    """Validate an op schedule against a transformer depth; returns it as a list (empty for None)."""
    if ops is None:
        return []
    ops = list(ops)
    if len(ops) > n_layers:
        raise ValueError(f"got {len(ops)} layer ops for a transformer with {n_layers} layers")
    for i, op in enumerate(ops):
        if op is not None and not isinstance(op, LayerOp):
            raise TypeError(f"ops[{i}] must be a clip.LayerOp or None, got {type(op).__name__}")
    return ops


def _as_batch(t: Tensor, x: Tensor, what: str, layer: int) -> Tensor:
    """Bring an ``(n, D)`` or ``(B, n, D)`` tensor to ``(B, n, D)`` with x's dtype and device."""
    batch, _, width = x.shape
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"layer {layer}: LayerOp.{what} must have shape (n, D) or (B, n, D), got {tuple(t.shape)}")
    if t.shape[-1] != width:
        raise ValueError(f"layer {layer}: LayerOp.{what} has width {t.shape[-1]}, but the sequence has width "
                         f"{width}")
    if t.shape[0] not in (1, batch):
        raise ValueError(f"layer {layer}: LayerOp.{what} has batch size {t.shape[0]}, but the sequence has {batch}")
    return t.to(device=x.device, dtype=x.dtype).expand(batch, -1, -1)


class PromptSegment:
    """Book-keeping of the prompt segment while a sequence passes through one encoder.

    Args:
        start: position of the segment's first token (text: 1, after SOS; vision: the initial length).
        length: tokens already in the segment (text: ``n_prompt``; vision: 0).
        eot: ``(B,)`` EOT positions at layer 0 (text only). ``self.eot`` follows the segment's length.
    """

    def __init__(self, start: int, length: int = 0, eot: Optional[Tensor] = None):
        if start < 0 or length < 0:
            raise ValueError(f"invalid prompt segment: start={start}, length={length}")
        self.start = start
        self.length = length
        self._initial_length = length
        self._eot0 = eot

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def eot(self) -> Optional[Tensor]:
        """Current EOT positions: ``eot_0 + (P_now - n_prompt)``."""
        if self._eot0 is None:
            return None
        return self._eot0 + (self.length - self._initial_length)

    def apply(self, x: Tensor, op: LayerOp, layer: int) -> Tensor:
        """Apply ``op`` to ``x`` ``(B, L, D)``; returns the new sequence (never modifies x in place)."""
        if op.remove:
            n = op.remove
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"layer {layer}: LayerOp.remove must be a non-negative int, got {n!r}")
            if n > self.length:
                raise ValueError(f"layer {layer}: cannot remove {n} prompt tokens; the prompt segment holds only "
                                 f"{self.length}")
            end = self.end
            x = torch.cat([x[:, :end - n], x[:, end:]], dim=1)
            self.length -= n
        if op.add is not None:
            add = _as_batch(op.add, x, "add", layer)
            end = self.end
            x = torch.cat([x[:, :end], add, x[:, end:]], dim=1)
            self.length += add.shape[1]
        if op.replace is not None:
            rep = _as_batch(op.replace, x, "replace", layer)
            at, n = op.replace_at, rep.shape[1]
            if at < 0 or at + n > x.shape[1]:
                raise ValueError(f"layer {layer}: LayerOp.replace covers positions [{at}, {at + n}), outside the "
                                 f"current sequence of length {x.shape[1]}")
            x = torch.cat([x[:, :at], rep, x[:, at + n:]], dim=1)
        return x
