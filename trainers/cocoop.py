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

Text features depend on the image, so they are never cached across batches. On the method contract
(``trainers/common.py``) CoCoOp is a prompt learner with ``conditioned_on_image = True``: the prompted CLIP
hands it the image features and runs the chunked text pass.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import load_pretrained_weights

from .common import ClassPrompts, PromptTrainer, Prompts, encoder_dims, learned_context
from .config import register_config


@register_config("COCOOP")
def cocoop_defaults() -> CN:
    c = CN()
    c.N_CTX = 16  # learned context vectors (ignored when CTX_INIT is set: its number of words is used)
    c.CTX_INIT = ""  # initialise the context from this phrase, e.g. "a photo of a"
    c.PREC = "fp16"  # fp32, fp16, bf16 or amp
    # Not in the reference: bounds the text encoder's memory to that of this many prompts (images x classes).
    # Evaluation: sequences per call (at least one image's classes). Training: one call for the whole batch, whose
    # rows beyond this budget are recomputed in backward (checkpointing). 0 = unbounded. The result does not
    # depend on it.
    c.PROMPTS_PER_CHUNK = 4096
    return c


class PromptLearner(nn.Module):
    """CoCoOp's context and meta-network (parameter names as the reference, so its checkpoints load).

    Parameters:
        ctx: (n_ctx, Dt).
        meta_net: linear1 (E -> E // 16), relu, linear2 (E // 16 -> Dt).

    Input shape: image features (B, E), L2-normalised. Output: :class:`Prompts` whose text embeddings are
    (B, C, L, Dt).
    """

    #: the prompted CLIP passes the image features to forward() (see trainers/common.py)
    conditioned_on_image = True

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        width = encoder_dims(clip_model).text_width
        vis_dim = clip_model.embed_dim
        prefix, n_ctx, from_phrase = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, "COCOOP", rule="phrase")
        self.prompts_per_chunk = int(mcfg.PROMPTS_PER_CHUNK)
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx)
        if from_phrase:
            ctx = self.class_prompts.init_ctx.clone()
        else:
            ctx = torch.empty(n_ctx, width).normal_(std=0.02)
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


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    """``--trainer CoCoOp``, config block ``TRAINER.COCOOP``."""

    CFG_KEY = "COCOOP"
    MODEL_NAME = "prompt_learner"
    SCRIPT_CONFIGS = {"base2new": "vit_b16_c4_ep10_batch1_ctxv1"}
    CASPL_SCRIPT_CONFIGS = {"base2new": "caspl_vit_b16_c8_ep10_batch1"}  # CoCoOp + CasPL (the fork's)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        if self.cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.prompt_learner, self.cfg.MODEL.INIT_WEIGHTS)
