"""CLIP: Vision Transformer and ModifiedResNet image encoders, the text transformer, and ``build_model``.

Parameter names are OpenAI's, so ``model.load_state_dict(openai_state_dict, strict=True)`` works. Activations
are batch-first ``(B, L, D)``. :class:`Transformer` runs the only loop over residual blocks in the project; it
applies the per-layer token operations (:mod:`clip.ops`) that prompt methods are made of.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import KV, LayerNorm, ResidualAttentionBlock
from .ops import BlockOp, LayerOp, PromptSegment, block_ops_have_dropout, check_block_ops, check_ops
from .precision import DEFAULT_DTYPE
from .text_prefix import CUDA_TEXT_PASS_OVERHEAD, find_shared_prefix, id_plan, log_text_strategy

__all__ = ["CLIP", "Transformer", "VisionTransformer", "ModifiedResNet", "AttentionPool2d", "Bottleneck",
           "build_model", "config_from_state_dict"]

Ops = Optional[Sequence[Optional[LayerOp]]]
BlockOps = Optional[Sequence[Optional[BlockOp]]]

#: OpenAI's rule for the number of attention heads: one head per 64 channels.
HEAD_WIDTH = 64


class Transformer(nn.Module):
    """A stack of residual attention blocks; its ``forward`` is where per-layer token operations happen.

    Args:
        width: token width D.
        layers: number of blocks.
        heads: attention heads.
        causal: causal self-attention (the text encoder).
        activation: the MLP activation, ``"quick_gelu"`` (OpenAI) or ``"gelu"`` (open_clip).
    """

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, activation: str = "quick_gelu"):
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.causal = causal
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, activation) for _ in range(layers)])

    def forward(self, x: Tensor, ops: Ops = None, segment: Optional[PromptSegment] = None,
                entry: Optional[nn.Module] = None, trace: Optional[List[int]] = None,
                prefix_kv: Optional[Sequence[KV]] = None, kv_out: Optional[List[KV]] = None,
                query_at: Optional[Tensor] = None, block_ops: BlockOps = None, query_segment: bool = False) -> Tensor:
        """Run the blocks on ``x`` ``(B, L, D)``.

        Before block i: ``ops[i]`` is applied (through ``segment``, whose default is an empty prompt segment at the
        end of ``x``); then, for i == 0 only, ``entry`` (the vision encoder's ``ln_pre``); then the sequence
        length is appended to ``trace``.

        A sequence may also run in two pieces (shared-prefix text encoding): ``kv_out``, a list, receives every
        block's keys and values of ``x``; ``prefix_kv[i]`` (those of an earlier piece: batch 1, or the batch of
        ``x`` or a divisor of it, see :meth:`clip.layers.Attention.forward`) are attended to by block i before
        ``x``'s own positions. ``query_at`` ``(B,)`` or an int: the last block computes only that position of every
        row, so the output is ``(B, 1, D)`` (all a text sequence needs from it is its EOT, an image its CLS).
        ``block_ops[i]`` (:class:`clip.BlockOp`): residual branches and low-rank updates inside block i.
        ``query_segment`` (with ``query_at=0``, the image encoder): the last block also computes the prompt
        segment's positions, ``(B, 1 + n, D)``: CLS, then the segment's n tokens.
        """
        ops = check_ops(ops, self.layers)
        block_ops = check_block_ops(block_ops, self.layers)
        if segment is None:
            segment = PromptSegment(start=x.shape[1])
        if not len(self.resblocks) and entry is not None:
            x = entry(x)
        for i, block in enumerate(self.resblocks):
            op = ops[i] if i < len(ops) else None
            if op is not None:
                x = segment.apply(x, op, layer=i)
            if i == 0 and entry is not None:
                x = entry(x)
            if trace is not None:
                trace.append(x.shape[1])
                if hasattr(trace, "layout"):  # clip.LayoutTrace: where every prompt part sits
                    trace.layout.append(segment.layout())
            prefix = prefix_kv[i] if prefix_kv is not None else None
            bop = block_ops[i] if i < len(block_ops) else None
            if kv_out is None:
                at = query_at if i == len(self.resblocks) - 1 else None
                if at is not None and query_segment:
                    at = (at, *range(segment.start, segment.end))
                x = block(x, causal=self.causal, prefix_kv=prefix, query_at=at, op=bop)
            else:
                x, kv = block(x, causal=self.causal, prefix_kv=prefix, return_kv=True, op=bop)
                kv_out.append(kv)
        return x


class VisionTransformer(nn.Module):
    """ViT image encoder. Sequence: ``[CLS, patches.., prompt segment]``; the output reads CLS.

    Input shape: ``(B, 3, R, R)``. Output shape: ``(B, output_dim)``.
    """

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, activation: str = "quick_gelu"):
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.width = width
        self.layers = layers
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, activation=activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def num_tokens(self) -> int:
        """Sequence length without prompts (CLS + patches)."""
        return self.positional_embedding.shape[0]

    def forward(self, x: Tensor, ops: Ops = None, trace: Optional[List[int]] = None,
                block_ops: BlockOps = None, prompt_tokens: bool = False):
        """``prompt_tokens``: also return the prompt segment's tokens after the last block and ``ln_post``
        ``(B, n, W)`` (the last block computes CLS and those tokens only)."""
        x = self.conv1(x)                           # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)            # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        # ops[0] lands here, after the positional embedding and before ln_pre (prompts get no position).
        # Only CLS is read at the end, so the last block computes CLS alone (every token's key and value still
        # count): exact, and most of one block in twelve saved (a ViT-B/16 forward measured about 5% faster).
        x = self.transformer(x, ops=ops, segment=PromptSegment(start=x.shape[1]), entry=self.ln_pre, trace=trace,
                             query_at=0, block_ops=block_ops, query_segment=prompt_tokens)
        if prompt_tokens:
            x = self.ln_post(x)
            return x[:, 0] @ self.proj, x[:, 1:]
        x = self.ln_post(x[:, 0])
        return x @ self.proj


class Bottleneck(nn.Module):
    """ModifiedResNet bottleneck: an avgpool replaces strided convolutions (anti-aliasing)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        self.stride = stride
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """QKV attention pooling: the mean feature (plus positional embedding) attends over the grid."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)                        # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, HW+1, C)
        x = x + self.positional_embedding.to(x.dtype)
        batch, length, channels = x.shape
        heads = self.num_heads

        def split(t: Tensor) -> Tensor:
            return t.view(batch, t.shape[1], heads, channels // heads).transpose(1, 2)

        q = split(self.q_proj(x[:, :1]))  # only the pooled token's output is used
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)           # (B, H, 1, C/H)
        out = out.transpose(1, 2).reshape(batch, channels)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem with avgpool, anti-aliased strided blocks, attention pooling.

    Input shape: ``(B, 3, R, R)``. Output shape: ``(B, output_dim)``.
    """

    def __init__(self, layers: Sequence[int], output_dim: int, heads: int, input_resolution: int = 224,
                 width: int = 64):
        super().__init__()
        self.layers = tuple(layers)
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.width = width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor, ops: Ops = None, trace: Optional[List[int]] = None,
                block_ops: BlockOps = None) -> Tensor:
        """``ops`` and ``block_ops`` must be None (or all None): they need a ViT. ``trace`` is left untouched."""
        if any(op is not None for op in (*(ops or ()), *(block_ops or ()))):
            raise ValueError("per-layer token and block operations need a Vision Transformer image encoder; this CLIP "
                             "has a ModifiedResNet (pass ops=None and block_ops=None, or use a ViT backbone)")
        x = x.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def _slice_ops(ops: Sequence, lo: int, hi: int, n: int) -> List:
    """The schedule for rows ``lo:hi`` of ``n``: per-row op tensors ``(n, k, D)`` are sliced, shared ones kept."""
    def part(t):
        return t[lo:hi] if t is not None and t.dim() == 3 and t.shape[0] == n and n > 1 else t

    def one(op):
        if op is None or (op.add is None and op.replace is None):
            return op
        return dataclasses.replace(op, add=part(op.add), replace=part(op.replace))

    return [tuple(one(m) for m in op) if isinstance(op, (tuple, list)) else one(op) for op in ops]


def _prefix_for_rows(prefix_kv: Sequence[KV], group: Tensor) -> List[KV]:
    """The prefix keys and values for rows of the given groups, in the layout attention takes (one prefix per
    block of equal rows, :meth:`clip.layers.Attention.forward`): the groups' own when the rows form equal
    consecutive runs (CoCoOp's classes of each image), else one copy per row."""
    if prefix_kv[0][0].shape[0] == 1:
        return list(prefix_kv)
    runs, sizes = torch.unique_consecutive(group, return_counts=True)
    pick = runs if bool((sizes == sizes[0]).all()) else group
    return [(k.index_select(0, pick), v.index_select(0, pick)) for k, v in prefix_kv]


def _run_chunks(run, chunks: Sequence[tuple], recompute: bool, random: bool = False) -> Tensor:
    """``run(*chunk)`` for every chunk, concatenated; with ``recompute`` (a memory budget binds while autograd
    records), each chunk is checkpointed: its activations are recomputed in backward instead of kept (``random``:
    the pass draws random numbers, a dropout, so the recomputation replays the same ones)."""
    if len(chunks) == 1:
        return run(*chunks[0])
    if recompute:
        out = [checkpoint(run, *chunk, use_reentrant=False, preserve_rng_state=random) for chunk in chunks]
    else:
        out = [run(*chunk) for chunk in chunks]
    return torch.cat(out, dim=0)


class CLIP(nn.Module):
    """CLIP with OpenAI's constructor arguments and parameter names.

    ``vision_layers`` is an int for a ViT image encoder, or a 4-tuple of block counts for a ModifiedResNet.
    Heads follow OpenAI's rule (vision: ``width // 64``, ResNet pooling: ``width * 32 // 64``). ``activation`` is
    the transformers' MLP activation: ``"quick_gelu"`` (OpenAI's models) or ``"gelu"`` (open_clip's; see
    :mod:`clip.openclip`).

    Attributes:
        text_truncation: run the text transformer on the shortest length that holds every EOT (exact under the
            causal mask; default True). Skipped on the meta device.
        text_prefix_sharing: run the positions all class prompts share (SOS, shared context, common words, with
            their ops) once per group of equal rows, and the rest against their keys and values (exact under the
            causal mask; default True; see :mod:`clip.text_prefix`). Set False to compare with the plain path.
        text_memory_budget: default ``memory_budget`` (bytes) of :meth:`encode_text_embeddings`; None: unbounded.
        text_pass_overhead: the fixed cost of one pass through the text transformer, in tokens (its weights are
            read once per pass, small matrix products run below peak; on a GPU, kernel launches): the shared-prefix
            encoding is used only when it computes fewer tokens than the plain path counting this overhead per
            pass, and class rows of nearby lengths share a pass (padded) when that is cheaper. Default 32, fitted
            on a CPU (one thread, ViT-B/16's text tower: a pass over T tokens costs about T + 35 tokens' time
            for T <= 128). Used on every device but CUDA.
        text_pass_overhead_cuda: the same on CUDA, where a small pass is bound by its kernel launches (default
            :data:`clip.text_prefix.CUDA_TEXT_PASS_OVERHEAD`); the choice is printed once per device and class count.
    """

    text_prefix_sharing: bool = True
    text_memory_budget: Optional[int] = None
    text_pass_overhead: int = 32
    text_pass_overhead_cuda: int = CUDA_TEXT_PASS_OVERHEAD

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: Union[int, Sequence[int]],
                 vision_width: int, vision_patch_size: Optional[int], context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int,
                 activation: str = "quick_gelu"):
        super().__init__()
        self.embed_dim = embed_dim
        self.activation = activation
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.text_truncation = True
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(layers=vision_layers, output_dim=embed_dim,
                                         heads=vision_width * 32 // HEAD_WIDTH, input_resolution=image_resolution,
                                         width=vision_width)
        else:
            self.visual = VisionTransformer(input_resolution=image_resolution, patch_size=vision_patch_size,
                                            width=vision_width, layers=vision_layers,
                                            heads=vision_width // HEAD_WIDTH, output_dim=embed_dim,
                                            activation=activation)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True,
                                       activation=activation)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation (only matters for models trained from scratch)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * max(layers, 1)) ** -0.5
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (of ``visual.conv1``)."""
        return self.visual.conv1.weight.dtype

    @property
    def is_vit(self) -> bool:
        return isinstance(self.visual, VisionTransformer)

    def encode_image(self, image: Tensor, ops: Ops = None, trace: Optional[List[int]] = None,
                     block_ops: BlockOps = None, prompt_tokens: bool = False):
        """Image features ``(B, embed_dim)``; ``ops`` act on the ViT's token sequence and ``block_ops`` inside its
        blocks (see :mod:`clip.ops`). ``prompt_tokens`` (a ViT): returns ``(features, tokens)``, ``tokens`` the
        prompt segment's ``(B, n, width)`` after the last block and ``ln_post`` (a second head reads them)."""
        if prompt_tokens:
            return self.visual(image.to(self.dtype), ops=ops, trace=trace, block_ops=block_ops, prompt_tokens=True)
        if block_ops is None:
            return self.visual(image.to(self.dtype), ops=ops, trace=trace)
        return self.visual(image.to(self.dtype), ops=ops, trace=trace, block_ops=block_ops)

    def encode_text(self, text: Tensor) -> Tensor:
        """Plain CLIP text features ``(N, embed_dim)`` for token ids ``(N, L)``."""
        return self.encode_text_embeddings(self.token_embedding(text), text)

    def encode_text_embeddings(self, x: Tensor, text_ids: Tensor, ops: Ops = None,
                               n_prompt: Union[int, Sequence[int]] = 0,
                               trace: Optional[List[int]] = None,
                               memory_budget: Optional[int] = None, block_ops: BlockOps = None) -> Tensor:
        """Text features ``(N, embed_dim)`` from token embeddings.

        Args:
            x: ``(N, L, D)`` token embeddings of the sequences in ``text_ids``, without positional embedding.
            text_ids: ``(N, L)`` token ids; used to find EOT (the largest id, as OpenAI does) and the positions
                all rows share.
            ops: per-layer operations; ``ops[0]`` applies after the positional embedding.
            n_prompt: tokens right after SOS (positions ``1..n_prompt``) that form the initial prompt segment; a
                tuple gives the initial length of each prompt part (one per prompt set, in token order), for
                composed ops (:func:`clip.compose`).
            trace: if a list, the sequence length at the input of each block is appended to it.
            memory_budget: bytes the text pass may use for its activations (default: ``self.text_memory_budget``;
                None: unbounded). Rows are encoded in chunks that fit (estimated by :meth:`text_memory_bytes`);
                while autograd records, each chunk is checkpointed (recomputed in backward), so the budget
                holds in training too.
            block_ops: per-block :class:`clip.BlockOp` (residual branches, low-rank updates). Token-wise, so
                truncation and the shared prefix stay exact; an update with dropout switches the shared prefix off
                (each row must draw its own dropout mask).
        """
        if x.dim() != 3 or text_ids.shape != x.shape[:2]:
            raise ValueError(f"text embeddings {tuple(x.shape)} do not match token ids {tuple(text_ids.shape)}")
        total = sum(n_prompt) if isinstance(n_prompt, (tuple, list)) else n_prompt
        if not 0 <= total < x.shape[1]:
            raise ValueError(f"n_prompt={n_prompt} is outside the sequence of length {x.shape[1]}")
        budget = self.text_memory_budget if memory_budget is None else memory_budget
        if budget is not None and budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes (or None), got {budget}")
        ops = check_ops(ops, self.transformer.layers)
        block_ops = check_block_ops(block_ops, self.transformer.layers) or None
        eot = text_ids.argmax(dim=-1)
        length = x.shape[1]
        plan = id_plan(text_ids, eot) if x.device.type != "meta" else None  # read once per ids tensor
        if self.text_truncation and plan is not None:
            # exact under the causal mask: positions after the last EOT never influence any EOT feature
            length = max(plan.max_eot + 1, total + 1)
        x = x[:, :length].to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        shared = buckets = None
        overhead = self.pass_overhead(x.device)
        plain = x.shape[0] * length + overhead  # tokens the first layer computes, plus the overhead of a pass
        if (self.text_prefix_sharing and plan is not None and plan.prefix_length >= 2
                and not block_ops_have_dropout(block_ops)):  # dropout: every row needs its own mask
            k = plan.prefix_length
            buckets, cost = plan.buckets(eot, k, overhead)
            if k + overhead + cost < plain:  # sharing could pay (one group: its cheapest case)
                shared = find_shared_prefix(x, text_ids[:, :length], eot, ops, total, prefix_length=k)
            if shared is not None and shared.groups * shared.length + overhead + cost >= plain:
                shared = None  # it does not pay with the groups it has
        if x.device.type == "cuda":
            log_text_strategy(x.device, x.shape[0], length, overhead, shared, buckets)
        if shared is None:
            return self._encode_text_rows(x, eot, budget, ops=ops, n_prompt=n_prompt, trace=trace,
                                          block_ops=block_ops)
        # The shared prefix runs once per group (its ops included); the rest of every row attends to its keys and
        # values. Under the causal mask the prefix never sees the rest, so this equals the plain path.
        k = shared.length
        prefix_kv: List = []
        mark = len(trace) if trace is not None else 0
        self.transformer(x[shared.first, :k], ops=ops, segment=PromptSegment(start=1, length=n_prompt),
                         trace=trace, kv_out=prefix_kv, block_ops=block_ops)
        if trace is not None:  # report the whole sequence's length, as the plain path does
            trace[mark:] = [n + length - k for n in trace[mark:]]
        return self._encode_text_suffixes(x[:, k:], eot - k, budget, prefix_kv, shared.group, buckets,
                                          block_ops=block_ops)

    def pass_overhead(self, device: torch.device) -> int:
        """The fixed cost of one text pass on ``device``, in tokens: ``text_pass_overhead_cuda`` on CUDA, else
        ``text_pass_overhead``."""
        return self.text_pass_overhead_cuda if device.type == "cuda" else self.text_pass_overhead

    def text_memory_bytes(self, rows: int, length: int, context: int = 0, grad: bool = True) -> int:
        """Estimated bytes of the text pass over ``rows`` sequences of ``length`` tokens.

        ``context``: earlier tokens (a shared prefix) every position also attends to. With ``grad``: what autograd
        keeps for backward over all layers (per token and layer: about 21 widths -- LayerNorm inputs and outputs,
        q/k/v, the attention output, the 4-wide MLP hidden and activation -- plus the attention weights);
        without: the working set of one layer. An estimate to size chunks, not a measurement.
        """
        width, heads, layers = self.transformer.width, self.transformer.heads, self.transformer.layers
        keys = context + length
        attn = heads * length * keys + (2 * width * keys if context else 0)
        per_layer = length * (21 if grad else 12) * width + attn
        itemsize = torch.empty((), dtype=self.dtype, device="meta").element_size()
        return rows * per_layer * (layers if grad else 1) * itemsize

    def _encode_text_rows(self, x: Tensor, eot: Tensor, budget: Optional[int], ops: Sequence = (),
                          n_prompt: Union[int, Sequence[int]] = 0, trace: Optional[List[int]] = None,
                          block_ops: BlockOps = None) -> Tensor:
        """Features of every whole sequence of ``x`` (the plain path), in chunks that fit ``budget``."""
        n, length = x.shape[:2]
        grad = torch.is_grad_enabled()
        step = n
        if budget is not None:
            step = max(1, min(n, int(budget // max(self.text_memory_bytes(1, length, 0, grad), 1))))
        recorded = []

        def run(lo: int, hi: int) -> Tensor:
            t = trace if not recorded else None  # once, and never again when a checkpoint recomputes
            recorded.append(True)
            rows = torch.arange(lo, hi, device=x.device)
            segment = PromptSegment(start=1, length=n_prompt, eot=eot[lo:hi])
            h = self.transformer(x[lo:hi], ops=_slice_ops(ops, lo, hi, n), segment=segment, trace=t,
                                 block_ops=block_ops)
            return self.ln_final(h)[rows - lo, segment.eot] @ self.text_projection

        return _run_chunks(run, [(lo, min(lo + step, n)) for lo in range(0, n, step)], grad and step < n,
                           random=block_ops_have_dropout(block_ops))

    def _encode_text_suffixes(self, x: Tensor, eot: Tensor, budget: Optional[int], prefix_kv: List[KV],
                              group: Tensor, buckets: Sequence[Tuple[int, int]], block_ops: BlockOps = None) -> Tensor:
        """Features of every row from its own positions ``x`` ``(N, L, D)`` (those after the shared prefix), each
        row attending to its group's prefix keys and values (``prefix_kv[i]``: ``(G, H, P, d)`` for block i).

        Rows run by ascending EOT in ``buckets``, ``(length, rows)`` (:func:`clip.text_prefix.plan_buckets`): each
        cut right after its longest row's EOT, so nothing after the EOT of a row of that length is computed; the
        last block computes the EOT position alone. Buckets are split into chunks that fit ``budget``.
        """
        n = x.shape[0]
        context = prefix_kv[0][0].shape[2] if prefix_kv else 0
        grad = torch.is_grad_enabled()
        order = torch.argsort(eot, stable=True)  # stable: a group's rows stay together, in their order
        binds = budget is not None and sum(self.text_memory_bytes(c, length, context, grad)
                                           for length, c in buckets) > budget
        chunks, start = [], 0
        for length, count in buckets:
            step = count
            if binds:
                step = max(1, min(count, int(budget // max(self.text_memory_bytes(1, length, context, grad), 1))))
            chunks += [(order[lo:min(lo + step, start + count)], length) for lo in range(start, start + count, step)]
            start += count

        def run(rows: Tensor, length: int) -> Tensor:
            kv = _prefix_for_rows(prefix_kv, group.index_select(0, rows))
            h = self.transformer(x[:, :length].index_select(0, rows), prefix_kv=kv, query_at=eot.index_select(0, rows),
                                 block_ops=block_ops)
            return self.ln_final(h[:, 0]) @ self.text_projection

        out = _run_chunks(run, chunks, grad and binds)
        if len(chunks) == 1 and bool((order == torch.arange(n, device=order.device)).all()):
            return out
        return out.index_select(0, torch.argsort(order))

    def forward(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


#: keys some OpenAI archives carry that are not parameters
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def config_from_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, object]:
    """Infer ``CLIP(**cfg)`` arguments from an OpenAI-format state dict (every size; nothing assumed)."""
    sd = state_dict
    try:
        if "visual.proj" in sd:
            vision_width = sd["visual.conv1.weight"].shape[0]
            vision_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
            vision_patch_size = sd["visual.conv1.weight"].shape[-1]
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            if grid ** 2 + 1 != sd["visual.positional_embedding"].shape[0]:
                raise ValueError("visual.positional_embedding does not hold a square grid plus CLS")
            image_resolution = vision_patch_size * grid
        else:
            vision_layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                                  for b in (1, 2, 3, 4))
            vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
            vision_patch_size = None
            n_pos = sd["visual.attnpool.positional_embedding"].shape[0]
            grid = round((n_pos - 1) ** 0.5)
            if grid ** 2 + 1 != n_pos:
                raise ValueError("visual.attnpool.positional_embedding does not hold a square grid plus the mean")
            image_resolution = grid * 32
        transformer_width = sd["ln_final.weight"].shape[0]
        cfg = dict(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=transformer_width,
            transformer_heads=transformer_width // HEAD_WIDTH,
            transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        )
    except KeyError as err:
        raise ValueError(f"not an OpenAI CLIP state dict: missing key {err}") from None
    return cfg


def build_model(state_dict: Dict[str, Tensor], activation: str = "quick_gelu") -> CLIP:
    """Build a CLIP model (fp32, eval mode) whose sizes are inferred from ``state_dict`` and load it strictly.

    The state dict is not modified; its tensors are copied (any dtype, e.g. OpenAI's fp16) into fp32 weights.
    ``activation`` cannot be read from the weights: ``"quick_gelu"`` for OpenAI's checkpoints, ``"gelu"`` for most
    of open_clip's (:mod:`clip.openclip` registers each with its own).
    """
    sd = {k: v for k, v in state_dict.items() if k not in _NON_PARAMETER_KEYS}
    cfg = config_from_state_dict(sd)
    with torch.device("meta"):
        model = CLIP(**cfg, activation=activation)
    model = model.to_empty(device="cpu").to(DEFAULT_DTYPE)
    for buffer in model.buffers():  # e.g. BatchNorm's num_batches_tracked, which old checkpoints may lack
        buffer.zero_()
    model.load_state_dict(sd, strict=True)
    return model.eval()
