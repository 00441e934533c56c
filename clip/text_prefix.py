"""Shared-prefix text encoding: find the positions that every class prompt has in common, so they run once.

The text sequence is ``[SOS, prompt segment, words.., EOT, pad]`` and the per-layer ops (:mod:`clip.ops`) only
ever change the prompt segment, right after SOS. Under the causal mask a position's hidden state depends only on
the positions up to it, so when the first ``K`` positions hold the same embeddings in several rows and every op
tensor is shared by all rows (2-D, or batch 1), those ``K`` positions have the same hidden states in those rows at
every layer. They are computed once per group of equal rows (once for CoOp's shared context, once per image for
CoCoOp), and each row's remaining positions (class name, ".", EOT) attend to the group's keys and values.

Everything here is decided from the tensors themselves (token ids, embedding values, op tensor shapes); when the
layout does not allow sharing (CoOp's ``middle``/``front`` class position, class-specific context, per-row op
tensors, ``replace_at`` positions) :func:`find_shared_prefix` returns None and the plain path runs.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .ops import LayerOp

__all__ = ["SharedPrefix", "find_shared_prefix", "ops_are_shared", "plan_buckets", "IdPlan", "id_plan",
           "CUDA_TEXT_PASS_OVERHEAD", "log_text_strategy"]

#: The fixed cost of one text pass on CUDA, in tokens (``CLIP.text_pass_overhead_cuda``; the CPU's is
#: ``CLIP.text_pass_overhead``, 32). On a GPU a pass over few tokens is bound by its kernel launches: issue 31's
#: H200 figures (ViT-B/16 text tower, fp16, forward + backward) put a pass at a few milliseconds of launches and
#: a token at about 0.3 microseconds, thousands of tokens per pass. With this value the planner runs one padded
#: pass at the shortest common length (the truncated plain path) unless sharing a prefix saves more than that;
#: ``bench.gpu_check`` measures the device's own value (``calibrate``) so the constant can follow it. A constant,
#: not a per-run timing, so the plan -- and the float rounding of the logits -- is the same on every run.
CUDA_TEXT_PASS_OVERHEAD = 8192


@dataclass
class SharedPrefix:
    """Rows of a text batch that share their first ``length`` positions.

    Attributes:
        length: ``K``, the shared positions at layer 0 (SOS, the prompt segment, the common words).
        first: ``(G,)`` one row index per group of equal prefixes (the row the prefix is read from).
        group: ``(N,)`` the group of every row.
    """

    length: int
    first: Tensor
    group: Tensor

    @property
    def groups(self) -> int:
        return self.first.shape[0]


def _members(op):
    return op if isinstance(op, (tuple, list)) else (op,)


def ops_are_shared(ops: Sequence) -> bool:
    """True when every op tensor is shared by all rows (2-D or batch 1) and no op names an absolute position."""
    for op in ops:
        for member in _members(op):
            if member is None:
                continue
            if not isinstance(member, LayerOp) or member.replace_at is not None:
                return False
            for t in (member.add, member.replace):
                if t is not None and t.dim() == 3 and t.shape[0] != 1:
                    return False
    return True


def find_shared_prefix(x: Tensor, ids: Tensor, eot: Tensor, ops: Sequence, n_segment: int,
                       prefix_length: Optional[int] = None) -> Optional[SharedPrefix]:
    """The shared prefix of text rows, or None when sharing would not pay or is not exact.

    Args:
        x: ``(N, L, D)`` layer-0 inputs (embeddings plus positional embedding).
        ids: ``(N, L)`` token ids of the same rows.
        eot: ``(N,)`` EOT positions; EOT always stays outside the prefix.
        ops: the per-layer schedule (a list, possibly empty).
        n_segment: initial length of the prompt segment (positions ``1 .. n_segment``); with any op, the whole
            segment must lie inside the prefix.
        prefix_length: the prefix length the ids allow (:attr:`IdPlan.prefix_length`), when already known.

    The prefix is the longest run of positions where all rows have the same token ids; rows are then grouped by
    equal embeddings over it (one group for shared context; contiguous blocks, or any grouping, otherwise).
    Sharing is used when the prefix is more than SOS and it at least halves the rows the prefix runs on.
    """
    n = x.shape[0]
    if n < 2 or not ops_are_shared(ops):
        return None
    k = prefix_length if prefix_length is not None else IdPlan(ids, eot).prefix_length
    # more than SOS alone (CoOp's "front": the class name right after SOS), and the whole segment when ops act
    need = max(2, 1 + n_segment) if any(op is not None for op in ops) else 2
    if k < need:
        return None
    head = x[:, :k].reshape(n, -1)
    rows = torch.arange(n, device=x.device)
    like_first = (head == head[:1]).all(dim=1)
    if bool(like_first.all()):
        return SharedPrefix(k, rows[:1], torch.zeros_like(rows))
    block = int(like_first.long().cumprod(0).sum())  # e.g. CoCoOp: C rows per image
    if block > 1 and n % block == 0:
        blocks = head.view(n // block, block, -1)
        if bool((blocks == blocks[:, :1]).all()):
            return SharedPrefix(k, rows[::block], rows // block)
    unique, group = torch.unique(head, dim=0, return_inverse=True)
    if 2 * unique.shape[0] > n:
        return None
    first = torch.full((unique.shape[0],), n, dtype=rows.dtype, device=x.device)
    first = first.scatter_reduce(0, group, rows, reduce="amin")
    return SharedPrefix(k, first, group)


def plan_buckets(lengths: Tensor, overhead: float) -> Tuple[List[Tuple[int, int]], float]:
    """How to run rows of the given lengths: ``([(length, rows), ...], cost)`` by ascending length.

    Rows are sorted by length and cut into consecutive buckets, each run as one pass padded to its longest row;
    a pass costs its tokens (rows x length) plus ``overhead``. The plan minimises the total cost (exactly: a
    dynamic program over the distinct lengths), so rows of every length run alone when passes are cheap, and
    nearby lengths share a pass when padding them costs less than another pass.
    """
    values, counts = torch.unique(lengths, return_counts=True)  # ascending
    values, counts = values.tolist(), counts.tolist()
    m = len(values)
    rows_before = [0]
    for c in counts:
        rows_before.append(rows_before[-1] + c)
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)
    for j in range(1, m + 1):  # best[j]: the first j lengths; the last bucket holds lengths i .. j-1
        for i in range(j):
            cost = best[i] + (rows_before[j] - rows_before[i]) * values[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    plan, j = [], m
    while j:
        plan.append((values[j - 1], rows_before[j] - rows_before[cut[j]]))
        j = cut[j]
    return plan[::-1], best[m]


class IdPlan:
    """What the token ids alone decide about a text pass, computed once per ids tensor.

    Class prompts keep their token ids in a buffer for the whole run, so these values (each one a host
    synchronisation on a GPU) are read once, not in every training step (:func:`id_plan`).

    Attributes:
        max_eot: the last EOT position (the truncated length is ``max_eot + 1``).
        prefix_length: positions every row has the same ids in, before the first EOT (the longest shared prefix).
    """

    def __init__(self, ids: Tensor, eot: Tensor):
        agree = (ids == ids[:1]).all(dim=0)
        self.max_eot = int(eot.max())
        self.prefix_length = min(int(agree.long().cumprod(0).sum()), int(eot.min()))
        self._buckets: Dict[Tuple[int, float], Tuple[List[Tuple[int, int]], float]] = {}

    def buckets(self, eot: Tensor, k: int, overhead: float) -> Tuple[List[Tuple[int, int]], float]:
        """:func:`plan_buckets` of the rows' lengths after a prefix of ``k`` positions (memoised)."""
        key = (k, overhead)
        if key not in self._buckets:
            self._buckets[key] = plan_buckets(eot - k + 1, overhead)
        return self._buckets[key]


#: id(ids) -> (weak reference to ids, its version, plan); a handful of live id tensors per run
_PLANS: Dict[int, tuple] = {}


def id_plan(ids: Tensor, eot: Tensor) -> IdPlan:
    """The :class:`IdPlan` of ``ids`` (``eot``: its EOT positions), reused while the same tensor is unchanged."""
    try:
        version = ids._version
    except RuntimeError:  # an inference-mode tensor keeps no version: no reuse
        return IdPlan(ids, eot)
    entry = _PLANS.get(id(ids))
    if entry is not None and entry[0]() is ids and entry[1] == version:
        return entry[2]
    plan = IdPlan(ids, eot)
    if len(_PLANS) >= 64:  # drop the entries of tensors that are gone
        for key in [k for k, (ref, _, _) in _PLANS.items() if ref() is None] or list(_PLANS):
            del _PLANS[key]
    _PLANS[id(ids)] = (weakref.ref(ids), version, plan)
    return plan


_LOGGED = set()


def log_text_strategy(device: torch.device, rows: int, length: int, overhead: float, shared: Optional[SharedPrefix],
                      buckets: Optional[Sequence[Tuple[int, int]]]) -> None:
    """Print, once per device and number of rows in this process, which text strategy the planner chose."""
    key = (str(device), rows)
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    if shared is None:
        how = f"one pass of {rows} rows at the shortest common length ({length} tokens)"
    else:
        how = (f"a shared prefix of {shared.length} tokens ({shared.groups} group(s)) and {len(buckets)} pass(es) "
               f"over the rest")
    print(f"Text encoder on {device}: {how}; pass overhead {overhead:g} tokens")
