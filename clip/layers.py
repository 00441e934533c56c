"""Leaf building blocks of CLIP, with OpenAI's parameter names.

Activations are batch-first, ``(B, L, D)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

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
                return_kv: bool = False):
        """Attention of ``x`` ``(B, L, D)``, optionally continuing a prefix that was run separately.

        Args:
            prefix_kv: ``(k, v)``, each ``(B, H, P, D/H)``: keys and values of ``P`` positions that come before
                ``x``'s (an earlier part of the same sequences). Every position of ``x`` attends to all of them,
                then (under ``causal``) to its own and earlier positions of ``x``: the result equals running the
                whole sequence and keeping its last ``L`` positions.
            return_kv: also return this call's own ``(k, v)`` (``(B, H, L, D/H)``), for a later continuation.
        """
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, L, D/H)
        own = (k, v)
        if prefix_kv is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            pk, pv = prefix_kv
            n = pk.shape[2]
            k = torch.cat([pk.to(k.dtype), k], dim=2)
            v = torch.cat([pv.to(v.dtype), v], dim=2)
            mask = None
            if causal:  # query i (absolute n + i) sees keys 0 .. n + i
                mask = torch.ones(length, n + length, dtype=torch.bool, device=x.device).tril(diagonal=n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return (out, own) if return_kv else out


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
                return_kv: bool = False):
        """``prefix_kv`` / ``return_kv``: see :meth:`Attention.forward` (returns ``(x, (k, v))`` with the latter)."""
        attn = self.attn(self.ln_1(x), causal=causal, prefix_kv=prefix_kv, return_kv=return_kv)
        if return_kv:
            attn, kv = attn
        x = x + attn
        x = x + self.mlp(self.ln_2(x))
        return (x, kv) if return_kv else x
