"""KgCoOp (Yao et al., CVPR 2023): CoOp's context, kept close to hand-written prompts by a knowledge-guided loss.

This module is the README's smallest example of the method contract (``trainers/base.py``): a method is its
registration, a prompt learner (here CoOp's, reused as it is) and a loss; the contract does the rest (freezing,
the optimiser, checkpoints with only ``ctx``, text features once per evaluation, scripts, tests).

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

from clip import MASTER_DTYPE

from .base import LossOutput, PromptTrainer, cross_entropy
from .config import phrase_context_keys
from .coop import PromptLearner
from .registry import Count, register_method
from .templates import CUSTOM_TEMPLATES, dataset_template, zeroshot_text_features


#: KgCoOp's templates: the CoOp family's, except DTD's
TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}


def knowledge_guided_loss(text_features: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c cos(t_c, anchor_c)`` for L2-normalised (C, E) features (= half the mean squared distance)."""
    return 1.0 - (text_features.to(MASTER_DTYPE) * anchor.to(MASTER_DTYPE)).sum(dim=-1).mean()


def kgcoop_keys(c):
    phrase_context_keys(c, n_ctx=4, ctx_init="a photo of a")  # the reference always starts from this phrase
    c.W = 8.0  # weight of the knowledge-guided term (the reference scripts' value; its train.py default is 1.0)


@register_method(keys=kgcoop_keys, scripts={"base2new": "vit_b16_ep100_ctxv1", "fewshot": "vit_b16_ep100_ctxv1"},
                 counts=[Count("vit_b16_ep100_ctxv1", 2_048)])
class KgCoOp(PromptTrainer):
    """``--trainer KgCoOp``, config block ``TRAINER.KGCOOP``."""

    #: the original's ``prompt_learner/model.pth.tar-N`` also holds two tensors its PromptLearner builds, leaves
    #: frozen (only names with "ctx" train) and never calls in forward
    REFERENCE_UNUSED = {"bias_vectors": "built, frozen and never used by the original KgCoOp",
                        "meta_net.linear1.*": "the original KgCoOp's meta_net, built, frozen and never used"}

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return PromptLearner(self.method_cfg, classnames, clip_model, key="TRAINER.KGCOOP")

    def build_clip_model(self, cfg, classnames, clip_model):
        model = super().build_clip_model(cfg, classnames, clip_model)
        template = dataset_template(cfg.DATASET.NAME, TEMPLATES)
        # the anchor, from the fp32 frozen CLIP before the run's precision is applied; not saved in checkpoints
        model.register_buffer("anchor", zeroshot_text_features(clip_model, classnames, [template]), persistent=False)
        return model

    def loss(self, batch, out):
        ce = cross_entropy(out.logits, batch["label"])
        kg = self.method_cfg.W * knowledge_guided_loss(out.text_features, self.model.anchor)
        return LossOutput(ce + kg, out.logits, terms={"kg": kg}, ce=ce)
