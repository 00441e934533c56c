"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank updates of the attention's q, k and v maps in every block
of both encoders.

Reference behaviour (MaxZanella/CLIP-LoRA; facts in ``shared/reference/methods-wave3.md``):

* at every block of both encoders, ``W x + b + alpha/sqrt(r) * B A dropout(x)`` for q, k and v: A ``(r, D)``
  Kaiming-uniform (a = sqrt 5, i.e. U(+-1/sqrt D)), B ``(D, r)`` zeros, r = 2, alpha = 1 (scale 0.707, the
  rsLoRA-style factor the reference uses), dropout 0.25 on the update's input in training. 184,320 learnable
  parameters at ViT-B/16;
* fixed text "a photo of a {class}." for every dataset; logits ``100 * cos`` (a fixed 100, set through
  ``PromptedCLIP.fixed_logit_scale``); plain cross-entropy;
* AdamW lr 2e-4, wd 1e-2, betas (0.9, 0.999), batch 32; a cosine schedule over ``500 x shots`` iterations down to
  1e-6, stepped every iteration, no warm-up; the final model is evaluated.

Here the updates are :class:`clip.LowRank` block operations: the frozen weights are neither copied nor merged, and
attention keeps the fused kernel (the reference splits every attention into fp32 q/k/v copies and merges the
update into them for evaluation). The run's length follows ``ITERS_PER_SHOT x DATASET.NUM_SHOTS`` iterations
(:meth:`~trainers.base.PromptTrainer.training_iterations`; ``OPTIM.MAX_EPOCH`` records the epochs they take);
``ITERS_PER_SHOT 0`` trains ``OPTIM.MAX_EPOCH`` epochs with ``OPTIM``'s schedule instead, which is how this
project runs the protocols the reference has no code for (base-to-new, cross-dataset: see the README).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

import clip

from .base import PromptTrainer
from .compat import UserError
from .config import check_range
from .prompts import ClassPrompts, Prompts, encoder_dims
from .registry import Count, register_method

TARGETS = ("q", "k", "v", "out_proj")
ENCODERS = ("text", "vision", "both")
#: the reference's fixed logit scale
LOGIT_SCALE = 100.0


def clip_lora_keys(c):
    c.TEXT_CTX_INIT = "a photo of a"  # the fixed text before the class name
    c.RANK = 2  # r
    c.ALPHA = 1.0  # the update's scale is ALPHA / sqrt(RANK)
    c.DROPOUT = 0.25  # on the update's input, in training
    c.PARAMS = ["q", "k", "v"]  # the adapted maps (q, k, v, out_proj)
    c.ENCODER = "both"  # text, vision or both
    c.ITERS_PER_SHOT = 500  # run length: ITERS_PER_SHOT x DATASET.NUM_SHOTS iterations; 0: OPTIM.MAX_EPOCH epochs
    c.MIN_LR = 1e-6  # where the per-iteration cosine ends


class LoRAFactors(nn.Module):
    """One low-rank update: ``lora_A`` ``(r, D_in)`` (Kaiming-uniform, a = sqrt 5), ``lora_B`` ``(D_out, r)``
    (zeros): loralib's names and initialisation."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


class LoRALearner(nn.Module):
    """CLIP-LoRA's learner: the factors and the fixed class prompts.

    Parameters: ``text.<block>.<map>.lora_{A,B}`` and ``vision.<block>.<map>.lora_{A,B}`` (blocks 0-based).
    ``forward()``: :class:`Prompts` with the class prompts and a :class:`clip.LowRank` per adapted map (dropout
    only while the learner is in training mode).
    """

    def __init__(self, c, classnames, clip_model, key: str = "TRAINER.CLIPLORA"):
        super().__init__()
        encoders = ("text", "vision") if c.ENCODER == "both" else (c.ENCODER,)
        dims = encoder_dims(clip_model, need_vit=key if "vision" in encoders else "")
        self.rank, self.dropout = int(c.RANK), float(c.DROPOUT)
        self.scale = float(c.ALPHA) / math.sqrt(self.rank)
        self.targets = tuple(c.PARAMS)
        self.class_prompts = ClassPrompts(clip_model, classnames, " ".join(str(c.TEXT_CTX_INIT).split()), 0)
        sizes = {"text": (dims.text_width, dims.text_layers), "vision": (dims.vision_width, dims.vision_layers)}
        for enc in ("text", "vision"):
            width, layers = sizes[enc]
            blocks = nn.ModuleList([nn.ModuleDict({t: LoRAFactors(width, width, self.rank) for t in self.targets})
                                    for _ in range(layers)]) if enc in encoders else None
            setattr(self, enc, blocks)
        print(f'Text: "{self.class_prompts.texts[0]}"; LoRA r={self.rank} on {", ".join(self.targets)} of every '
              f"block of the {' and '.join(encoders)} encoder(s), scale {self.scale:.4f}, dropout {self.dropout}")

    def block_ops(self, blocks):
        if blocks is None:
            return None
        p = self.dropout if self.training else 0.0
        return [clip.BlockOp(updates=tuple(clip.LowRank(t, f.lora_A, f.lora_B, self.scale, p)
                                           for t, f in block.items())) for block in blocks]

    def forward(self) -> Prompts:
        return Prompts(text_ids=self.class_prompts.token_ids, text_block_ops=self.block_ops(self.text),
                       vision_block_ops=self.block_ops(self.vision))


@register_method(keys=clip_lora_keys, config_dir="CLIPLoRA", aliases=("clip_lora",),
                 scripts={"fewshot": "vit_b16", "base2new": "vit_b16", "crossdataset": "vit_b16"},
                 counts=[Count("vit_b16", 184_320)])
class CLIPLoRA(PromptTrainer):
    """``--trainer CLIPLoRA``, config block ``TRAINER.CLIPLORA``."""

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        c = cfg.TRAINER.CLIPLORA
        check_range(c.RANK, "TRAINER.CLIPLORA.RANK", 1, None, integer=True)
        check_range(c.DROPOUT, "TRAINER.CLIPLORA.DROPOUT", 0, 0.999)
        check_range(c.ITERS_PER_SHOT, "TRAINER.CLIPLORA.ITERS_PER_SHOT", 0, None, integer=True)
        check_range(c.MIN_LR, "TRAINER.CLIPLORA.MIN_LR", 0, None)
        if c.ENCODER not in ENCODERS:
            raise UserError(f"TRAINER.CLIPLORA.ENCODER is {c.ENCODER!r}; choose one of {', '.join(ENCODERS)}")
        wrong = [t for t in c.PARAMS if t not in TARGETS]
        if not c.PARAMS or wrong or len(set(c.PARAMS)) != len(c.PARAMS):
            raise UserError(f"TRAINER.CLIPLORA.PARAMS is {list(c.PARAMS)}; give each of {', '.join(TARGETS)} at "
                            "most once (at least one)")
        if c.ITERS_PER_SHOT and cfg.DATASET.NUM_SHOTS < 1:
            raise UserError("TRAINER.CLIPLORA.ITERS_PER_SHOT counts iterations per shot, but DATASET.NUM_SHOTS is "
                            f"{cfg.DATASET.NUM_SHOTS} (all images): set NUM_SHOTS, or ITERS_PER_SHOT 0 to train "
                            "OPTIM.MAX_EPOCH epochs")

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return LoRALearner(self.method_cfg, classnames, clip_model)

    def training_iterations(self):
        per_shot = int(self.method_cfg.ITERS_PER_SHOT)
        return per_shot * int(self.cfg.DATASET.NUM_SHOTS) if per_shot else None

    def lr_scheduler(self, optim):
        if not getattr(self, "_iterations", None):
            return super().lr_scheduler(optim)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=self._iterations,
                                                          eta_min=float(self.method_cfg.MIN_LR))

    def build_clip_model(self, cfg, classnames, clip_model):
        model = super().build_clip_model(cfg, classnames, clip_model)
        model.fixed_logit_scale = LOGIT_SCALE
        return model
