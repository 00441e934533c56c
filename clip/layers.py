"""Leaf building blocks of CLIP, with OpenAI's parameter names.

Activations are batch-first, ``(B, L, D)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .precision import NORM_DTYPE

__all__ = ["LayerNorm", "QuickGELU", "Attention", "ResidualAttentionBlock", "ACTIVATIONS", "make_activation"]

#: keys and values of one attention layer, each ``(B, H, L, D/H)``
KV = Tuple[torch.Tensor, torch.Tensor]


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes in fp32 and returns the input's dtype (as OpenAI's CLIP does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(NORM_DTYPE)
        bias = None if self.bias is None else self.bias.to(NORM_DTYPE)
        out = F.layer_norm(x.to(NORM_DTYPE), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


#: MLP activations by name: OpenAI trained with QuickGELU; open_clip's own models (LAION, DataComp) use exact GELU
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    """The MLP activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    The parameters are those of ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``),
    so OpenAI's state dicts load unchanged.

    Input shape: ``(B, L, D)``. Output shape: ``(B, L, D)``. ``causal=True`` lets position j attend to
    positions <= j of the sequence as it is now (no fixed-size mask buffer).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"attention width {width} is not divisible into {heads} heads")
        self.width = width
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False, prefix_kv: Optional[KV] = None,
                return_kv: bool = False, query_at: Optional[torch.Tensor] = None, updates: Sequence = ()):
        """Attention of ``x`` ``(B, L, D)``, optionally continuing a prefix that was run separately.

        Args:
            prefix_kv: ``(k, v)``, each ``(G, H, P, D/H)`` with ``B`` a multiple of ``G``: keys and values of
                ``P`` positions that come before ``x``'s (an earlier part of the same sequences); rows
                ``g*B/G .. (g+1)*B/G - 1`` of ``x`` continue prefix ``g`` (``G = 1``: one prefix for all rows, never
                copied per row before the one concatenation attention needs). Every position of ``x`` attends to
                all of them, then (under ``causal``) to its own and earlier positions of ``x``: the result equals
                running the whole sequence and keeping its last ``L`` positions.
            return_kv: also return this call's own ``(k, v)`` (``(B, H, L, D/H)``), for a later continuation.
            query_at: ``(B,)`` one position per row, or an int for the same position in every row (or, without
                ``causal``, a tuple of positions shared by every row, giving ``(B, n, D)``): only its
                output is computed (``(B, 1, D)``; every position's key and value still count, under ``causal``
                those up to it), which is all an encoder's last layer needs (text: the EOT position; vision: CLS).
            updates: :class:`clip.LowRank` updates of ``q``, ``k``, ``v`` and ``out_proj``, added to the projections'
                outputs (the frozen weights are not touched; the fused kernel still runs).
        """
        batch, length, width = x.shape
        heads = self.heads
        at_end = False
        if isinstance(query_at, int) and query_at < 0:
            query_at += length
        if query_at is not None:  # keys and values of every position, one query per row
            kv = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:])
            if updates:
                kv = kv + _packed_delta(x, updates, ("k", "v"), width)
            k, v = kv.view(batch, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
            xq = _select(x, query_at)
            q = F.linear(xq, self.in_proj_weight[:width], self.in_proj_bias[:width])
            if updates:
                q = q + _packed_delta(xq, updates, ("q",), width)
            q = q.view(batch, xq.shape[1], heads, width // heads).transpose(1, 2)
            if causal and isinstance(query_at, tuple):
                raise ValueError("several query positions need non-causal attention (the image encoder)")
            if causal:  # every key visible when the query is the last position: no mask
                if isinstance(query_at, int):
                    at_end = query_at == length - 1
                    query_at = torch.full((batch,), query_at, dtype=torch.long, device=x.device)
                else:
                    at_end = bool((query_at == length - 1).all())
        else:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            if updates:
                qkv = qkv + _packed_delta(x, updates, ("q", "k", "v"), width)
            qkv = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, H, L, D/H)
        own = (k, v)
        n = 0
        if prefix_kv is not None:
            pk, pv = prefix_kv
            n = pk.shape[2]
            k, v = _continue(pk, k), _continue(pv, v)
        mask = None
        if causal and query_at is not None and not at_end:  # row b sees keys 0 .. n + query_at[b]
            keys = torch.arange(n + length, device=x.device)
            mask = (keys <= n + query_at.unsqueeze(1)).view(batch, 1, 1, n + length)
        elif causal and prefix_kv is not None and query_at is None:  # query i (absolute n + i) sees keys 0 .. n + i
            mask = torch.ones(length, n + length, dtype=torch.bool, device=x.device).tril(diagonal=n)
        # with neither a prefix nor a single query, the fused causal kernel
        causal = causal and prefix_kv is None and query_at is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, q.shape[2], width)
        if updates:
            out = self.out_proj(out) + _delta(out, updates, "out_proj")
        else:
            out = self.out_proj(out)
        return (out, own) if return_kv else out


def _delta(x: torch.Tensor, updates: Sequence, target: str):
    """The sum of the low-rank updates of ``target`` on input ``x`` (0 when there is none)."""
    out = 0
    for u in updates:
        if u.target == target:
            out = out + u.delta(x)
    return out


def _packed_delta(x: torch.Tensor, updates: Sequence, targets: Tuple[str, ...], width: int) -> torch.Tensor:
    """The updates of a packed projection (q, k, v thirds, in that order), ``(..., len(targets) * width)``."""
    parts = []
    for t in targets:
        d = _delta(x, updates, t)
        parts.append(d if torch.is_tensor(d) else x.new_zeros(*x.shape[:-1], width))
    return torch.cat(parts, dim=-1)


def _select(x: torch.Tensor, at) -> torch.Tensor:
    """``(B, 1, D)``: position ``at`` of every row (an int, or ``(B,)`` positions); ``(B, n, D)`` for a tuple of
    ``n`` positions shared by every row."""
    if isinstance(at, tuple):
        return x[:, list(at)]
    if isinstance(at, int):
        at = at + x.shape[1] if at < 0 else at
        return x[:, at:at + 1]
    return x[torch.arange(x.shape[0], device=x.device), at].unsqueeze(1)


def _continue(prefix: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``(B, H, P + L, d)``: prefix ``(G, H, P, d)`` (rows in ``G`` equal blocks) followed by ``own`` ``(B, H, L, d)``.

    The prefix is broadcast over its block's rows inside the one concatenation, not copied per row before it.
    """
    groups, rows = prefix.shape[0], own.shape[0]
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into the {groups} prefixes they continue")
    block = rows // groups
    prefix = prefix.to(own.dtype).unsqueeze(1).expand(groups, block, *prefix.shape[1:])
    return torch.cat([prefix, own.view(groups, block, *own.shape[1:])], dim=3).flatten(0, 1)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    ``activation``: the MLP's, ``"quick_gelu"`` (OpenAI) or ``"gelu"`` (open_clip); it has no parameters, so the
    state dict is the same either way.
    """

    def __init__(self, width: int, heads: int, activation: str = "quick_gelu"):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", make_activation(activation)),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False, prefix_kv: Optional[KV] = None,
                return_kv: bool = False, query_at: Optional[torch.Tensor] = None, op=None):
        """``prefix_kv`` / ``return_kv`` / ``query_at``: see :meth:`Attention.forward` (returns ``(x, (k, v))``
        with ``return_kv``; ``x`` holds only the position ``query_at`` of every row with it, ``(B, 1, D)``).
        ``op``: a :class:`clip.BlockOp` (residual branches, low-rank updates); None runs the plain block."""
        if op is not None:
            return self._forward_op(x, op, causal, prefix_kv, return_kv, query_at)
        attn = self.attn(self.ln_1(x), causal=causal, prefix_kv=prefix_kv, return_kv=return_kv, query_at=query_at)
        if return_kv:
            attn, kv = attn
        if query_at is not None:
            x = _select(x, query_at)
        x = x + attn
        x = x + self.mlp(self.ln_2(x))
        return (x, kv) if return_kv else x

    def _forward_op(self, x, op, causal, prefix_kv, return_kv, query_at):
        """The block with a :class:`clip.BlockOp`: low-rank updates added to their projections' outputs, then
        every branch's ``scale * fn(read)`` added to the output (reads taken at the positions the block returns)."""
        updates = tuple(op.updates)
        h1 = self.ln_1(x)
        attn = self.attn(h1, causal=causal, prefix_kv=prefix_kv, return_kv=return_kv, query_at=query_at,
                         updates=updates)
        if return_kv:
            attn, kv = attn
        if query_at is not None:
            x, h1 = _select(x, query_at), _select(h1, query_at)
        mid = x + attn
        h2 = self.ln_2(mid)
        if any(u.target in ("c_fc", "c_proj") for u in updates):
            hidden = self.mlp.gelu(self.mlp.c_fc(h2) + _delta(h2, updates, "c_fc"))
            mlp = self.mlp.c_proj(hidden) + _delta(hidden, updates, "c_proj")
        else:
            mlp = self.mlp(h2)
        out = mid + mlp
        reads = {"input": x, "ln_1": h1, "mid": mid, "ln_2": h2}
        for branch in op.branches:
            out = out + (branch.scale * branch.fn(reads[branch.reads])).to(out.dtype)
        return (out, kv) if return_kv else out
