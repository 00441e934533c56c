"""The method contract: prompt sets, the prompted CLIP that composes them, and the trainer base.

A method is

* one or more **prompt sets**. A prompt set is an ``nn.Module`` whose ``forward()`` returns a :class:`Prompts`:
  its tokens and the per-layer token operations (:class:`clip.LayerOp`) it contributes to each encoder. The
  method's own set is its *prompt learner* (trainable; the registered model, which checkpoints hold). Further
  sets can be declared **frozen** and loaded from an earlier run (:meth:`PromptTrainer.build_frozen_sets`,
  :func:`load_prompt_set`): they are never updated, never counted, never saved, and their origin (path + SHA256)
  is recorded in the new run's checkpoint and ``result.json``.
* an **order** of the sets in each encoder (:meth:`PromptTrainer.prompt_order`), e.g. vision
  ``[CLS][patches][boost][adapt]`` and text ``[SOS][adapt][boost][words][EOT]``. Positions are derived from the
  order (:func:`clip.compose`); no method writes a position as a number.
* optionally **frozen models** (:meth:`PromptTrainer.teacher`: a CLIP of another size by name or path, loaded
  once through the same loader and precision policy; never in checkpoints) and a **loss**
  (:meth:`PromptTrainer.compute_loss`), which sees the one model output, :class:`ModelOutput`.

The prompted CLIP (:class:`PromptedCLIP`) is the same for every method: it composes the sets, runs both encoders
and returns a :class:`ModelOutput` (logits, image and text features, logit scale, the prompts). Image-conditioned
prompts (CoCoOp) are a prompt learner with ``conditioned_on_image = True``: it receives the image features.
Text features are computed once and reused while nothing they depend on can change: during evaluation
(:meth:`PromptedCLIP.frozen_text_features`) and, for methods whose text side has nothing trainable (VPT), always.

Everything else -- precision, freezing, the optimiser, checkpoints that hold only what is learned, loading the
reference repositories' whole-model checkpoints -- lives here, written once. ``README.md`` ("Write your own
method") walks through KgCoOp (``trainers/kgcoop.py``) as a worked example.
"""
from __future__ import annotations

import contextlib
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip import MASTER_DTYPE, LayerOp
from clip.download import sha256_of
from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint

try:  # this project's engine prints it as one "error:" line
    from dassl.utils import UserError
except ImportError:  # the real Dassl.pytorch has no such class
    class UserError(Exception):
        """A problem with the user's input, explained by the message."""

#: The precisions a method config may ask for (``TRAINER.<M>.PREC``).
PRECISIONS = ("fp32", "fp16", "bf16", "amp")
#: The name of the method's own (trainable) prompt set in prompt orders.
ADAPT = "adapt"


def load_clip(cfg, name: Optional[str] = None, key: str = "MODEL.BACKBONE.NAME") -> nn.Module:
    """Load the frozen CLIP named by ``name`` (default ``cfg.MODEL.BACKBONE.NAME``) on the CPU, in fp32.

    The name is a released model (``ViT-B/16``), a registered project model (``tiny-digits``) or a checkpoint
    path. Weights are cast to the run's precision later, once the prompt learner has read what it needs. ``key``
    is the config key that named it, for the error message.
    """
    name = name or cfg.MODEL.BACKBONE.NAME
    try:
        model, _ = clip.load(name, device="cpu", precision="fp32")
    except clip.DownloadError as err:  # offline or a bad checksum: the message says which file to put where
        raise UserError(f"CLIP backbone {name!r}: {err}") from err
    except (ValueError, FileNotFoundError) as err:  # neither a registered name nor a checkpoint file
        raise UserError(f"{key}: {err}; give a model name or the path of a CLIP checkpoint") from err
    return model.eval()


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
    """The sizes a prompt learner needs. ``need_vit``: the config block of a method with vision prompts, which
    then refuses a ResNet backbone with one clear error."""
    is_vit = bool(getattr(clip_model, "is_vit", False))
    if need_vit and not is_vit:
        raise UserError(
            f"TRAINER.{need_vit} puts prompts into the image encoder's transformer layers, which needs a Vision "
            f"Transformer backbone (ViT-B/32, ViT-B/16, ViT-L/14, ...); this CLIP has a ResNet image encoder. Choose "
            "a ViT with MODEL.BACKBONE.NAME, or a text-only method (CoOp, CoCoOp, KgCoOp)")
    visual = clip_model.visual
    return EncoderDims(
        text_width=clip_model.transformer.width, text_layers=clip_model.transformer.layers,
        vision_width=visual.width if is_vit else None, vision_layers=visual.transformer.layers if is_vit else None,
    )


def learned_context(ctx_init: str, n_ctx: int, key: str, rule: str) -> Tuple[str, int, bool]:
    """The one reading of ``CTX_INIT``/``N_CTX``: (prompt prefix, number of learned vectors, init from the phrase).

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
                    f'TRAINER.{key}.CTX_INIT "{init}" has {n_tokens} token(s), fewer than N_CTX={n_ctx}: the learned '
                    f"context would cover the class name. Give a phrase of at least {n_ctx} tokens, lower N_CTX, "
                    "or set CTX_INIT \"\" for random context")
            return init, n_ctx, True
    else:
        raise ValueError(f"unknown context rule {rule!r}")
    if n_ctx < 1:
        raise UserError(f"TRAINER.{key}.N_CTX must be at least 1 when CTX_INIT gives no phrase, got {n_ctx}")
    return " ".join(["X"] * n_ctx), n_ctx, False


# ----------------------------------------------------------------------------------------------------------
# Class prompts: token ids and frozen embeddings around learnable context slots
# ----------------------------------------------------------------------------------------------------------
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
            raise ValueError(f"class token position {class_token_position!r}; choose one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        names = [name.replace("_", " ") for name in classnames]
        texts = [f"{prefix} {name}{suffix}" if prefix else f"{name}{suffix}" for name in names]
        ids = clip.tokenize(texts, context_length=clip_model.context_length)
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
            self.register_buffer("token_order", order, persistent=False)

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
    """

    text_ids: Optional[torch.Tensor] = None
    text_embeddings: Optional[torch.Tensor] = None
    text_tokens: Optional[torch.Tensor] = None
    text_ops: Optional[List[Optional[LayerOp]]] = None
    vision_ops: Optional[List[Optional[LayerOp]]] = None
    n_text_prompt: int = 0

    def tensors(self):
        """Every tensor this set feeds into the text encoder (to tell whether text features can be cached)."""
        out = [t for t in (self.text_embeddings, self.text_tokens) if t is not None]
        for op in self.text_ops or ():
            for member in (op if isinstance(op, (tuple, list)) else (op,)):
                if member is not None:
                    out += [t for t in (member.add, member.replace) if t is not None]
        return out


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
    )


@dataclass
class ModelOutput:
    """What the prompted CLIP returns for a batch (every method, training and evaluation).

    logits: (B, C) ``logit_scale * image_features @ text_features.T`` (per image for conditioned prompts).
    image_features: (B, E) and text_features: (C, E) or (B, C, E), L2-normalised.
    logit_scale: the exponentiated scale. prompts: the composed :class:`Prompts` of this pass.
    """

    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    prompts: Optional[Prompts] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)


class PromptedCLIP(nn.Module):
    """Frozen CLIP driven by prompt sets: ``logits = exp(logit_scale) * cos(image, class text)``.

    Args:
        clip_model: the frozen CLIP.
        prompt_learner: the method's own prompt set (the only trainable module).
        frozen_sets: further prompt sets by name (frozen: never trained or saved).
        text_order / vision_order: the sets' names in token order per encoder (the learner is ``"adapt"``);
            default: the learner, then the frozen sets in the given order.
    Input shape: image (B, 3, H, W). Output: :class:`ModelOutput`.
    """

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module,
                 frozen_sets: Optional[Mapping[str, nn.Module]] = None,
                 text_order: Optional[Sequence[str]] = None, vision_order: Optional[Sequence[str]] = None):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.clip_model = clip_model
        self.frozen_sets = nn.ModuleDict(dict(frozen_sets or {}))
        names = [ADAPT, *self.frozen_sets.keys()]
        self.text_order = tuple(text_order or names)
        self.vision_order = tuple(vision_order or names)
        for what, order in (("text_order", self.text_order), ("vision_order", self.vision_order)):
            if sorted(order) != sorted(names):
                raise ValueError(f"{what} {list(order)} must name every prompt set once: {names}")
        #: frozen models a method needs (a teacher CLIP); never in checkpoints, see PromptTrainer.teacher
        self.teachers = nn.ModuleDict()
        self._cached_text: Optional[torch.Tensor] = None
        self._cached_prompts: Optional[Prompts] = None
        self._fixed_text: Optional[Tuple] = None  # (key, features) when the text side has nothing to learn
        #: whether text features depend on nothing trainable; None: decided at the first forward
        self.text_is_fixed: Optional[bool] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_model.dtype

    @property
    def conditioned_on_image(self) -> bool:
        return bool(getattr(self.prompt_learner, "conditioned_on_image", False))

    # -- prompts -------------------------------------------------------------------------------------------
    def prompts(self, image_features: Optional[torch.Tensor] = None, length: int = 0) -> Prompts:
        """The composed prompts of all sets (``image_features``/``length``: for a conditioned learner)."""
        if self.conditioned_on_image:
            own = self.prompt_learner(image_features, length=length)
        else:
            own = self.prompt_learner()
        if not len(self.frozen_sets):
            return own
        sets = {ADAPT: own, **{name: m() for name, m in self.frozen_sets.items()}}
        model = self.clip_model
        return compose_prompts(sets, self.text_order, self.vision_order, model.token_embedding, model.context_length)

    def _vision_ops(self):
        """Vision ops when the learner is conditioned on the image (then only frozen sets prompt the image)."""
        if not len(self.frozen_sets):
            return None
        sets = [self.frozen_sets[n]() for n in self.vision_order if n != ADAPT]
        return clip.compose([p.vision_ops for p in sets])

    # -- encoders ------------------------------------------------------------------------------------------
    def encode_text(self, prompts: Prompts) -> torch.Tensor:
        """(C, E) L2-normalised class features. The encoders cast inputs and op tensors to the model's dtype."""
        model = self.clip_model
        if prompts.text_embeddings is None and prompts.text_ops is None:  # plain class prompts
            feats = model.encode_text(prompts.text_ids)
        else:
            emb = prompts.text_embeddings
            if emb is None:
                emb = model.token_embedding(prompts.text_ids)
            feats = model.encode_text_embeddings(emb, prompts.text_ids, ops=prompts.text_ops,
                                                 n_prompt=prompts.n_text_prompt)
        return feats / feats.norm(dim=-1, keepdim=True)

    def encode_image(self, image: torch.Tensor, prompts: Optional[Prompts]) -> torch.Tensor:
        """(B, E) L2-normalised image features."""
        ops = prompts.vision_ops if prompts is not None else None
        feats = self.clip_model.encode_image(image, ops=ops)
        return feats / feats.norm(dim=-1, keepdim=True)

    def text_features(self, prompts: Prompts) -> torch.Tensor:
        """The class features, from the one cache when it is valid (evaluation, or a text side fixed for good)."""
        if self._cached_text is not None:
            return self._cached_text
        if self.text_is_fixed is None:
            self.refresh_text_dependency()
        if self.text_is_fixed:
            key = (prompts.text_ids.device, self.dtype)
            if self._fixed_text is None or self._fixed_text[0] != key:
                with torch.no_grad():
                    self._fixed_text = (key, self.encode_text(prompts))
            return self._fixed_text[1]
        return self.encode_text(prompts)

    def refresh_text_dependency(self) -> bool:
        """Decide once (after freezing) whether text features depend on anything trainable; returns the answer."""
        self._fixed_text = None
        if self.conditioned_on_image:
            self.text_is_fixed = False
        else:
            with torch.enable_grad():
                tensors = self.prompts().tensors()
            self.text_is_fixed = not any(t.requires_grad for t in tensors)
        return self.text_is_fixed

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> ModelOutput:
        scale = self.clip_model.logit_scale.exp()
        if self.conditioned_on_image:
            return self._forward_conditioned(image, scale)
        prompts = self._cached_prompts
        if prompts is None or torch.is_grad_enabled():  # a graph is never reused across batches
            prompts = self.prompts()
        text = self.text_features(prompts)
        image_features = self.encode_image(image, prompts)
        return ModelOutput(scale * image_features @ text.t(), image_features, text, scale, prompts)

    def _forward_conditioned(self, image: torch.Tensor, scale: torch.Tensor) -> ModelOutput:
        """Text prompts that depend on each image (CoCoOp), bounded by the learner's ``prompts_per_chunk`` (0: no
        bound): a memory budget of that many whole prompts (:meth:`clip.model.CLIP.text_memory_bytes`).

        In training, the prompts of all images go through the text encoder in one call (the shared-prefix encoding
        runs each image's context once), and the budget bounds what it keeps for backward: beyond it, rows run
        in checkpointed chunks. In evaluation nothing is kept, so the images go in calls of ``prompts_per_chunk``
        sequences (images x classes), at least one image's classes per call, each under the same budget."""
        model, learner = self.clip_model, self.prompt_learner
        image_features = self.encode_image(image, Prompts(vision_ops=self._vision_ops()))
        ids = learner.class_prompts.token_ids
        length = 0
        if model.text_truncation and ids.device.type != "meta":
            # exact under the causal mask: nothing after the last EOT reaches any EOT feature
            length = int(ids.argmax(dim=-1).max()) + 1
        n_cls = ids.shape[0]
        per_chunk = int(getattr(learner, "prompts_per_chunk", 0))
        grad = torch.is_grad_enabled()
        budget = model.text_memory_bytes(per_chunk, length or ids.shape[1], grad=grad) if per_chunk > 0 else None
        step = max(image_features.shape[0], 1) if per_chunk <= 0 or grad else max(1, per_chunk // n_cls)
        logits, texts = [], []
        for start in range(0, image_features.shape[0], step):
            f = image_features[start:start + step]
            prompts = self.prompts(f, length=length)  # text_embeddings (b, C, L, D), with any frozen sets' tokens
            emb = prompts.text_embeddings
            b, width = emb.shape[0], emb.shape[-1]
            seq_ids = prompts.text_ids[:, :emb.shape[-2]]
            text = model.encode_text_embeddings(emb.reshape(b * n_cls, -1, width), seq_ids.repeat(b, 1),
                                                ops=prompts.text_ops, n_prompt=prompts.n_text_prompt,
                                                memory_budget=budget)
            text = (text / text.norm(dim=-1, keepdim=True)).view(b, n_cls, -1)
            texts.append(text)
            logits.append(scale * torch.einsum("be,bce->bc", f, text))
        return ModelOutput(torch.cat(logits), image_features, torch.cat(texts), scale, None)

    @contextlib.contextmanager
    def frozen_text_features(self):
        """Within this block, the prompts and text features are computed once and reused for every batch without
        gradients (evaluation: the prompts do not change). For prompts conditioned on the image it changes
        nothing."""
        if self.conditioned_on_image:
            yield
            return
        with torch.no_grad():
            # the prompts too (vision ops included): rebuilding them for every test batch would assemble every
            # class's text embeddings again only to throw them away (80 ms per batch at 1000 classes on a CPU)
            self._cached_prompts = self.prompts()
            self._cached_text = self.encode_text(self._cached_prompts)
        try:
            yield
        finally:
            self._cached_text = self._cached_prompts = None


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
    """IVLP-style deep prompts as a set that sits beside another set's class prompts (e.g. CasPL's boosting set).

    Text: ``n_text`` tokens inserted after SOS at the set's place in the text order, replaced in place by the
    layer's own tokens at text layers ``1 .. depth_text-1``. Vision: ``n_vision`` tokens appended after the patches
    (at the set's place), replaced at vision layers ``1 .. depth_vision-1``. Everything N(0, 0.02).

    Parameters: ``ctx`` (n_text, Dt); ``text_prompts[l]`` (n_text, Dt), l = 1..depth_text-1;
    ``vision_prompts[l]`` (n_vision, Dv), l = 0..depth_vision-1.
    """

    def __init__(self, clip_model: nn.Module, n_text: int, depth_text: int, n_vision: int, depth_vision: int,
                 key: str = "PROMPTS"):
        super().__init__()
        n_text, depth_text, n_vision, depth_vision = int(n_text), int(depth_text), int(n_vision), int(depth_vision)
        dims = encoder_dims(clip_model, need_vit=key if n_vision and depth_vision else "")
        where = key if key == "KD" else f"TRAINER.{key}"  # CasPL's block is top-level, as in its fork
        if n_text < 0 or n_vision < 0:
            raise UserError(f"{where}: the numbers of prompt tokens must not be negative")
        if not 0 <= depth_text <= dims.text_layers or (n_text and depth_text < 1):
            raise UserError(f"{where}: the text prompt depth must be between 1 and the text encoder's "
                            f"{dims.text_layers} layers, got {depth_text}")
        if n_vision and depth_vision and not 1 <= depth_vision <= dims.vision_layers:
            raise UserError(f"{where}: the vision prompt depth must be between 1 and the image encoder's "
                            f"{dims.vision_layers} layers, got {depth_vision}")
        self.n_text, self.n_vision = n_text, n_vision
        dt = dims.text_width

        def normal(n, d):
            return nn.Parameter(torch.empty(n, d).normal_(std=0.02))

        self.ctx = normal(n_text, dt) if n_text else None
        self.text_prompts = nn.ParameterList([normal(n_text, dt) for _ in range(depth_text - 1)] if n_text else [])
        self.vision_prompts = nn.ParameterList(
            [normal(n_vision, dims.vision_width) for _ in range(depth_vision)] if n_vision and depth_vision else [])

    def forward(self) -> Prompts:
        return Prompts(text_tokens=self.ctx, text_ops=replaced_text_ops(self.text_prompts),
                       vision_ops=replaced_vision_ops(self.vision_prompts, self.n_vision))

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
# Prompt sets from earlier runs
# ----------------------------------------------------------------------------------------------------------
def read_checkpoint_pointer(folder: str) -> Optional[str]:
    """The file Dassl's ``<folder>/checkpoint`` pointer names (the newest save), or None without a pointer."""
    pointer = osp.join(folder, "checkpoint")
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        return osp.join(folder, f.readline().strip())


def resolve_run_checkpoint(source: str, model_name: str, epoch: Optional[int] = None) -> Tuple[str, Optional[int]]:
    """The checkpoint file of a run folder (or the file itself) and its epoch.

    For a folder: ``<source>/<model_name>/model.pth.tar-<epoch>``, with the epoch given, else the one the run
    recorded in ``result.json``, else the newest the ``checkpoint`` pointer names.
    """
    if osp.isfile(source):
        return source, epoch
    if not osp.isdir(source):
        raise UserError(f'no run folder or checkpoint file at "{source}"')
    if epoch is None:
        result = osp.join(source, "result.json")
        if osp.isfile(result):
            with open(result) as f:
                epoch = json.load(f).get("epochs")
    folder = osp.join(source, model_name)
    if epoch is not None:
        path = osp.join(folder, f"model.pth.tar-{epoch}")
    else:
        path = read_checkpoint_pointer(folder)
        if path is None:
            raise UserError(f'the run folder "{source}" holds no {model_name} checkpoint (no '
                            f'"{osp.join(folder, "checkpoint")}"): finish that run first, or give the checkpoint '
                            "file itself")
    if not osp.isfile(path):
        raise UserError(f'no checkpoint at "{path}": finish the run in "{source}" first, or give the checkpoint file')
    return path, epoch


def load_prompt_set(module: nn.Module, source: str, model_name: str, epoch: Optional[int] = None,
                    what: str = "prompt set", convert=None, sizes=None) -> Dict[str, object]:
    """Load a prompt set's parameters from an earlier run (folder or file), freeze it, and return its origin.

    Every parameter must be present with the same shape: a mismatch names the parameter and both shapes (a
    different prompt size or depth between the runs). ``convert``: a function applied to the checkpoint's whole
    state dict first (a trainer's ``convert_reference_state``, so a reference repository's checkpoint loads).
    ``sizes``: a function from a state dict to named sizes (``{"KD.PROMPT_DEPTH_VISION": 12, ...}``); on a
    mismatch, the error names each differing size with both values first (e.g. a depth, whose difference shows
    in the tensors only as missing or extra layers). Returns ``{"path", "sha256", "epoch", "model"}``.
    """
    path, epoch = resolve_run_checkpoint(source, model_name, epoch)
    checkpoint = load_checkpoint(path)
    state = checkpoint["state_dict"]
    state = extract_prompt_state(convert(state) if convert is not None else state)
    own = module.state_dict()
    problems = []
    for name, value in own.items():
        if not torch.is_tensor(value):
            continue
        if name not in state:
            problems.append(f"{name} is missing")
        elif tuple(state[name].shape) != tuple(value.shape):
            problems.append(f"{name} has shape {tuple(state[name].shape)} there but {tuple(value.shape)} here")
    extra = [k for k, v in state.items() if torch.is_tensor(v) and k not in own]
    if problems or extra:
        named = []
        if sizes is not None:
            there, here = sizes(state), sizes(own)
            named = [f"{k} is {there[k]} there but {here[k]} here" for k in here if k in there and there[k] != here[k]]
        detail = "; ".join(named + problems + [f"{k} is not expected here" for k in extra])
        raise UserError(f'the {what} in "{path}" does not match this configuration: {detail}. Use the same prompt '
                        "sizes and depth as the run that made it")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for p in module.parameters():
        p.requires_grad_(False)
    return {"path": osp.abspath(path), "sha256": sha256_of(path),
            "epoch": checkpoint.get("epoch", epoch), "model": model_name}


class FrozenSetOrigins(nn.Module):
    """Records where a run's frozen prompt sets came from, inside the learner's checkpoint (``_extra_state``),
    so both Dassl engines save it and a checkpoint says which frozen prompts it was trained beside."""

    def __init__(self, origins: Optional[Dict[str, dict]] = None):
        super().__init__()
        self.origins = dict(origins or {})

    def get_extra_state(self):
        return {"origins": json.dumps(self.origins, sort_keys=True)}

    def set_extra_state(self, state):
        self.origins = json.loads(state.get("origins", "{}")) if isinstance(state, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# The trainer base
# ----------------------------------------------------------------------------------------------------------
class PromptTrainer(TrainerX):
    """Dassl ``TrainerX`` for a frozen CLIP with prompt sets.

    Subclasses set :attr:`CFG_KEY` (``cfg.TRAINER.<CFG_KEY>``), :attr:`MODEL_NAME` (the registered name, which
    is also the checkpoint folder; the reference repositories' names are kept) and implement
    :meth:`build_prompt_learner`; optionally :meth:`build_frozen_sets`, :meth:`prompt_order` and
    :meth:`compute_loss`. Checkpoints hold only the prompt learner's parameters (and the origins of frozen sets).
    """

    CFG_KEY: str = ""
    MODEL_NAME: str = "prompt_learner"
    #: config names the protocol scripts use (``scripts/<method>/``, ``tools/method_defaults.py``): keys
    #: ``base2new``, ``crossdataset``, ``fewshot`` (default: the base2new one), ``digits`` (default
    #: ``tiny_digits``), and ``<key>@<dataset>`` for a dataset of its own
    SCRIPT_CONFIGS: Dict[str, str] = {}
    #: the same for CasPL's phase 2 (``scripts/caspl/run.sh`` sets ``CASPL=1``): a protocol with keys here takes
    #: them, all of that protocol's ordinary keys set aside; the other protocols keep ``SCRIPT_CONFIGS``
    CASPL_SCRIPT_CONFIGS: Dict[str, str] = {}

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_KEY]

    def check_cfg(self, cfg):
        prec = cfg.TRAINER[self.CFG_KEY].PREC
        if prec not in PRECISIONS:
            raise ValueError(
                f"TRAINER.{self.CFG_KEY}.PREC is {prec!r}; choose one of {', '.join(PRECISIONS)} "
                "(fp16 and amp fall back to fp32 on a CPU)"
            )

    # -- what a method declares ----------------------------------------------------------------------------
    def build_prompt_learner(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        raise NotImplementedError

    #: CasPL phase 2 (``KD.BOOST_DIR``): where this method's own prompts ("adapt") sit beside the frozen boosting
    #: prompts ("boost"), as (text order, vision order); the fork's orders (``shared/reference/caspl.md`` A7)
    CASCADE_ORDER: Tuple[Tuple[str, ...], Tuple[str, ...]] = ((ADAPT, "boost"), ("boost", ADAPT))

    def build_frozen_sets(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> Dict[str, nn.Module]:
        """Frozen prompt sets by name. Default: CasPL's boosting prompts when ``KD.BOOST_DIR`` names a phase-1
        run (any method can be cascaded), else none. Load sets with :meth:`load_frozen_set`."""
        kd = cfg.get("KD")
        if kd is None or not kd.get("BOOST_DIR"):
            return {}
        boost = DeepPrompts(clip_model, n_text=kd.N_CTX_TEXT, depth_text=kd.PROMPT_DEPTH_TEXT,
                            n_vision=kd.N_CTX_VISION, depth_vision=kd.PROMPT_DEPTH_VISION, key="KD")
        epoch = int(kd.BOOST_EPOCH) if int(kd.BOOST_EPOCH) >= 0 else None
        try:
            self.load_frozen_set("boost", boost, kd.BOOST_DIR, kd.BOOST_MODEL_NAME, epoch,
                                 sizes=lambda state: {f"KD.{k}": v for k, v in DeepPrompts.sizes_of(state).items()})
        except UserError as err:
            if "does not match" in str(err):  # sizes or depths other than phase 1's
                raise UserError(f"{err} (set KD.N_CTX_* and KD.PROMPT_DEPTH_* to the phase-1 run's values; "
                                "scripts/caspl/run.sh passes them from its result.json)") from None
            raise UserError(f"{err} (KD.BOOST_DIR names CasPL's phase-1 run; make one with `python train.py "
                            "--trainer CasPL --config-file configs/trainers/CasPL/<config>.yaml ...` on the same "
                            "dataset, or give KD.BOOST_DIR the folder or checkpoint file of one)") from None
        return {"boost": boost}

    def prompt_order(self, names: Sequence[str] = ()) -> Tuple[Optional[Sequence[str]], Optional[Sequence[str]]]:
        """(text order, vision order) of the prompt sets ``names`` (the frozen ones); None: the learner first,
        then the frozen sets. The boosting set of CasPL gets :attr:`CASCADE_ORDER`."""
        if list(names) == ["boost"]:
            return self.CASCADE_ORDER
        return None, None

    def build_clip_model(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        learner = self.build_prompt_learner(cfg, classnames, clip_model)
        frozen = self.build_frozen_sets(cfg, classnames, clip_model)
        text_order, vision_order = self.prompt_order(list(frozen))
        return PromptedCLIP(clip_model, learner, frozen, text_order=text_order, vision_order=vision_order)

    def load_frozen_set(self, name: str, module: nn.Module, source: str, model_name: str,
                        epoch: Optional[int] = None, sizes=None) -> nn.Module:
        """Load the frozen set ``name`` from an earlier run and record its origin (checkpoint + result.json).
        ``sizes``: as :func:`load_prompt_set`'s (named sizes, both values in the error on a mismatch)."""
        origin = load_prompt_set(module, source, model_name, epoch, what=f"frozen prompt set {name!r}", sizes=sizes)
        print(f'Frozen prompt set {name!r} from "{origin["path"]}" (epoch {origin["epoch"]}, '
              f'sha256 {origin["sha256"][:12]}...)')
        self.frozen_origins[name] = origin
        return module

    def result_extras(self) -> dict:
        """What this run adds to its ``result.json`` (``run_info["result_extras"]``, written at the end)."""
        if getattr(self, "run_info", None) is None:
            self.run_info = {}
        return self.run_info.setdefault("result_extras", {})

    def teacher(self, name: str, key: str = "MODEL.BACKBONE.NAME") -> nn.Module:
        """A frozen CLIP by model name or checkpoint path, loaded once per run in the run's precision and device.

        It lives in ``self.model.teachers`` (moved with the model, never in checkpoints). ``key``: the config key
        that named it (errors name it).
        """
        slot = self._teacher_slot(name)
        if slot not in self.model.teachers:
            print(f"Loading the frozen teacher CLIP {name!r}")
            model = load_clip(self.cfg, name, key)
            for p in model.parameters():
                p.requires_grad_(False)
            self.precision.cast_model(model)
            self.model.teachers[slot] = model.to(self.device).eval()
        return self.model.teachers[slot]

    def release_teacher(self, name: str) -> None:
        """Free a teacher loaded by :meth:`teacher` once nothing needs it any more (e.g. its outputs are cached)."""
        slot = self._teacher_slot(name)
        if slot in self.model.teachers:
            del self.model.teachers[slot]

    @staticmethod
    def _teacher_slot(name: str) -> str:
        return name.replace("/", "_").replace(".", "_")  # a module name: no dots

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = clip.resolve_precision(self.method_cfg.PREC, self.device)
        self.frozen_origins: Dict[str, dict] = {}

        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__} prompts for {len(classnames)} classes")
        # The prompt sets read fp32 embeddings; CLIP is cast to the run's precision afterwards.
        self.model = self.build_clip_model(cfg, classnames, clip_model)
        self.precision.cast_model(self.model.clip_model)

        learner = self.model.prompt_learner
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith("prompt_learner."))
        if self.frozen_origins:
            learner.add_module("frozen_set_origins", FrozenSetOrigins(self.frozen_origins))
            extras = self.result_extras()
            extras["frozen_sets"] = dict(self.frozen_origins)
            if "boost" in self.frozen_origins:  # CasPL phase 2: which boosting run this method was cascaded with
                extras["cascade"] = {"phase": 2, "boosting_run": self.frozen_origins["boost"]["path"],
                                     "boosting_sha256": self.frozen_origins["boost"]["sha256"]}
        names = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {names}")
        print(f"Number of learnable parameters: {count_learnable(self.model):,}")

        self.model.to(self.device)
        self.model.refresh_text_dependency()
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_grad_scaler else None

    # -- training -----------------------------------------------------------------------------------------
    def compute_loss(self, image: torch.Tensor, label: torch.Tensor):
        """Returns (loss, logits). Methods with other losses override this; ``self.model(image)`` gives the
        :class:`ModelOutput` (logits and features)."""
        out = self.model(image)
        return F.cross_entropy(out.logits.to(MASTER_DTYPE), label), out.logits

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast(self.device):
            loss, logits = self.compute_loss(image, label)
        self.model_zero_grad()
        if self.scaler is not None:
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            optims = [optim for optim in self._optims.values() if optim is not None]
            for optim in optims:  # the hook sees true gradients; a step with inf/NaN stays skipped by step()
                self.scaler.unscale_(optim)
            self.before_optimizer_step()
            for optim in optims:
                self.scaler.step(optim)
            self.scaler.update()
        else:
            self.model_backward(loss)
            self.before_optimizer_step()
            self.model_update()
        summary = {"loss": loss.item(), "acc": compute_accuracy(logits.to(MASTER_DTYPE), label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def before_optimizer_step(self, names=None):
        """The engine's hook between backward and the optimizer step (gradients final and unscaled; see
        ``dassl.engine.TrainerBase``), called by :meth:`forward_backward`. Defined here too, because the real
        Dassl.pytorch has no such hook: methods that override it run on both engines."""
        hook = getattr(super(), "before_optimizer_step", None)
        if hook is not None:
            hook(names)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, image):
        with self.precision.autocast(self.device):
            return self.model(image).logits.to(MASTER_DTYPE)

    # -- evaluation ---------------------------------------------------------------------------------------
    def test(self, split=None):
        self.set_model_mode("eval")
        with self.precision.autocast(self.device), self.model.frozen_text_features():
            return super().test(split)

    # -- checkpoints --------------------------------------------------------------------------------------
    def load_model(self, directory, epoch=None):
        """Load learned prompts from ``<directory>/<MODEL_NAME>/model.pth.tar-<epoch>``; without an epoch,
        ``model-best.pth.tar`` when the run kept one (``TEST.FINAL_MODEL best_val``), else the newest.

        Accepts this project's checkpoints (prompt parameters only) and the reference repositories'
        (the whole model's state dict, prompt parameters under ``prompt_learner.``).
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            path = self._checkpoint_path(directory, name, epoch)
            checkpoint = load_checkpoint(path)
            state = self.convert_reference_state(checkpoint["state_dict"])
            state = self.convert_state(extract_prompt_state(state))
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint.get("epoch")})')
            module = self._models[name]
            missing, unexpected = module.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("_extra_state")]
            if missing or unexpected:
                raise ValueError(
                    f'checkpoint "{path}" does not match the {type(self).__name__} configuration: '
                    f"missing {sorted(missing)}, unexpected {sorted(unexpected)}. Use the same config file "
                    "(prompt depth, context length, add/remove counts) as the training run."
                )

    @staticmethod
    def convert_state(state: dict) -> dict:
        """Map a reference checkpoint's parameter names to this method's (identity by default)."""
        return state

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        """Map a whole checkpoint before the prompt learner's entries are taken out (identity by default).

        For references that keep learned tensors outside ``prompt_learner`` (IVLP's and VPT's prompts live in the
        encoders' blocks): rename them to ``prompt_learner.<name>``.
        """
        return state_dict

    @staticmethod
    def _checkpoint_path(directory: str, name: str, epoch: Optional[int]) -> str:
        folder = osp.join(directory, name)
        best = osp.join(folder, "model-best.pth.tar")
        if epoch is not None:
            path = osp.join(folder, f"model.pth.tar-{epoch}")
        elif osp.isfile(best):  # Dassl's meaning of "no epoch": the best validation model
            path = best
        else:
            path = read_checkpoint_pointer(folder) or best
        if not osp.isfile(path):
            raise UserError(
                f'no checkpoint at "{path}": pass the training run\'s output folder to --model-dir and the '
                "epoch it saved (the number after model.pth.tar-) to --load-epoch"
            )
        return path


def extract_prompt_state(state_dict: dict) -> dict:
    """The prompt learner's entries of a checkpoint, in either format.

    Reference checkpoints (MaPLe, MPL, IVLP) store the whole CustomCLIP: keep ``prompt_learner.*`` and strip
    the prefix. Class-dependent buffers (``token_prefix``/``token_suffix``) are dropped in both formats.
    """
    if any(k.startswith("prompt_learner.") for k in state_dict):
        state_dict = {k[len("prompt_learner."):]: v for k, v in state_dict.items() if k.startswith("prompt_learner.")}
    drop = ("token_prefix", "token_suffix", "token_ids", "init_ctx")
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in drop and not k.startswith("ZS_")}
