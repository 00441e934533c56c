"""The prompted CLIP: a frozen CLIP driven by prompt sets, the same module for every method (no trainer, no Dassl).

It composes the method's own set (the *prompt learner*) with any frozen sets in the declared orders, runs both
encoders and returns one :class:`ModelOutput`. Text features are computed once and reused while nothing they depend
on can change: during evaluation (:meth:`PromptedCLIP.frozen_text_features`) and, for methods whose text side has
nothing trainable (VPT), always. A method with another forward (CoCoOp's prompts conditioned on the image,
PromptKD's image-only student) subclasses it in its own module.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .prompts import ADAPT, Prompts, compose_prompts


@dataclass
class ModelOutput:
    """What the prompted CLIP returns for a batch (every method, training and evaluation).

    logits: (B, C) ``logit_scale * image_features @ text_features.T`` (per image for conditioned prompts).
    image_features: (B, E) and text_features: (C, E) or (B, C, E), L2-normalised.
    logit_scale: the exponentiated scale. prompts: the composed :class:`Prompts` of this pass (None for prompts
    built per image).
    image_embeds / text_embeds: the same features before L2 normalisation (a head on the encoders' outputs, as
    DePT's, reads these).
    extras: further named outputs of a method's own forward (e.g. a second head's logits).
    """

    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    prompts: Optional[Prompts] = None
    image_embeds: Optional[torch.Tensor] = None
    text_embeds: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)


def normalise(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


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
        self._cached_text: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._cached_prompts: Optional[Prompts] = None
        self._fixed_text: Optional[Tuple] = None  # (key, (raw, normalised)) when the text side has nothing to learn
        #: whether text features depend on nothing trainable; None: decided at the first forward
        self.text_is_fixed: Optional[bool] = None
        #: a fixed logit scale instead of CLIP's learned ``logit_scale.exp()`` (a reference that hard-codes 100)
        self.fixed_logit_scale: Optional[float] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_model.dtype

    # -- prompts -------------------------------------------------------------------------------------------
    def frozen_prompts(self) -> Dict[str, Prompts]:
        return {name: m() for name, m in self.frozen_sets.items()}

    def prompts(self) -> Prompts:
        """The composed prompts of all sets."""
        own = self.prompt_learner()
        if not len(self.frozen_sets):
            return own
        model = self.clip_model
        return compose_prompts({ADAPT: own, **self.frozen_prompts()}, self.text_order, self.vision_order,
                               model.token_embedding, model.context_length)

    # -- encoders ------------------------------------------------------------------------------------------
    def encode_text(self, prompts: Prompts) -> torch.Tensor:
        """(C, E) class features before normalisation. The encoders cast inputs and op tensors to the model's
        dtype."""
        model = self.clip_model
        if prompts.text_embeddings is None and prompts.text_ops is None and prompts.text_block_ops is None:
            return model.encode_text(prompts.text_ids)  # plain class prompts
        emb = prompts.text_embeddings
        if emb is None:
            emb = model.token_embedding(prompts.text_ids)
        if prompts.text_block_ops is None:
            return model.encode_text_embeddings(emb, prompts.text_ids, ops=prompts.text_ops,
                                                n_prompt=prompts.n_text_prompt)
        return model.encode_text_embeddings(emb, prompts.text_ids, ops=prompts.text_ops,
                                            n_prompt=prompts.n_text_prompt, block_ops=prompts.text_block_ops)

    def encode_image(self, image: torch.Tensor, prompts: Optional[Prompts] = None) -> torch.Tensor:
        """(B, E) image features before normalisation, with the prompts' vision ops (and block ops)."""
        if prompts is None or prompts.vision_block_ops is None:
            return self.clip_model.encode_image(image, ops=prompts.vision_ops if prompts is not None else None)
        return self.clip_model.encode_image(image, ops=prompts.vision_ops, block_ops=prompts.vision_block_ops)

    def text_features(self, prompts: Prompts) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw, L2-normalised) class features, from the one cache when it is valid (evaluation, or a text side
        fixed for good)."""
        if self._cached_text is not None:
            return self._cached_text
        if self.text_is_fixed is None:
            self.refresh_text_dependency()
        if self.text_is_fixed:
            key = (prompts.text_ids.device, self.dtype)
            if self._fixed_text is None or self._fixed_text[0] != key:
                with torch.no_grad():
                    raw = self.encode_text(prompts)
                    self._fixed_text = (key, (raw, normalise(raw)))
            return self._fixed_text[1]
        raw = self.encode_text(prompts)
        return raw, normalise(raw)

    def refresh_text_dependency(self) -> bool:
        """Decide once (after freezing) whether text features depend on anything trainable; returns the answer."""
        self._fixed_text = None
        with torch.enable_grad():
            tensors = self.prompts().tensors()
        self.text_is_fixed = not any(t.requires_grad for t in tensors)
        return self.text_is_fixed

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> ModelOutput:
        scale = self.clip_model.logit_scale.exp()
        if self.fixed_logit_scale is not None:
            scale = torch.full_like(scale, self.fixed_logit_scale)
        prompts = self._cached_prompts
        if prompts is None or torch.is_grad_enabled():  # a graph is never reused across batches
            prompts = self.prompts()
        text_raw, text = self.text_features(prompts)
        image_raw = self.encode_image(image, prompts)
        image_features = normalise(image_raw)
        return ModelOutput(scale * image_features @ text.t(), image_features, text, scale, prompts,
                           image_embeds=image_raw, text_embeds=text_raw)

    @contextlib.contextmanager
    def frozen_text_features(self):
        """Within this block, the prompts and text features are computed once and reused for every batch without
        gradients (evaluation: the prompts do not change)."""
        with torch.no_grad():
            # the prompts too (vision ops included): rebuilding them for every test batch would assemble every
            # class's text embeddings again only to throw them away (80 ms per batch at 1000 classes on a CPU)
            self._cached_prompts = self.prompts()
            raw = self.encode_text(self._cached_prompts)
            self._cached_text = (raw, normalise(raw))
        try:
            yield
        finally:
            self._cached_text = self._cached_prompts = None
