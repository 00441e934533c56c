"""IVLP: independent deep prompts in the vision and language branches (MaPLe's baseline; PromptSRC's architecture).

Reference behaviour (``TRAINER.IVLP``, muzairkhattak/multimodal-prompt-learning ``trainers/independentVL.py``):

* text: ``N_CTX_TEXT`` learned context vectors after SOS -- from the first words of ``CTX_INIT`` when it is set and
  ``N_CTX_TEXT <= 4`` (the prompt stays ``"a photo of a {class}."``), otherwise ``"X .. X {class}."`` with
  N(0, 0.02) vectors; at each text layer ``1 .. PROMPT_DEPTH_TEXT - 1`` the context positions are overwritten by
  that layer's own N(0, 0.02) prompt;
* vision: ``N_CTX_VISION`` prompts appended after the patch tokens before ``ln_pre`` (no positional embedding); at
  each vision layer ``1 .. PROMPT_DEPTH_VISION - 1`` they are removed and the layer's own prompts appended;
* nothing couples the two branches. Depth 0 (or 0 vectors) turns a branch's prompts off: the language-only
  variant is ``N_CTX_VISION 0, PROMPT_DEPTH_VISION 0``.

As LayerOp schedules: text ``[None, replace(t_1), .., replace(t_{J-1})]``; vision ``[add(v_0), remove n + add(v_1),
..]``: the deep prompts of :class:`~trainers.prompts.DeepPrompts` holding the class prompts. The reference keeps
these prompts inside its copies of CLIP's blocks (``image_encoder.VPT``, ``*.transformer.resblocks.<i>.VPT_shallow``);
:func:`from_reference_keys` maps them so its checkpoints load.
"""
from __future__ import annotations

import re

from .base import PromptTrainer
from .config import deep_prompt_keys
from .prompts import DeepPrompts
from .registry import Count, register_method

_VISION_SHALLOW = "image_encoder.VPT"
_DEEP = re.compile(r"^(image|text)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


def from_reference_keys(state_dict: dict) -> dict:
    """Rename the reference's prompts (IVLP, VPT, PromptSRC whole-model checkpoints) to ``prompt_learner.*``.

    ``image_encoder.VPT`` -> ``vision_prompts.0``; ``image_encoder...resblocks.<i>.VPT_shallow`` ->
    ``vision_prompts.<i>``; ``text_encoder...resblocks.<i>.VPT_shallow`` -> ``text_prompts.<i-1>``. Empty tensors
    (prompts of zero tokens) are dropped. Other keys are kept as they are.
    """
    out = {}
    for k, v in state_dict.items():
        match = _DEEP.match(k)
        if k == _VISION_SHALLOW:
            k = "prompt_learner.vision_prompts.0"
        elif match:
            layer = int(match.group(2))
            k = (f"prompt_learner.vision_prompts.{layer}" if match.group(1) == "image"
                 else f"prompt_learner.text_prompts.{layer - 1}")
        else:
            out[k] = v
            continue
        if v.numel():
            out[k] = v
    return out


def ivlp_learner(mcfg, classnames, clip_model, key: str) -> DeepPrompts:
    """The prompt learner of an ``N_CTX_TEXT/N_CTX_VISION/PROMPT_DEPTH_*`` config block (IVLP, PromptSRC)."""
    return DeepPrompts(clip_model, n_text=mcfg.N_CTX_TEXT, depth_text=mcfg.PROMPT_DEPTH_TEXT,
                       n_vision=mcfg.N_CTX_VISION, depth_vision=mcfg.PROMPT_DEPTH_VISION, key=key,
                       classnames=classnames, ctx_init=mcfg.CTX_INIT)


@register_method(
    keys=deep_prompt_keys, learner="VLPromptLearner", scripts={"base2new": "vit_b16_c2_ep5_batch4_2+2ctx"},
    counts=[Count("vit_b16_c2_ep5_batch4_2+2ctx", 30_720), Count("vit_b16_c2_ep20_batch4_4+4ctx", 46_080)],
)
class IVLP(PromptTrainer):
    """``--trainer IVLP``, config block ``TRAINER.IVLP``."""

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return ivlp_learner(self.method_cfg, classnames, clip_model, "TRAINER.IVLP")

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        return from_reference_keys(state_dict)
