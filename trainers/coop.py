"""CoOp (Zhou et al., IJCV 2022): learned context words in front of (or around) the class name.

Reference behaviour (``TRAINER.COOP`` defaults, KaiyangZhou/CoOp ``trainers/coop.py``):

* prompt ``"X X ... X {class}."`` with ``N_CTX`` learned vectors ~ N(0, 0.02), one set shared by every class, or
  one set per class with ``CSC``;
* with ``CTX_INIT`` (e.g. ``"a photo of a"``) the context is initialised from the phrase's embeddings and
  ``N_CTX`` becomes its number of words (``CSC`` is then ignored, as in the reference);
* ``CLASS_TOKEN_POSITION``: ``end`` (``[ctx][class].``), ``middle`` (``[ctx/2][class][ctx/2].``) or ``front``;
* only the context is learned; the text encoder is CLIP's, so text features are computed once per evaluation.

The registered model is ``prompt_learner`` and its checkpoint holds ``ctx`` only, so the reference's
checkpoints (``ctx`` plus the class-dependent ``token_prefix``/``token_suffix``, which are dropped) load, and
CoOp's ``interpret_prompt.py`` reads ours (``state_dict["ctx"]``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import load_pretrained_weights

from .common import CLASS_TOKEN_POSITIONS, ClassPrompts, PromptTrainer, Prompts, encoder_dims, learned_context
from .config import register_config


@register_config("COOP")
def coop_defaults() -> CN:
    c = CN()
    c.N_CTX = 16  # learned context vectors (ignored when CTX_INIT is set: its number of words is used)
    c.CSC = False  # class-specific context (one set of N_CTX vectors per class)
    c.CTX_INIT = ""  # initialise the context from this phrase, e.g. "a photo of a"
    c.PREC = "fp16"  # fp32, fp16, bf16 or amp
    c.CLASS_TOKEN_POSITION = "end"  # end, middle or front
    return c


class PromptLearner(nn.Module):
    """CoOp's context vectors and the class prompts they enter.

    Parameters:
        ctx: (n_ctx, Dt) unified context, or (C, n_ctx, Dt) class-specific context.

    ``forward()`` returns :class:`~trainers.common.Prompts` whose text embeddings are (C, L, Dt).
    """

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module, key: str = "COOP"):
        super().__init__()
        width = encoder_dims(clip_model).text_width
        prefix, n_ctx, from_phrase = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, key, rule="phrase")
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx,
                                          class_token_position=mcfg.CLASS_TOKEN_POSITION)
        if from_phrase:
            ctx = self.class_prompts.init_ctx.clone()
        elif mcfg.CSC:
            print("Initializing class-specific contexts")
            ctx = torch.empty(len(classnames), n_ctx, width).normal_(std=0.02)
        else:
            print("Initializing a generic context")
            ctx = torch.empty(n_ctx, width).normal_(std=0.02)
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)

    def forward(self) -> Prompts:
        cp = self.class_prompts
        # with the class name at the end the context is one run right after SOS: the text prompt segment, beside
        # which other prompt sets (CasPL's boosting prompts) are placed; "middle"/"front" interleave the class name
        n_segment = cp.n_ctx if cp.class_token_position == "end" else 0
        return Prompts(text_ids=cp.token_ids, text_embeddings=cp.assemble(self.ctx), n_text_prompt=n_segment)


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    """``--trainer CoOp``, config block ``TRAINER.COOP``."""

    CFG_KEY = "COOP"
    MODEL_NAME = "prompt_learner"
    SCRIPT_CONFIGS = {"base2new": "vit_b16_ctxv1", "crossdataset": "vit_b16_ep50_ctxv1", "fewshot": "vit_b16",
                      "base2new@imagenet": "vit_b16_ep50_ctxv1", "fewshot@imagenet": "vit_b16_ep50"}
    CASPL_SCRIPT_CONFIGS = {"base2new": "caspl_vit_b16_ep50"}  # CoOp + CasPL (the fork's; ImageNet too)

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        position = cfg.TRAINER.COOP.CLASS_TOKEN_POSITION
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION is {position!r}; choose one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        if self.cfg.MODEL.INIT_WEIGHTS:  # as the reference: start from saved prompts
            load_pretrained_weights(self.model.prompt_learner, self.cfg.MODEL.INIT_WEIGHTS)
