"""CoOp (Zhou et al., IJCV 2022): learned context words in front of (or around) the class name.

Reference behaviour (``TRAINER.COOP`` defaults, KaiyangZhou/CoOp ``trainers/coop.py``):

* prompt ``"X X ... X {class}."`` with ``N_CTX`` learned vectors ~ N(0, 0.02), one set shared by every class, or
  one set per class with ``CSC``;
* with ``CTX_INIT`` (e.g. ``"a photo of a"``) the context is initialised from the phrase's embeddings and
  ``N_CTX`` becomes its number of words (``CSC`` is then ignored, as in the reference);
* ``CLASS_TOKEN_POSITION``: ``end`` (``[ctx][class].``), ``middle`` (``[ctx/2][class][ctx/2].``) or ``front``;
* only the context is learned; the text encoder is CLIP's, so text features are computed once per evaluation.

The registered model is ``prompt_learner`` and its checkpoint holds ``ctx`` only (and the class names, which
matter with ``CSC``: a class-specific context loads only onto the classes it was trained on), so the reference's
checkpoints (``ctx`` plus the class-dependent ``token_prefix``/``token_suffix``, which are dropped) load, and
CoOp's ``interpret_prompt.py`` reads ours (``state_dict["ctx"]``).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from dassl.utils import load_pretrained_weights

from .base import PromptTrainer
from .config import check_choice, phrase_context_keys
from .prompts import CLASS_TOKEN_POSITIONS, ClassPrompts, Prompts, context_vectors, encoder_dims, learned_context
from .registry import Count, register_method


class PromptLearner(nn.Module):
    """CoOp's context vectors and the class prompts they enter.

    Parameters:
        ctx: (n_ctx, Dt) unified context, or (C, n_ctx, Dt) class-specific context (``CSC``; class-dependent).

    ``forward()`` returns :class:`~trainers.prompts.Prompts` whose text embeddings are (C, L, Dt).
    """

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module, key: str = "TRAINER.COOP"):
        super().__init__()
        width = encoder_dims(clip_model).text_width
        prefix, n_ctx, from_phrase = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, key, rule="phrase")
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx,
                                          class_token_position=mcfg.CLASS_TOKEN_POSITION)
        self.ctx = nn.Parameter(context_vectors(self.class_prompts, from_phrase, width, bool(mcfg.CSC)))
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")

    @property
    def class_dependent(self):
        return ("ctx",) if self.ctx.dim() == 3 else ()

    def forward(self) -> Prompts:
        cp = self.class_prompts
        # with the class name at the end the context is one run right after SOS: the text prompt segment, beside
        # which other prompt sets (CasPL's boosting prompts) are placed; "middle"/"front" interleave the class name
        n_segment = cp.n_ctx if cp.class_token_position == "end" else 0
        return Prompts(text_ids=cp.token_ids, text_embeddings=cp.assemble(self.ctx), n_text_prompt=n_segment)


def coop_keys(c):
    phrase_context_keys(c, n_ctx=16, ctx_init="")


@register_method(
    keys=coop_keys,
    scripts={"base2new": "vit_b16_ctxv1", "crossdataset": "vit_b16_ep50_ctxv1", "fewshot": "vit_b16",
             "base2new@imagenet": "vit_b16_ep50_ctxv1", "fewshot@imagenet": "vit_b16_ep50"},
    counts=[Count("vit_b16_ctxv1", 2_048), Count("vit_b16", 8_192)],
)
class CoOp(PromptTrainer):
    """``--trainer CoOp``, config block ``TRAINER.COOP``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        check_choice(cfg.TRAINER.COOP, "CLASS_TOKEN_POSITION", "TRAINER.COOP.CLASS_TOKEN_POSITION",
                     CLASS_TOKEN_POSITIONS)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        if self.cfg.MODEL.INIT_WEIGHTS:  # as the reference: start from saved prompts
            load_pretrained_weights(self.model.prompt_learner, self.cfg.MODEL.INIT_WEIGHTS)
