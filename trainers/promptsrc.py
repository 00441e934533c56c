"""PromptSRC (Khattak et al., ICCV 2023): IVLP prompts regularised towards the frozen CLIP, with Gaussian aggregation.

Reference behaviour (``TRAINER.PROMPTSRC``, muzairkhattak/PromptSRC ``trainers/promptsrc.py``):

* architecture: IVLP (4 + 4 prompt tokens, depth 9 in both branches, text from "a photo of a");
* frozen teachers: the zero-shot image feature (CLIP without prompts) and, per class, the mean of CLIP's text
  features over the 60 templates of :data:`~trainers.templates.TEMPLATES` (averaged before
  normalisation, computed once in fp32);
* loss = CE(logits) + TEXT_LOSS_WEIGHT * L1(text, teacher text) + IMAGE_LOSS_WEIGHT * L1(image, zero-shot image)
  + KL(p_zero-shot || p_prompted) summed and divided by B*C (features L2-normalised, L1 averaged); see
  :func:`self_consistency_losses`;
* Gaussian prompt aggregation (GPA): after each epoch e (1-based) the prompts are added to a running sum with
  weight w_e proportional to N(e; GPA_MEAN, GPA_STD) (normalised over the epochs, :func:`gpa_weights`); after the
  last epoch the sum replaces the prompts, and that model is saved and tested. Inference uses prompted logits.

Differences, all exact or fixes: the zero-shot image encoder is the frozen CLIP itself run without prompts (the
reference loads a second copy of it); GPA sums the learned parameters only (the reference sums the whole state
dict every epoch, frozen CLIP included, which reconstructs the frozen weights only because the weights sum to 1);
the running sum is stored in checkpoints (inside the learner's state dict, ``gpa._extra_state``, which both this
engine and the real Dassl save and restore) so that a resumed run aggregates the same epochs; the loss is also
available under ``amp`` (the reference's amp branch is broken).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip import MASTER_DTYPE

from .base import LossOutput, PromptTrainer
from .compat import UserError
from .config import deep_prompt_keys
from .ivlp import from_reference_keys, ivlp_learner
from .registry import Count, register_method
from .templates import IMAGENET_TEMPLATES, zeroshot_text_features


#: The 60 templates PromptSRC averages for its frozen text features, in its order: "a photo of a {}." first, then
#: the first 59 of the others in CLIP's list (PromptSRC's truncated copy of ``IMAGENET_TEMPLATES``).
TEMPLATES = ["a photo of a {}."] + [t for t in IMAGENET_TEMPLATES if t != "a photo of a {}."][:59]


def promptsrc_keys(c):
    deep_prompt_keys(c, n_text=4, n_vision=4)  # the IVLP keys with PromptSRC's values
    c.TEXT_LOSS_WEIGHT = 25  # weight of L1(prompted text features, template-ensemble text features)
    c.IMAGE_LOSS_WEIGHT = 10  # weight of L1(prompted image features, zero-shot image features)
    c.GPA_MEAN = 15  # Gaussian prompt aggregation: mean epoch (1-based)
    c.GPA_STD = 1  # Gaussian prompt aggregation: standard deviation in epochs


def gpa_weights(mean: float, std: float, epochs: int) -> List[float]:
    """Aggregation weight of each epoch 1..epochs: N(e; mean, std), normalised to sum to 1."""
    if std <= 0:
        raise UserError(f"TRAINER.PROMPTSRC.GPA_STD must be positive, got {std}")
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = math.fsum(dens)
    if total == 0:
        raise UserError(f"TRAINER.PROMPTSRC: GPA weights N(e; {mean}, {std}) vanish on every epoch 1..{epochs}; move GPA_MEAN into "
                         "the training epochs or widen GPA_STD")
    return [d / total for d in dens]


def self_consistency_losses(logits: torch.Tensor, text: torch.Tensor, image: torch.Tensor, label: torch.Tensor,
                            zs_logits: torch.Tensor, zs_text: torch.Tensor, zs_image: torch.Tensor,
                            text_weight: float, image_weight: float) -> Dict[str, torch.Tensor]:
    """PromptSRC's loss terms (computed in fp32).

    Args:
        logits: (B, C) prompted logits; text: (C, E) and image: (B, E) prompted features, L2-normalised.
        zs_logits: (B, C) zero-shot logits; zs_text: (C, E) teacher text and zs_image: (B, E) zero-shot image
            features, L2-normalised.
    Returns: ``ce``, ``text`` (weighted L1), ``image`` (weighted L1), ``kl`` and their sum ``loss``.
    """
    logits, zs_logits = logits.to(MASTER_DTYPE), zs_logits.to(MASTER_DTYPE)
    ce = F.cross_entropy(logits, label)
    l_text = F.l1_loss(text.to(MASTER_DTYPE), zs_text.to(MASTER_DTYPE), reduction="mean") * text_weight
    l_image = F.l1_loss(image.to(MASTER_DTYPE), zs_image.to(MASTER_DTYPE), reduction="mean") * image_weight
    kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                  log_target=True) / logits.numel()
    return {"ce": ce, "text": l_text, "image": l_image, "kl": kl, "loss": ce + kl + l_text + l_image}


class GPAState(nn.Module):
    """The running sum of Gaussian prompt aggregation, kept inside the prompt learner's state dict
    (``gpa._extra_state``) so that both this engine and the real Dassl save it in every checkpoint and restore it
    on resume."""

    def __init__(self):
        super().__init__()
        self.sum: Optional[Dict[str, torch.Tensor]] = None

    def get_extra_state(self):
        return {"sum": {k: v.detach().cpu() for k, v in self.sum.items()} if self.sum is not None else {}}

    def set_extra_state(self, state):
        total = state.get("sum") if isinstance(state, dict) else None
        self.sum = dict(total) if total else None


@register_method(
    keys=promptsrc_keys, learner="VLPromptLearner",
    scripts={"base2new": "vit_b16_c2_ep20_batch4_4+4ctx", "crossdataset": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
             "fewshot": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
             # the reference few-shot script's GPA (45, 5) on five datasets, (30, 30) on the others
             **{f"fewshot@{d}": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot_gpa45"
                for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")}},
    counts=[Count("vit_b16_c2_ep20_batch4_4+4ctx", 46_080)],
)
class PromptSRC(PromptTrainer):
    """``--trainer PromptSRC``, config block ``TRAINER.PROMPTSRC``."""

    #: the original's whole-model checkpoints (``VLPromptLearner/model.pth.tar-20``) also hold the frozen copy of
    #: CLIP's image encoder its prompt learner keeps for the zero-shot features
    REFERENCE_UNUSED = {"ZS_image_encoder.*": "the frozen zero-shot copy of CLIP's image encoder, which is the "
                                              "run's own CLIP here"}

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        mcfg = cfg.TRAINER.PROMPTSRC
        if mcfg.PROMPT_DEPTH_TEXT < 1:
            raise UserError("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be at least 1 (as in the reference)")
        gpa_weights(mcfg.GPA_MEAN, mcfg.GPA_STD, cfg.OPTIM.MAX_EPOCH)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return ivlp_learner(self.method_cfg, classnames, clip_model, "TRAINER.PROMPTSRC")

    def build_clip_model(self, cfg, classnames, clip_model):
        model = super().build_clip_model(cfg, classnames, clip_model)
        model.prompt_learner.add_module("gpa", GPAState())
        # the teacher text features, from the fp32 CLIP (before the run's precision is applied), on the run's device
        print(f"Computing the frozen text features of {len(classnames)} classes over {len(TEMPLATES)} "
              "templates")
        clip_model.to(self.device)
        fixed = zeroshot_text_features(clip_model, classnames, TEMPLATES, normalise_each=False)
        model.register_buffer("fixed_embeddings", fixed.to(MASTER_DTYPE), persistent=False)  # (C, E), unnormalised
        return model

    def build_model(self):
        super().build_model()
        mcfg = self.method_cfg
        self.gpa_weights = gpa_weights(mcfg.GPA_MEAN, mcfg.GPA_STD, self.cfg.OPTIM.MAX_EPOCH)

    @torch.no_grad()
    def zero_shot(self, image, scale):
        """The frozen teachers: zero-shot image features (CLIP itself, no prompts), template-ensemble text
        features and their logits, L2-normalised, without gradients."""
        model = self.model
        zs_image = model.clip_model.encode_image(image.to(model.dtype))
        zs_image = zs_image / zs_image.norm(dim=-1, keepdim=True)
        zs_text = model.fixed_embeddings / model.fixed_embeddings.norm(dim=-1, keepdim=True)
        zs_logits = scale.to(MASTER_DTYPE) * zs_image.to(MASTER_DTYPE) @ zs_text.t()
        return zs_logits, zs_text, zs_image

    def loss(self, batch, out):
        mcfg = self.method_cfg
        zs_logits, zs_text, zs_image = self.zero_shot(batch["img"], out.logit_scale)
        terms = self_consistency_losses(out.logits, out.text_features, out.image_features, batch["label"], zs_logits,
                                        zs_text, zs_image, mcfg.TEXT_LOSS_WEIGHT, mcfg.IMAGE_LOSS_WEIGHT)
        return LossOutput(terms["loss"], out.logits, terms={k: terms[k] for k in ("text", "image", "kl")},
                          ce=terms["ce"])

    # -- Gaussian prompt aggregation ----------------------------------------------------------------------
    def after_epoch(self):
        self.aggregate_prompts(self.epoch)
        super().after_epoch()

    @torch.no_grad()
    def aggregate_prompts(self, epoch: int) -> None:
        """Add the learned parameters with epoch ``epoch``'s (0-based) weight; after the last, load the sum."""
        learner = self.model.prompt_learner
        gpa = learner.gpa
        weight = self.gpa_weights[epoch]
        current = {k: v.detach().to(MASTER_DTYPE) * weight for k, v in learner.named_parameters()}
        if gpa.sum is None:
            gpa.sum = current
        else:
            gpa.sum = {k: gpa.sum[k].to(current[k].device) + current[k] for k in current}
        if epoch + 1 == self.max_epoch:
            print("Using GPA model for final inference...")
            params = dict(learner.named_parameters())
            for k, v in gpa.sum.items():
                params[k].copy_(v.to(params[k].dtype))

    @property
    def gpa_sum(self) -> Optional[Dict[str, torch.Tensor]]:
        return self.model.prompt_learner.gpa.sum

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        return from_reference_keys(state_dict)
