"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted by a small network of the image feature.

Reference behaviour (``TRAINER.COCOOP``, KaiyangZhou/CoOp ``trainers/cocoop.py``):

* context as CoOp's (``"a photo of a"`` -> 4 learned vectors in the reference config);
* ``meta_net = Linear(E -> E/16) -> ReLU -> Linear(E/16 -> Dt)`` maps the L2-normalised image feature ``f_b`` (E =
  CLIP's joint embedding size) to one bias added to every context vector: ``ctx_b = ctx + meta_net(f_b)``;
* every image therefore has its own class prompts, and ``logits[b] = scale * f_b @ normalise(text(ctx_b)).T``.

The reference runs the text encoder once per image in a Python loop. Here, in training, the prompts of all images
of the batch go through the text encoder in one call, which gives the same logits (the text encoder treats every
sequence independently) with one call instead of B: the shared-prefix encoding (``clip/text_prefix.py``) runs each
image's ``[SOS][ctx_b]`` once, and only the class words run per class. ``PROMPTS_PER_CHUNK`` bounds its memory: the
budget is what that many whole prompts keep for backward (``CLIP.text_memory_bytes``); beyond it the class rows
run in chunks whose activations are recomputed in backward (checkpointing), so training memory stays bounded for
any batch and class count. In evaluation nothing is kept for backward, and the images go through the text encoder
``PROMPTS_PER_CHUNK`` sequences (images x classes) at a time, at least one image's classes per call. The text
transformer also runs on the shortest length that holds every EOT (exact).

Text features depend on the image, so they are never cached across batches. On the method contract CoCoOp is its
prompt learner plus its own prompted CLIP (:class:`ConditionedCLIP`), which hands the learner the image features
and runs the chunked text pass; frozen prompt sets (CasPL's boosting prompts) compose with its prompts as with
any method's.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

import clip
from dassl.utils import load_pretrained_weights

from .base import PromptTrainer
from .config import check_range, phrase_context_keys
from .prompted_clip import ModelOutput, PromptedCLIP, normalise
from .prompts import ADAPT, ClassPrompts, Prompts, compose_prompts, context_vectors, encoder_dims, learned_context
from .registry import Count, register_method


def cocoop_keys(c):
    phrase_context_keys(c, n_ctx=16, ctx_init="", csc=None, position=None)
    # Not in the reference: bounds the text encoder's memory to that of this many prompts (images x classes).
    # Evaluation: sequences per call (at least one image's classes). Training: one call for the whole batch, whose
    # rows beyond this budget are recomputed in backward (checkpointing). 0 = unbounded. The result does not
    # depend on it.
    c.PROMPTS_PER_CHUNK = 4096


class PromptLearner(nn.Module):
    """CoCoOp's context and meta-network (parameter names as the reference, so its checkpoints load).

    Parameters:
        ctx: (n_ctx, Dt).
        meta_net: linear1 (E -> E // 16), relu, linear2 (E // 16 -> Dt).

    Input shape: image features (B, E), L2-normalised. Output: :class:`Prompts` whose text embeddings are
    (B, C, L, Dt).
    """

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        width = encoder_dims(clip_model).text_width
        vis_dim = clip_model.embed_dim
        prefix, n_ctx, from_phrase = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, "TRAINER.COCOOP", rule="phrase")
        self.prompts_per_chunk = int(mcfg.PROMPTS_PER_CHUNK)
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx)
        ctx = context_vectors(self.class_prompts, from_phrase, width)
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, width)),
        ]))

    def shifted_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, n_ctx, Dt): ``ctx + meta_net(f_b)`` for every image."""
        weight = self.meta_net.linear1.weight
        bias = self.meta_net(image_features.to(weight.dtype))  # (B, Dt)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def forward(self, image_features: torch.Tensor, length: int = 0) -> Prompts:
        """Prompts of every class for every image: embeddings (B, C, L, Dt); only the first ``length`` positions
        when ``length > 0``."""
        cp = self.class_prompts
        ctx = self.shifted_context(image_features)
        batch, n_cls = ctx.shape[0], cp.num_classes
        suffix = cp.token_suffix if length <= 0 else cp.token_suffix[:, :max(length - 1 - cp.n_ctx, 0)]
        ctx = ctx.to(cp.token_prefix.dtype)
        emb = torch.cat([
            cp.token_prefix.unsqueeze(0).expand(batch, -1, -1, -1),
            ctx.unsqueeze(1).expand(-1, n_cls, -1, -1),
            suffix.unsqueeze(0).expand(batch, -1, -1, -1),
        ], dim=2)
        return Prompts(text_ids=cp.token_ids, text_embeddings=emb, n_text_prompt=cp.n_ctx)


class ConditionedCLIP(PromptedCLIP):
    """The prompted CLIP of prompts conditioned on the image: the learner receives the image features.

    Memory is bounded by the learner's ``prompts_per_chunk`` (0: no bound): a budget of that many whole prompts
    (:meth:`clip.model.CLIP.text_memory_bytes`). In training, the prompts of all images go through the text
    encoder in one call (the shared-prefix encoding runs each image's context once), and the budget bounds what it
    keeps for backward: beyond it, rows run in checkpointed chunks. In evaluation nothing is kept, so the images go
    in calls of ``prompts_per_chunk`` sequences (images x classes), at least one image's classes per call, each
    under the same budget. Text features depend on the image, so nothing is cached."""

    def prompts(self, image_features=None, length: int = 0) -> Prompts:
        """The composed prompts for ``image_features`` (B, E): text embeddings (B, C, L, D)."""
        own = self.prompt_learner(image_features, length=length)
        if not len(self.frozen_sets):
            return own
        model = self.clip_model
        return compose_prompts({ADAPT: own, **self.frozen_prompts()}, self.text_order, self.vision_order,
                               model.token_embedding, model.context_length)

    def vision_ops(self):
        """Vision ops of the frozen sets (the learner prompts the text only)."""
        if not len(self.frozen_sets):
            return None
        sets = self.frozen_prompts()
        return clip.compose([sets[n].vision_ops for n in self.vision_order if n != ADAPT])

    def refresh_text_dependency(self) -> bool:
        self.text_is_fixed = False
        return False

    def forward(self, image: torch.Tensor) -> ModelOutput:
        model, learner = self.clip_model, self.prompt_learner
        scale = model.logit_scale.exp()
        image_raw = model.encode_image(image, ops=self.vision_ops())
        image_features = normalise(image_raw)
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
        logits, texts, raws = [], [], []
        for start in range(0, image_features.shape[0], step):
            f = image_features[start:start + step]
            prompts = self.prompts(f, length=length)  # text_embeddings (b, C, L, D), with any frozen sets' tokens
            emb = prompts.text_embeddings
            b, width = emb.shape[0], emb.shape[-1]
            seq_ids = prompts.text_ids[:, :emb.shape[-2]]
            raw = model.encode_text_embeddings(emb.reshape(b * n_cls, -1, width), seq_ids.repeat(b, 1),
                                               ops=prompts.text_ops, n_prompt=prompts.n_text_prompt,
                                               memory_budget=budget)
            text = normalise(raw).view(b, n_cls, -1)
            raws.append(raw.view(b, n_cls, -1))
            texts.append(text)
            logits.append(scale * torch.einsum("be,bce->bc", f, text))
        return ModelOutput(torch.cat(logits), image_features, torch.cat(texts), scale, None,
                           image_embeds=image_raw, text_embeds=torch.cat(raws))

    def frozen_text_features(self):
        return contextlib.nullcontext()  # text features depend on each image: nothing to cache


@register_method(
    keys=cocoop_keys,
    scripts={"base2new": "vit_b16_c4_ep10_batch1_ctxv1"},
    counts=[Count("vit_b16_c4_ep10_batch1_ctxv1", 35_360)],
)
class CoCoOp(PromptTrainer):
    """``--trainer CoCoOp``, config block ``TRAINER.COCOOP``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        check_range(cfg.TRAINER.COCOOP.PROMPTS_PER_CHUNK, "TRAINER.COCOOP.PROMPTS_PER_CHUNK", 0, None, integer=True,
                    what=" (0: unbounded)")

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model)

    def build_clip_model(self, cfg, classnames, clip_model):
        learner = self.build_prompt_learner(cfg, classnames, clip_model)
        sets, text_order, vision_order = self.frozen_sets(cfg, classnames, clip_model)
        return ConditionedCLIP(clip_model, learner, sets, text_order=text_order, vision_order=vision_order)

    def build_model(self):
        super().build_model()
        if self.cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.prompt_learner, self.cfg.MODEL.INIT_WEIGHTS)
