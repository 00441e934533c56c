"""MaPLe (Khattak et al., CVPR 2023): multi-modal deep prompts coupled by text-to-vision maps.

MaPLe is the MPL schedule that adds and removes the same number of tokens at every layer and carries none:
at deep layer ``l`` the text branch overwrites its ``N_CTX`` context tokens with ``t_l`` and the vision branch
replaces its ``N_CTX`` prompt tokens with ``F_l(t_l)`` (one affine map per layer). It is therefore built from
MPL's prompt learner with ``N_ADD_OP = 1`` and ``N_RM_OP = N_CTX``. What differs from MPL is the text prompt:
MaPLe learns the first ``N_CTX`` tokens of ``CTX_INIT`` ("a photo" of "a photo of a {class}.") instead of extra
placeholder words, and falls back to ``"X X ..."`` with random context when ``CTX_INIT`` is empty or ``N_CTX``
is above 4, as the reference does (:func:`~trainers.prompts.learned_context`, rule ``first_tokens``); a phrase
with fewer tokens than ``N_CTX`` is an error (the reference learned over the class name).

Reference checkpoints (whole model, maps under ``prompt_learner.compound_prompt_projections.<l>``) load
through :meth:`MaPLe.load_model`.
"""
from __future__ import annotations

import re

from yacs.config import CfgNode as CN

from .base import PromptTrainer
from .mpl import MultiModalPromptLearner, build_schedule
from .prompts import learned_context
from .registry import Count, register_method


def maple_keys(c):
    c.N_CTX = 2  # learned context tokens per layer, in each branch
    c.CTX_INIT = "a photo of a"  # its first N_CTX words initialise (and are replaced by) the context
    c.PROMPT_DEPTH = 9  # layers 0 .. PROMPT_DEPTH-1 receive prompts (max 12 for ViT-B)


def maple_as_mpl(mcfg) -> CN:
    """The MPL config node that expresses a MaPLe config."""
    c = CN()
    c.N_CTX, c.PROMPT_DEPTH, c.CTX_INIT = mcfg.N_CTX, mcfg.PROMPT_DEPTH, mcfg.CTX_INIT
    c.N_ADD_OP, c.N_RM_OP = 1, mcfg.N_CTX
    c.VISION_ADD, c.VISION_RM, c.TEXT_ADD, c.TEXT_RM = [], [], [], []
    c.TEXT_MODE, c.COUPLING = "replace", "affine"
    c.INDEPENDENT_INIT = False  # the reference clones one map for every layer, as MPL does
    return c


_REFERENCE_KEY = re.compile(r"^compound_prompt_projections\.(\d+)\.")


def from_reference_keys(state: dict) -> dict:
    """Rename the reference's ``compound_prompt_projections.<l>`` maps to ``txt2img_proj.0.<l>``."""
    return {_REFERENCE_KEY.sub(r"txt2img_proj.0.\1.", k): v for k, v in state.items()}


@register_method(
    keys=maple_keys, learner="MultiModalPromptLearner",
    scripts={"base2new": "vit_b16_c2_ep5_batch4_2ctx", "crossdataset": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"},
    counts=[Count("vit_b16_c2_ep5_batch4_2ctx", 3_555_072)],
)
class MaPLe(PromptTrainer):
    """``--trainer MaPLe``, config block ``TRAINER.MAPLE``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        build_schedule(maple_as_mpl(cfg.TRAINER.MAPLE), None, "TRAINER.MAPLE")

    def build_prompt_learner(self, cfg, classnames, clip_model):
        mcfg = self.method_cfg
        prefix, _, use_init = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, "TRAINER.MAPLE", rule="first_tokens")
        return MultiModalPromptLearner(maple_as_mpl(mcfg), classnames, clip_model, prefix=prefix,
                                       ctx_from_prefix=use_init, key="TRAINER.MAPLE")

    @staticmethod
    def convert_state(state: dict) -> dict:
        return from_reference_keys(state)
