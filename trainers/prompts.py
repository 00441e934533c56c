"""Prompt sets and how they compose: the pieces a method builds its prompts from (no trainer, no Dassl).

A **prompt set** is an ``nn.Module`` whose ``forward()`` returns :class:`Prompts`: its text tokens and the
per-layer token operations (:class:`clip.LayerOp`) it contributes to each encoder. A method's own, trainable set is
its *prompt learner*; other sets (frozen, from an earlier run) sit beside it in a declared order, and
:func:`compose_prompts` places them: positions follow from the order, never from numbers.

Here: the class prompts with their learnable context slots (:class:`ClassPrompts`), the one reading of
``CTX_INIT``/``N_CTX`` (:func:`learned_context`) and of CoOp's context vectors (:func:`context_vectors`), the
encoders' sizes (:func:`encoder_dims`), IVLP-style deep prompts as a set of their own (:class:`DeepPrompts`) and
their layer operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import clip
from clip import MASTER_DTYPE, LayerOp

from .compat import UserError

#: The name of the method's own (trainable) prompt set in prompt orders.
ADAPT = "adapt"


def count_learnable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@dataclass(frozen=True)
class EncoderDims:
    """Widths and depths of a CLIP's encoders, read from the named modules (``vision_*`` are None for a ResNet)."""

    text_width: int
    text_layers: int
    vision_width: Optional[int]
    vision_layers: Optional[int]


def encoder_dims(clip_model: nn.Module, need_vit: str = "") -> EncoderDims:
    """The sizes a prompt learner needs. ``need_vit``: the config block of a method with vision prompts
    (``TRAINER.MPL``), which then refuses a ResNet backbone with one clear error."""
    is_vit = bool(getattr(clip_model, "is_vit", False))
    if need_vit and not is_vit:
        raise UserError(
            f"{need_vit} puts prompts into the image encoder's transformer layers, which needs a Vision "
            f"Transformer backbone (ViT-B/32, ViT-B/16, ViT-L/14, ...); this CLIP has a ResNet image encoder. Choose "
            "a ViT with MODEL.BACKBONE.NAME, or a method whose prompts are in the text encoder only")
    visual = clip_model.visual
    return EncoderDims(
        text_width=clip_model.transformer.width, text_layers=clip_model.transformer.layers,
        vision_width=visual.width if is_vit else None, vision_layers=visual.transformer.layers if is_vit else None,
    )


def learned_context(ctx_init: str, n_ctx: int, key: str, rule: str, n_ctx_key: str = "N_CTX") -> Tuple[str, int, bool]:
    """The one reading of ``CTX_INIT``/``N_CTX``: (prompt prefix, number of learned vectors, init from the phrase).
    ``key``: the config block (``TRAINER.COOP``), ``n_ctx_key``: its count key, both named by errors.

    Rules of the reference families:

    * ``"phrase"`` (CoOp, CoCoOp, KgCoOp): with a phrase, every word of it is learned and ``N_CTX`` is ignored;
      otherwise ``N_CTX`` placeholders ``"X"`` with random vectors.
    * ``"first_tokens"`` (IVLP, MaPLe, PromptSRC): with a phrase and ``N_CTX <= 4``, the first ``N_CTX`` tokens of
      the phrase are learned and the rest stay fixed words; a phrase with fewer tokens than ``N_CTX`` is an error
      (the reference silently learned over the class name); otherwise ``N_CTX`` random placeholders.
    """
    init = " ".join(str(ctx_init).replace("_", " ").split())
    n_ctx = int(n_ctx)
    if rule == "phrase":
        if init:
            return init, len(init.split(" ")), True
    elif rule == "first_tokens":
        if init and n_ctx <= 4:
            n_tokens = len(clip.tokenizer().encode(init))
            if n_tokens < n_ctx:
                raise UserError(
                    f'{key}.CTX_INIT "{init}" has {n_tokens} token(s), fewer than {n_ctx_key}={n_ctx}: the learned '
                    f"context would cover the class name. Give a phrase of at least {n_ctx} tokens, lower {n_ctx_key}, "
                    "or set CTX_INIT \"\" for random context")
            return init, n_ctx, True
    else:
        raise ValueError(f"unknown context rule {rule!r}")
    if n_ctx < 1:
        raise UserError(f"{key}.{n_ctx_key} must be at least 1 when CTX_INIT gives no phrase, got {n_ctx}")
    return " ".join(["X"] * n_ctx), n_ctx, False


# ----------------------------------------------------------------------------------------------------------
# Class prompts: token ids and frozen embeddings around learnable context slots


class ClassPrompts(nn.Module):
    """One prompt per class, ``"{prefix} {classname}{suffix}"`` (``suffix`` "." by default), split around ``n_ctx``
    learnable slots.

    The first ``n_ctx`` words of ``prefix`` are placeholders (for example ``"X"`` or the words of an init
    phrase) whose embeddings are replaced by learned context vectors; everything else stays fixed.

    Buffers (not saved in checkpoints: they depend on the class list):
        token_ids:    (C, L)            token ids, used by the text encoder to find EOT
        token_prefix: (C, 1, D)         embedding of SOS
        token_suffix: (C, L-1-n_ctx, D) embeddings after the context slots

    ``class_token_position`` (CoOp's option): ``"end"`` keeps ``[SOS, ctx, name, ".", EOT]``; ``"middle"`` puts
    the class name between the two halves of the context, ``"front"`` before it. EOT does not move.

    >>> prompts = ClassPrompts(clip_model, ["cat", "dog"], "X X a photo of a", n_ctx=2)
    >>> prompts.assemble(ctx).shape   # ctx: (2, D)
    torch.Size([2, 77, D])
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], prefix: str, n_ctx: int,
                 class_token_position: str = "end", suffix: str = "."):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise UserError(f"CLASS_TOKEN_POSITION is {class_token_position!r}; choose one of "
                            f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        names = [name.replace("_", " ") for name in classnames]
        texts = [f"{prefix} {name}{suffix}" if prefix else f"{name}{suffix}" for name in names]
        ids = clip.tokenize(texts, context_length=clip_model.context_length)
        ids = ids.to(clip_model.token_embedding.weight.device)  # the buffers live where the model does
        with torch.no_grad():
            emb = clip_model.token_embedding(ids).to(MASTER_DTYPE)
        self.n_ctx = n_ctx
        self.texts = texts
        self.class_token_position = class_token_position
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1], persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:], persistent=False)
        # Embedding of the placeholder words, the natural initial value of the learned context.
        self.register_buffer("init_ctx", emb[0, 1:1 + n_ctx].clone(), persistent=False)
        if class_token_position != "end":
            name_lens = [len(clip.tokenizer().encode(name)) for name in names]
            order = _class_token_order(name_lens, n_ctx, ids.shape[1], class_token_position)
            self.register_buffer("token_order", order.to(ids.device), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.token_ids.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Token embeddings of every class prompt with ``ctx`` in the context slots.

        Args:
            ctx: (n_ctx, D) shared context, or (C, n_ctx, D) class-specific context.
        Returns:
            (C, L, D) embeddings, positional embedding not yet added.
        """
        c = self.num_classes
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        ctx = ctx.to(self.token_prefix.dtype)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        if self.class_token_position == "end":
            return x
        # middle / front: move the class-name tokens (one gather; EOT keeps its position)
        return x.gather(1, self.token_order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


#: Where CoOp's class-name tokens sit relative to the learned context (``TRAINER.COOP.CLASS_TOKEN_POSITION``).
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def context_vectors(class_prompts: ClassPrompts, from_phrase: bool, width: int,
                    class_specific: Optional[bool] = None) -> torch.Tensor:
    """CoOp's initial context: the embeddings of the init phrase, else N(0, 0.02) vectors, one set shared by every
    class or (``class_specific``, CoOp's ``CSC``) one per class. ``class_specific=None``: a method without CSC.

    Returns (n_ctx, width), or (C, n_ctx, width) class-specific.
    """
    n_ctx = class_prompts.n_ctx
    if from_phrase:
        return class_prompts.init_ctx.clone()
    if class_specific:
        print("Initializing class-specific contexts")
        return torch.empty(class_prompts.num_classes, n_ctx, width).normal_(std=0.02)
    if class_specific is not None:
        print("Initializing a generic context")
    return torch.empty(n_ctx, width).normal_(std=0.02)


def _class_token_order(name_lens: Sequence[int], n_ctx: int, length: int, position: str) -> torch.Tensor:
    """(C, L) source positions that turn CoOp's "end" layout into the "middle" or "front" one.

    "end":    [SOS, ctx_1..ctx_n, name, rest]
    "middle": [SOS, ctx_1..ctx_h, name, ctx_h+1..ctx_n, rest] with h = n // 2
    "front":  [SOS, name, ctx_1..ctx_n, rest]
    """
    half = n_ctx // 2 if position == "middle" else 0
    rows = []
    for n in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        rows.append([0] + ctx[:half] + name + ctx[half:] + list(range(1 + n_ctx + n, length)))
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# What a prompt set returns, how sets compose, and the prompted CLIP
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    """One prompt set's contribution to a forward pass.

    The set that holds the class prompts gives ``text_ids`` (and usually ``text_embeddings``); any other set gives
    ``text_tokens``, which are inserted into those class prompts at the set's place in the text order.

    text_ids: (C, L) token ids of the class prompts, locating EOT.
    text_embeddings: (C, L, D) text-encoder input with the learned context in place (or, for a prompt learner
        conditioned on the image, (B, C, L', D)); None: the plain class prompts ``text_ids``.
    text_tokens: (n, D) layer-0 text tokens of a set that does not hold the class prompts.
    text_ops / vision_ops: per-layer token operations of this set (index = layer), or None.
    n_text_prompt: the tokens after SOS that form this set's part of the text prompt segment at layer 0.
    text_block_ops / vision_block_ops: per-block operations inside the encoders' blocks (:class:`clip.BlockOp`:
        residual branches, low-rank weight updates; index = block), or None. Several sets' add up.
    """

    text_ids: Optional[torch.Tensor] = None
    text_embeddings: Optional[torch.Tensor] = None
    text_tokens: Optional[torch.Tensor] = None
    text_ops: Optional[List[Optional[LayerOp]]] = None
    vision_ops: Optional[List[Optional[LayerOp]]] = None
    n_text_prompt: int = 0
    text_block_ops: Optional[List[Optional[clip.BlockOp]]] = None
    vision_block_ops: Optional[List[Optional[clip.BlockOp]]] = None

    def tensors(self):
        """Every tensor this set feeds into the text encoder (to tell whether text features can be cached)."""
        out = [t for t in (self.text_embeddings, self.text_tokens) if t is not None]
        for op in self.text_ops or ():
            for member in (op if isinstance(op, (tuple, list)) else (op,)):
                if member is not None:
                    out += [t for t in (member.add, member.replace) if t is not None]
        return out + clip.ops.block_ops_tensors(self.text_block_ops)


def compose_prompts(sets: Mapping[str, Prompts], text_order: Sequence[str], vision_order: Sequence[str],
                    token_embedding: nn.Module, context_length: int) -> Prompts:
    """One :class:`Prompts` from several sets, placed in the declared orders (see :mod:`clip.ops`).

    Exactly one set holds the class prompts (``text_ids``). The text input becomes
    ``[SOS][part of set 1][part of set 2]..[words][EOT]`` in ``text_order``; every part keeps its own ops.
    """
    if len(sets) == 1:
        return next(iter(sets.values()))
    holders = [name for name, p in sets.items() if p.text_ids is not None]
    if len(holders) != 1:
        raise ValueError(f"exactly one prompt set must hold the class prompts (text_ids); got {holders}")
    base = sets[holders[0]]
    ids = base.text_ids
    emb = base.text_embeddings if base.text_embeddings is not None else token_embedding(ids)
    lead = emb.shape[:-2]  # (C,) or, for image-conditioned class prompts, (B, C)
    seq = emb.dim() - 2  # the sequence dimension
    n_cls = ids.shape[0]
    length = emb.shape[-2]  # a conditioned learner may hand over a truncated length
    ids = ids[:, :length]
    pieces, id_pieces, parts = [emb.narrow(seq, 0, 1)], [ids[:, :1]], []
    n_base = base.n_text_prompt
    for name in text_order:
        p = sets[name]
        if name == holders[0]:
            n = n_base
            pieces.append(emb.narrow(seq, 1, n))
            id_pieces.append(ids[:, 1:1 + n])
        else:
            tok = p.text_tokens
            n = 0 if tok is None else tok.shape[-2]
            if n:
                if tok.dim() != 2:
                    raise ValueError(f"prompt set {name!r}: text_tokens must be (n, D), got {tuple(tok.shape)}")
                pieces.append(tok.to(emb.dtype).expand(*lead, -1, -1))
                id_pieces.append(ids.new_zeros(n_cls, n))  # placeholders: never the EOT (the largest id)
        parts.append(n)
    pieces.append(emb.narrow(seq, 1 + n_base, length - 1 - n_base))
    id_pieces.append(ids[:, 1 + n_base:])
    emb, ids = torch.cat(pieces, dim=seq), torch.cat(id_pieces, dim=1)
    last_eot = int(ids.argmax(dim=-1).max()) if ids.device.type != "meta" else 0
    if last_eot >= context_length:
        raise UserError(f"the composed text prompts are {last_eot + 1} tokens long, more than CLIP's context of "
                        f"{context_length}: use fewer prompt tokens or shorter class names")
    emb, ids = emb.narrow(seq, 0, min(emb.shape[seq], context_length)), ids[:, :context_length]
    return Prompts(
        text_ids=ids, text_embeddings=emb,
        text_ops=clip.compose([sets[n].text_ops for n in text_order]),
        vision_ops=clip.compose([sets[n].vision_ops for n in vision_order]),
        n_text_prompt=tuple(parts),
        text_block_ops=clip.merge_block_ops([sets[n].text_block_ops for n in text_order]),
        vision_block_ops=clip.merge_block_ops([sets[n].vision_block_ops for n in vision_order]),
    )


def replaced_text_ops(deep: Sequence[torch.Tensor]) -> Optional[List[Optional[LayerOp]]]:
    """Text ops of IVLP-style deep prompts: layer ``l >= 1`` overwrites the set's tokens with ``deep[l-1]``."""
    if not len(deep):
        return None
    return [None] + [LayerOp(replace=t) for t in deep]


def replaced_vision_ops(prompts: Sequence[torch.Tensor], n: int) -> Optional[List[Optional[LayerOp]]]:
    """Vision ops of IVLP-style deep prompts: ``prompts[0]`` added before layer 0, then each layer removes the
    ``n`` tokens of the one before and adds its own."""
    if not len(prompts):
        return None
    first, *deep = list(prompts)
    return [LayerOp(add=first)] + [LayerOp(remove=n, add=v) for v in deep]


class DeepPrompts(nn.Module):
    """IVLP-style deep prompts in both encoders: IVLP's and PromptSRC's prompt learner, VPT's (text tokens 0), and a
    set beside another method's class prompts (CasPL's boosting prompts, with ``classnames=None``).

    Text: ``n_text`` tokens right after SOS (at the set's place in the text order), overwritten in place by the
    layer's own tokens at text layers ``1 .. depth_text-1``. Vision: ``n_vision`` tokens appended after the patches
    (at the set's place), removed and replaced by the layer's own at vision layers ``1 .. depth_vision-1``. Depth 0
    or 0 tokens turns a branch off.

    With ``classnames`` the set holds the class prompts ``"{ctx_init} {class}."``: its first ``n_text`` tokens are
    learned, started from the phrase when :func:`learned_context`'s ``first_tokens`` rule allows (else ``"X .. X"``
    and N(0, 0.02)). Without, the text tokens are N(0, 0.02) and inserted into the holder's class prompts.

    Parameters (the reference's names, so its checkpoints load): ``ctx`` (n_text, Dt); ``text_prompts[l-1]``
    (n_text, Dt) for text layer l = 1..depth_text-1; ``vision_prompts[l]`` (n_vision, Dv), l = 0..depth_vision-1.
    ``key``: the config block that set the sizes (``TRAINER.IVLP``, ``KD``), named by errors.
    """

    def __init__(self, clip_model: nn.Module, n_text: int, depth_text: int, n_vision: int, depth_vision: int,
                 key: str, classnames: Optional[Sequence[str]] = None, ctx_init: str = ""):
        super().__init__()
        n_text, depth_text, n_vision, depth_vision = int(n_text), int(depth_text), int(n_vision), int(depth_vision)
        vision_on = bool(n_vision and depth_vision)
        dims = encoder_dims(clip_model, need_vit=key if vision_on else "")
        if n_text < 0 or n_vision < 0:
            raise UserError(f"{key}: the numbers of prompt tokens must not be negative, got {n_text} (text) and "
                            f"{n_vision} (vision)")
        if not 0 <= depth_text <= dims.text_layers or (n_text and depth_text < 1):
            raise UserError(f"{key}: the text prompt depth must be between {1 if n_text else 0} and the text "
                            f"encoder's {dims.text_layers} layers, got {depth_text}")
        if vision_on and not 1 <= depth_vision <= dims.vision_layers:
            raise UserError(f"{key}: the vision prompt depth must be between 1 and the image encoder's "
                            f"{dims.vision_layers} layers, got {depth_vision}")
        if depth_vision < 0:
            raise UserError(f"{key}: the vision prompt depth must not be negative, got {depth_vision}")
        self.n_text, self.n_vision = n_text, n_vision
        dt = dims.text_width

        def normal(n, d):
            return nn.Parameter(torch.empty(n, d).normal_(std=0.02))

        self.class_prompts = None
        if classnames is not None:
            if n_text:
                prefix, _, from_phrase = learned_context(ctx_init, n_text, key, "first_tokens", n_ctx_key="N_CTX_TEXT")
            else:  # a fixed hand-written prompt (VPT)
                prefix, from_phrase = " ".join(str(ctx_init).replace("_", " ").split()), False
            self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_text)
            self.ctx = (nn.Parameter(self.class_prompts.init_ctx.clone()) if from_phrase else normal(n_text, dt)) \
                if n_text else None
        else:
            self.ctx = normal(n_text, dt) if n_text else None
        self.text_prompts = nn.ParameterList([normal(n_text, dt) for _ in range(depth_text - 1)] if n_text else [])
        self.vision_prompts = nn.ParameterList(
            [normal(n_vision, dims.vision_width) for _ in range(depth_vision)] if vision_on else [])
        if self.class_prompts is not None:
            print(f'Text prompt: "{self.class_prompts.texts[0]}" ({n_text} learned context token(s), '
                  f"{len(self.text_prompts) + bool(n_text)} text layer(s) prompted); "
                  f"{n_vision if vision_on else 0} vision prompt token(s) at {len(self.vision_prompts)} layer(s)")

    def text_ops(self) -> Optional[List[Optional[LayerOp]]]:
        return replaced_text_ops(self.text_prompts)

    def vision_ops(self) -> Optional[List[Optional[LayerOp]]]:
        return replaced_vision_ops(self.vision_prompts, self.n_vision)

    def forward(self) -> Prompts:
        cp = self.class_prompts
        if cp is None:
            return Prompts(text_tokens=self.ctx, text_ops=self.text_ops(), vision_ops=self.vision_ops())
        return Prompts(text_ids=cp.token_ids, text_embeddings=cp.assemble(self.ctx) if self.n_text else None,
                       text_ops=self.text_ops(), vision_ops=self.vision_ops(), n_text_prompt=self.n_text)

    @staticmethod
    def sizes_of(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
        """Token counts and depths of a :class:`DeepPrompts` state dict, in the config's key names (``N_CTX_TEXT``,
        ``PROMPT_DEPTH_TEXT``, ``N_CTX_VISION``, ``PROMPT_DEPTH_VISION``); a depth is 0 where there are no tokens."""
        def count(prefix):
            return sum(1 for k in state if k.startswith(prefix) and k[len(prefix):].isdigit())

        n_text = int(state["ctx"].shape[0]) if torch.is_tensor(state.get("ctx")) else 0
        n_vision = int(state["vision_prompts.0"].shape[0]) if torch.is_tensor(state.get("vision_prompts.0")) else 0
        return {"N_CTX_TEXT": n_text, "PROMPT_DEPTH_TEXT": 1 + count("text_prompts.") if n_text else 0,
                "N_CTX_VISION": n_vision, "PROMPT_DEPTH_VISION": count("vision_prompts.") if n_vision else 0}


# ----------------------------------------------------------------------------------------------------------
