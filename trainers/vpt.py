"""VPT (Jia et al., ECCV 2022) on CLIP: learned prompts in the vision branch only, as in MaPLe's baselines.

Reference behaviour (``TRAINER.VPT``, muzairkhattak/multimodal-prompt-learning ``trainers/vpt.py``):

* text features are fixed: the frozen encoder on ``"a photo of a {class}."`` (``CTX_INIT``; the reference
  hard-codes that phrase, which is the default here);
* ``N_CTX_VISION`` prompts are appended after the patch tokens before ``ln_pre``; at each layer
  ``1 .. PROMPT_DEPTH_VISION - 1`` they are replaced by the layer's own prompts (IVLP's vision branch);
* ``PROMPT_DEPTH_VISION 1`` (the default) is VPT-shallow, ``12`` with 8 tokens VPT-deep (the shipped config).

Text features do not depend on anything learned: the prompted CLIP notices it (nothing on the text side requires a
gradient) and computes them once, reused for every batch, in training too.
"""
from __future__ import annotations

from .base import PromptTrainer
from .ivlp import from_reference_keys
from .prompts import DeepPrompts
from .registry import Count, register_method


def vpt_keys(c):
    c.N_CTX_VISION = 2  # vision prompt tokens per layer
    c.CTX_INIT = "a photo of a"  # fixed text prompt: "{CTX_INIT} {class}."
    c.PROMPT_DEPTH_VISION = 1  # vision layers 0 .. depth-1 get prompts (1: VPT-shallow)


@register_method(keys=vpt_keys, scripts={"base2new": "vit_b16_c2_ep5_batch4_4"},
                 counts=[Count("vit_b16_c2_ep5_batch4_4", 73_728)])
class VPT(PromptTrainer):
    """``--trainer VPT``, config block ``TRAINER.VPT``."""

    def build_prompt_learner(self, cfg, classnames, clip_model):
        mcfg = self.method_cfg
        return DeepPrompts(clip_model, n_text=0, depth_text=0, n_vision=mcfg.N_CTX_VISION,
                           depth_vision=mcfg.PROMPT_DEPTH_VISION, key="TRAINER.VPT", classnames=classnames,
                           ctx_init=mcfg.CTX_INIT)

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        return from_reference_keys(state_dict)
