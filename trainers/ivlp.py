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
..]``. The reference keeps these prompts inside its copies of CLIP's blocks (``image_encoder.VPT``,
``*.transformer.resblocks.<i>.VPT_shallow``); :func:`from_reference_keys` maps them so its checkpoints load.
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from clip import LayerOp
from dassl.engine import TRAINER_REGISTRY

from .common import (ClassPrompts, PromptTrainer, Prompts, encoder_dims, learned_context, replaced_text_ops,
                     replaced_vision_ops)
from .config import register_config


@register_config("IVLP")
def ivlp_defaults() -> CN:
    c = CN()
    c.N_CTX_VISION = 2  # vision prompt tokens per layer
    c.N_CTX_TEXT = 2  # text context tokens per layer
    c.CTX_INIT = "a photo of a"  # text prompt; its first N_CTX_TEXT words are learned (if N_CTX_TEXT <= 4)
    c.PREC = "fp16"  # fp32, fp16, bf16 or amp
    c.PROMPT_DEPTH_VISION = 9  # vision layers 0 .. depth-1 get prompts (0: none)
    c.PROMPT_DEPTH_TEXT = 9  # text layers 0 .. depth-1 get prompts
    return c


def _check_depth(depth: int, n_layers: int, what: str) -> int:
    if not 0 <= depth <= n_layers:
        raise ValueError(f"{what} must be between 0 and the encoder's {n_layers} layers, got {depth}")
    return depth


class VLPromptLearner(nn.Module):
    """Independent text and vision prompts for every prompted layer.

    Parameters:
        ctx: (n_ctx_text, Dt) layer-0 text context (absent when ``n_ctx_text == 0``).
        text_prompts: per text layer 1 .. depth_text-1, (n_ctx_text, Dt).
        vision_prompts: per vision layer 0 .. depth_vision-1, (n_ctx_vision, Dv).

    With no text context the class prompts are the fixed ``"{ctx_init} {class}."`` (VPT).
    ``forward()`` returns :class:`~trainers.common.Prompts` for ``C`` classes.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], *, n_ctx_text: int, depth_text: int,
                 n_ctx_vision: int, depth_vision: int, ctx_init: str = "a photo of a", key: str = "IVLP"):
        super().__init__()
        n_ctx_vision_, depth_vision_ = int(n_ctx_vision), int(depth_vision)
        dims = encoder_dims(clip_model, need_vit=key if n_ctx_vision_ and depth_vision_ else "")
        text_width = dims.text_width
        depth_text = _check_depth(int(depth_text), dims.text_layers, f"TRAINER.{key}.PROMPT_DEPTH_TEXT")
        depth_vision = int(depth_vision)
        n_ctx_text, n_ctx_vision = int(n_ctx_text), int(n_ctx_vision)
        if n_ctx_text < 0 or n_ctx_vision < 0:
            raise ValueError(f"TRAINER.{key}: the numbers of prompt tokens must not be negative")
        self.n_ctx_text, self.n_ctx_vision = n_ctx_text, n_ctx_vision

        if n_ctx_text == 0:  # fixed hand-written prompt (VPT)
            prefix, use_init = " ".join(ctx_init.replace("_", " ").split()), False
        else:
            prefix, _, use_init = learned_context(ctx_init, n_ctx_text, key, rule="first_tokens")
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx_text)
        if n_ctx_text:
            if use_init:
                self.ctx = nn.Parameter(self.class_prompts.init_ctx.clone())
            else:
                self.ctx = nn.Parameter(torch.empty(n_ctx_text, text_width).normal_(std=0.02))
            n_deep = max(depth_text - 1, 0)
            self.text_prompts = nn.ParameterList(
                [nn.Parameter(torch.empty(n_ctx_text, text_width).normal_(std=0.02)) for _ in range(n_deep)]
            )
        else:
            self.text_prompts = nn.ParameterList()

        vision_prompts = []
        if n_ctx_vision and depth_vision:
            _check_depth(depth_vision, dims.vision_layers, f"TRAINER.{key}.PROMPT_DEPTH_VISION")
            width = dims.vision_width
            vision_prompts = [nn.Parameter(torch.empty(n_ctx_vision, width).normal_(std=0.02))
                              for _ in range(depth_vision)]
        self.vision_prompts = nn.ParameterList(vision_prompts)
        print(f'Text prompt: "{self.class_prompts.texts[0]}" ({n_ctx_text} learned context token(s), '
              f"{len(self.text_prompts) + bool(n_ctx_text)} text layer(s) prompted); "
              f"{n_ctx_vision if vision_prompts else 0} vision prompt token(s) at {len(vision_prompts)} layer(s)")

    def text_ops(self) -> Optional[List[Optional[LayerOp]]]:
        return replaced_text_ops(self.text_prompts)

    def vision_ops(self) -> Optional[List[Optional[LayerOp]]]:
        return replaced_vision_ops(self.vision_prompts, self.n_ctx_vision)

    def forward(self) -> Prompts:
        cp = self.class_prompts
        return Prompts(
            text_ids=cp.token_ids,
            text_embeddings=cp.assemble(self.ctx) if self.n_ctx_text else None,
            text_ops=self.text_ops(),
            vision_ops=self.vision_ops(),
            n_text_prompt=self.n_ctx_text,
        )


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


def ivlp_learner(mcfg, classnames, clip_model, key: str) -> VLPromptLearner:
    """The prompt learner of an ``N_CTX_TEXT/N_CTX_VISION/PROMPT_DEPTH_*`` config block (IVLP, PromptSRC)."""
    return VLPromptLearner(
        clip_model, classnames, n_ctx_text=mcfg.N_CTX_TEXT, depth_text=mcfg.PROMPT_DEPTH_TEXT,
        n_ctx_vision=mcfg.N_CTX_VISION, depth_vision=mcfg.PROMPT_DEPTH_VISION, ctx_init=mcfg.CTX_INIT, key=key,
    )


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    """``--trainer IVLP``, config block ``TRAINER.IVLP``."""

    CFG_KEY = "IVLP"
    MODEL_NAME = "VLPromptLearner"
    SCRIPT_CONFIGS = {"base2new": "vit_b16_c2_ep5_batch4_2+2ctx"}

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return ivlp_learner(self.method_cfg, classnames, clip_model, self.CFG_KEY)

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        return from_reference_keys(state_dict)
