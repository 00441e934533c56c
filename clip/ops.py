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
    text deep     ops = [None] + [LayerOp(replace=t_i) for i in 1..depth-1]

Composition: several prompt sets in one sequence
------------------------------------------------
The segment may be split into *parts*, one per prompt set, in a declared order. A layer's entry is then a tuple
with one ``LayerOp`` (or None) per part, in that order (:func:`compose` zips per-set schedules into such entries).
Each op acts on its own part only: ``add`` appends to the end of the part, ``remove`` drops the part's own most
recently added tokens (never another set's), and ``replace`` overwrites the part's first tokens. No position is
ever written as a number; every position follows from the order and the parts' current lengths. The three
layouts of CasPL (``boost``: frozen boosting prompts, ``adapt``: a method's own)::

    PromptSRC + CasPL   vision [CLS][patches][boost][adapt]      text [SOS][adapt][boost][class .][EOT]
    MaPLe + CasPL       vision [CLS][patches][boost][proj(ctx)]  text [SOS][MaPLe ctx][boost][words][EOT]
    MPL + CasPL         vision [CLS][patches][boost][MPL's tokens, added/removed/carried by MPL's ops]
                        text   [SOS][boost][MPL ctx][a photo of a][class .][EOT]

    vision_ops = compose([boost_vision_ops, adapt_vision_ops])   # parts in vision order
    text_ops   = compose([adapt_text_ops, boost_text_ops])       # parts in text order
    model.encode_text_embeddings(x, ids, ops=text_ops, n_prompt=(n_adapt, n_boost))

With MPL in the second vision part, ``remove`` at a deep layer takes MPL's newest tokens; the boosting tokens
before them are replaced in place by their own op at every layer, whatever MPL does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LayerOp", "PromptSegment", "LayoutTrace", "check_ops", "compose",
           "Branch", "LowRank", "BlockOp", "BRANCH_READS", "LOW_RANK_TARGETS", "check_block_ops", "merge_block_ops",
           "block_ops_tensors", "block_ops_have_dropout"]


@dataclass
class LayerOp:
    """What happens to the token sequence before one transformer layer. Order: remove, then add, then replace.

    Attributes:
        remove: drop this many tokens from the END of the prompt segment (the most recently added go first).
        add: ``(n, D)`` (broadcast over the batch) or ``(B, n, D)``; appended at the end of the prompt segment.
            Added tokens get no positional embedding.
        replace: ``(n, D)`` or ``(B, n, D)``; overwrites ``n`` positions starting at ``replace_at``.
        replace_at: None (the default): the first token of the op's own prompt set (of the whole segment when there
            is one set; text: right after SOS). An int: an absolute position in the current sequence.
        replace_weight: ``w`` in ``x <- w * replace + (1 - w) * x`` over the replaced positions (TCP's mix of
            class tokens into the sequence); 1 (the default) overwrites.
    """

    remove: int = 0
    add: Optional[Tensor] = None
    replace: Optional[Tensor] = None
    replace_at: Optional[int] = None
    replace_weight: float = 1.0


def check_ops(ops: Optional[Sequence[Optional[LayerOp]]], n_layers: int) -> List[Optional[LayerOp]]:
    """Validate an op schedule against a transformer depth; returns it as a list (empty for None)."""
    if ops is None:
        return []
    ops = list(ops)
    if len(ops) > n_layers:
        raise ValueError(f"got {len(ops)} layer ops for a transformer with {n_layers} layers")
    for i, op in enumerate(ops):
        members = op if isinstance(op, (tuple, list)) else (op,)
        for member in members:
            if member is not None and not isinstance(member, LayerOp):
                raise TypeError(f"ops[{i}] must be a clip.LayerOp, a tuple of them (one per prompt set) or None, "
                                f"got {type(member).__name__}")
    return ops


def compose(schedules: Sequence[Optional[Sequence[Optional[LayerOp]]]]) -> Optional[List[Optional[tuple]]]:
    """Zip per-set schedules (each a list over layers, or None) into one schedule of per-layer tuples.

    ``schedules`` is in token order: entry ``j`` of every tuple acts on prompt part ``j``. Returns None when every
    schedule is None or empty; layers where every set has no op get None.
    """
    schedules = [list(s) if s is not None else [] for s in schedules]
    n = max((len(s) for s in schedules), default=0)
    if n == 0:
        return None
    out: List[Optional[tuple]] = []
    for i in range(n):
        entry = tuple(s[i] if i < len(s) else None for s in schedules)
        out.append(None if all(e is None for e in entry) else entry)
    return out


class LayoutTrace(list):
    """A ``trace`` list that also records, per layer, the ``(start, length)`` of every prompt part.

    ``trace`` (a plain list) receives the sequence length at each block's input; ``trace.layout[i]`` is the
    tuple of parts at block ``i``'s input, in token order.
    """

    def __init__(self):
        super().__init__()
        self.layout: List[tuple] = []


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
        length: tokens already in the segment (text: ``n_prompt``; vision: 0), or a tuple with the initial length
            of every part (one per prompt set, in token order). With an int, the number of parts is fixed by the
            first composed op (a tuple), whose parts then start empty -- possible only while the segment is empty.
        eot: ``(B,)`` EOT positions at layer 0 (text only). ``self.eot`` follows the segment's length.
    """

    def __init__(self, start: int, length=0, eot: Optional[Tensor] = None):
        parts = list(length) if isinstance(length, (tuple, list)) else [length]
        if start < 0 or any((not isinstance(n, int)) or n < 0 for n in parts):
            raise ValueError(f"invalid prompt segment: start={start}, length={length}")
        self.start = start
        self.parts = parts
        self._composed = isinstance(length, (tuple, list))
        self._initial_length = sum(parts)
        self._eot0 = eot

    @property
    def length(self) -> int:
        return sum(self.parts)

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def eot(self) -> Optional[Tensor]:
        """Current EOT positions: ``eot_0 + (P_now - n_prompt)``."""
        if self._eot0 is None:
            return None
        return self._eot0 + (self.length - self._initial_length)

    def layout(self) -> tuple:
        """``((start, length), ...)`` of every part, in token order."""
        out, at = [], self.start
        for n in self.parts:
            out.append((at, n))
            at += n
        return tuple(out)

    def _members(self, op, layer: int) -> List[Optional[LayerOp]]:
        if not isinstance(op, (tuple, list)):
            if len(self.parts) != 1:
                raise ValueError(f"layer {layer}: the prompt segment has {len(self.parts)} parts (prompt sets); give "
                                 "one LayerOp per part (a tuple, see clip.compose), not a single LayerOp")
            return [op]
        if not self._composed:  # first composed op: the segment splits into that many parts
            if self.length:
                raise ValueError(f"layer {layer}: a composed op with {len(op)} parts meets a prompt segment of "
                                 f"{self.length} tokens in one part; give the text encoder n_prompt as a tuple "
                                 "with the initial length of every part")
            self.parts = [0] * len(op)
            self._composed = True
        if len(op) != len(self.parts):
            raise ValueError(f"layer {layer}: got {len(op)} ops for a prompt segment of {len(self.parts)} parts "
                             "(one LayerOp or None per prompt set, in token order)")
        return list(op)

    def apply(self, x: Tensor, op, layer: int) -> Tensor:
        """Apply ``op`` (a LayerOp, or a tuple of one per part) to ``x`` ``(B, L, D)``; never modifies x in place."""
        for j, member in enumerate(self._members(op, layer)):
            if member is not None:
                x = self._apply_part(x, member, j, layer)
        return x

    def _part_start(self, j: int) -> int:
        return self.start + sum(self.parts[:j])

    def _apply_part(self, x: Tensor, op: LayerOp, j: int, layer: int) -> Tensor:
        where = f" of prompt part {j}" if len(self.parts) > 1 else ""
        if op.remove:
            n = op.remove
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"layer {layer}: LayerOp.remove must be a non-negative int, got {n!r}")
            if n > self.parts[j]:
                raise ValueError(f"layer {layer}: cannot remove {n} prompt tokens; the prompt segment{where} holds "
                                 f"only {self.parts[j]}")
            end = self._part_start(j) + self.parts[j]
            x = torch.cat([x[:, :end - n], x[:, end:]], dim=1)
            self.parts[j] -= n
        if op.add is not None:
            add = _as_batch(op.add, x, "add", layer)
            end = self._part_start(j) + self.parts[j]
            x = torch.cat([x[:, :end], add, x[:, end:]], dim=1)
            self.parts[j] += add.shape[1]
        if op.replace is not None:
            rep = _as_batch(op.replace, x, "replace", layer)
            n = rep.shape[1]
            if op.replace_at is None:
                at = self._part_start(j)
                if n > self.parts[j]:
                    raise ValueError(f"layer {layer}: LayerOp.replace has {n} tokens, but the prompt segment{where} "
                                     f"holds only {self.parts[j]}")
            else:
                at = op.replace_at
            if at < 0 or at + n > x.shape[1]:
                raise ValueError(f"layer {layer}: LayerOp.replace covers positions [{at}, {at + n}), outside the "
                                 f"current sequence of length {x.shape[1]}")
            if op.replace_weight != 1:
                rep = op.replace_weight * rep + (1 - op.replace_weight) * x[:, at:at + n]
            x = torch.cat([x[:, :at], rep, x[:, at + n:]], dim=1)
        return x


# ----------------------------------------------------------------------------------------------------------
# Block operations: what happens inside a block (residual branches, low-rank weight updates)
# ----------------------------------------------------------------------------------------------------------
#: what a :class:`Branch` reads: the block's input, ``ln_1`` of it, ``mid`` (input plus attention), ``ln_2`` of mid
BRANCH_READS = ("input", "ln_1", "mid", "ln_2")
#: the linear maps of a block a :class:`LowRank` update can act on (the packed in-projection's three thirds, the
#: attention's output projection, the MLP's two layers)
LOW_RANK_TARGETS = ("q", "k", "v", "out_proj", "c_fc", "c_proj")


@dataclass
class Branch:
    """A residual branch of one block: ``out = block(x) + scale * fn(read)``.

    fn: a token-wise map ``(..., D) -> (..., D)`` (an ``nn.Module`` or a function); it must act on every token
        alone (an adapter MLP), which keeps truncation, the shared text prefix and the last block's single query
        exact. Its result is cast to the sequence's dtype.
    scale: the factor on its output.
    reads: one of :data:`BRANCH_READS`; ``ln_1``/``ln_2`` are the block's own (frozen) LayerNorms.
    """

    fn: Callable[[Tensor], Tensor]
    scale: float = 1.0
    reads: str = "input"


@dataclass
class LowRank:
    """A low-rank update of one linear map of a block: ``y = W x + b + scale * up @ down @ dropout(x)``.

    target: one of :data:`LOW_RANK_TARGETS`. down: ``(r, D_in)``; up: ``(D_out, r)``. dropout: the probability
    on the update's input (0: none; the caller passes 0 in evaluation). The frozen weight is never copied or
    changed, and attention keeps its fused kernel: the update is added to the projection's output.
    """

    target: str
    down: Tensor
    up: Tensor
    scale: float = 1.0
    dropout: float = 0.0

    def delta(self, x: Tensor) -> Tensor:
        """``scale * up @ down @ dropout(x)`` for ``x`` ``(..., D_in)``, in x's dtype."""
        if self.dropout:
            x = torch.nn.functional.dropout(x, self.dropout, training=True)
        h = torch.nn.functional.linear(x, self.down.to(x.dtype))
        return self.scale * torch.nn.functional.linear(h, self.up.to(x.dtype))


@dataclass
class BlockOp:
    """What happens inside one block: residual ``branches`` (:class:`Branch`) and low-rank ``updates``
    (:class:`LowRank`). Several on one block add up."""

    branches: Tuple[Branch, ...] = ()
    updates: Tuple[LowRank, ...] = ()

    def updates_of(self, target: str) -> List[LowRank]:
        return [u for u in self.updates if u.target == target]


def check_block_ops(block_ops, n_layers: int) -> List[Optional[BlockOp]]:
    """Validate a block-op schedule (one entry per block, None for none) against a transformer depth."""
    if block_ops is None:
        return []
    block_ops = list(block_ops)
    if len(block_ops) > n_layers:
        raise ValueError(f"got {len(block_ops)} block ops for a transformer with {n_layers} layers")
    for i, op in enumerate(block_ops):
        if op is None:
            continue
        if not isinstance(op, BlockOp):
            raise TypeError(f"block_ops[{i}] must be a clip.BlockOp or None, got {type(op).__name__}")
        for b in op.branches:
            if not isinstance(b, Branch) or b.reads not in BRANCH_READS:
                raise ValueError(f"block_ops[{i}]: a branch must be a clip.Branch reading one of "
                                 f"{', '.join(BRANCH_READS)}, got {b!r}")
        for u in op.updates:
            if not isinstance(u, LowRank) or u.target not in LOW_RANK_TARGETS:
                raise ValueError(f"block_ops[{i}]: an update must be a clip.LowRank on one of "
                                 f"{', '.join(LOW_RANK_TARGETS)}, got {getattr(u, 'target', u)!r}")
            if u.down.dim() != 2 or u.up.dim() != 2 or u.up.shape[1] != u.down.shape[0]:
                raise ValueError(f"block_ops[{i}]: LowRank {u.target} needs down (r, D_in) and up (D_out, r), got "
                                 f"{tuple(u.down.shape)} and {tuple(u.up.shape)}")
            if not 0 <= u.dropout < 1:
                raise ValueError(f"block_ops[{i}]: LowRank {u.target} dropout must be in [0, 1), got {u.dropout}")
    return block_ops


def merge_block_ops(schedules) -> Optional[List[Optional[BlockOp]]]:
    """Several sets' block-op schedules as one: on each block their branches and updates add up. None when every
    schedule is None or empty."""
    schedules = [list(s) for s in schedules if s]
    if not schedules:
        return None
    if len(schedules) == 1:
        return schedules[0]
    n = max(len(s) for s in schedules)
    out: List[Optional[BlockOp]] = []
    for i in range(n):
        ops = [s[i] for s in schedules if i < len(s) and s[i] is not None]
        out.append(None if not ops else BlockOp(sum((tuple(o.branches) for o in ops), ()),
                                                sum((tuple(o.updates) for o in ops), ())))
    return out


def block_ops_tensors(block_ops) -> List[Tensor]:
    """Every tensor a schedule reads: the updates' factors and the parameters of branch modules."""
    out: List[Tensor] = []
    for op in block_ops or ():
        if op is None:
            continue
        for u in op.updates:
            out += [u.down, u.up]
        for b in op.branches:
            if isinstance(b.fn, nn.Module):
                out += list(b.fn.parameters())
    return out


def block_ops_have_dropout(block_ops) -> bool:
    return any(u.dropout for op in block_ops or () if op is not None for u in op.updates)
