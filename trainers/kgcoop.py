"""KgCoOp (Yao et al., CVPR 2023): CoOp's context, kept close to hand-written prompts by a knowledge-guided loss.

This module is the README's worked example of the method contract (``trainers/common.py``): a method is its
config block, a prompt learner (here CoOp's, reused as it is), and a loss; the contract does the rest (freezing,
the optimiser, checkpoints with only ``ctx``, text features once per evaluation, scripts).

Reference behaviour (htyao89/KgCoOp ``trainers/kgcoop.py``; facts in ``shared/reference/methods-more.md``):

* learned: CoOp's context only, 4 vectors initialised from "a photo of a" (2,048 parameters at ViT-B/16);
* frozen anchor: the CLIP text features of one hand-written template per dataset (CoOp's, except DTD:
  ``"a photo of a {}, a type of texture."``), L2-normalised, for the current classes;
* loss = CE(logits, y) + W * (1 - mean_c cos(t_c, anchor_c)), with W = 8.0 as in every shipped script;
* inference: CoOp's logits from the learned prompts.

Differences: the reference builds a second CLIP for the anchor (the frozen CLIP itself serves here) and, in the
version that produced its paper numbers, stepped two LR schedulers on one optimiser; this trainer has one
warm-up + cosine schedule (the current reference code). ``TRAINER.KGCOOP`` holds the reference's
``TRAINER.COOP.*`` keys (``W`` included); ``CTX_INIT`` is a phrase as in CoOp (the reference reads it as a flag and
always uses "a photo of a", which is the default here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import MASTER_DTYPE
from dassl.engine import TRAINER_REGISTRY

from .common import PromptTrainer
from .config import register_config
from .coop import PromptLearner
from .templates import dataset_template
from .zsclip import zeroshot_text_features

#: KgCoOp's per-dataset templates are CoOp's except this one
TEMPLATE_OVERRIDES = {"DescribableTextures": "a photo of a {}, a type of texture."}


@register_config("KGCOOP")
def kgcoop_defaults() -> CN:
    c = CN()
    c.N_CTX = 4  # learned context vectors (ignored when CTX_INIT is set: its number of words is used)
    c.CSC = False  # class-specific context
    c.CTX_INIT = "a photo of a"  # the reference always starts from this phrase
    c.PREC = "fp16"  # fp32, fp16, bf16 or amp
    c.CLASS_TOKEN_POSITION = "end"
    c.W = 8.0  # weight of the knowledge-guided term (the reference scripts' value; its train.py default is 1.0)
    return c


def knowledge_guided_loss(text_features: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c cos(t_c, anchor_c)`` for L2-normalised (C, E) features (= half the mean squared distance)."""
    return 1.0 - (text_features.to(MASTER_DTYPE) * anchor.to(MASTER_DTYPE)).sum(dim=-1).mean()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    """``--trainer KgCoOp``, config block ``TRAINER.KGCOOP``."""

    CFG_KEY = "KGCOOP"
    MODEL_NAME = "prompt_learner"
    SCRIPT_CONFIGS = {"base2new": "vit_b16_ep100_ctxv1", "fewshot": "vit_b16_ep100_ctxv1"}

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model, key=self.CFG_KEY)

    def build_clip_model(self, cfg, classnames, clip_model):
        model = super().build_clip_model(cfg, classnames, clip_model)
        name = cfg.DATASET.NAME
        template = TEMPLATE_OVERRIDES.get(name, dataset_template(name))
        # the anchor, from the fp32 frozen CLIP before the run's precision is applied; not saved in checkpoints
        model.register_buffer("anchor", zeroshot_text_features(clip_model, classnames, [template]), persistent=False)
        return model

    def compute_loss(self, image, label):
        out = self.model(image)
        ce = F.cross_entropy(out.logits.to(MASTER_DTYPE), label)
        return ce + self.method_cfg.W * knowledge_guided_loss(out.text_features, self.model.anchor), out.logits
