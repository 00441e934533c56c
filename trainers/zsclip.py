"""Zero-shot CLIP: class features from hand-written templates, no training (CoOp's ``trainers/zsclip.py``).

* ``ZeroshotCLIP``: one template per dataset (:data:`~trainers.templates.CUSTOM_TEMPLATES`, e.g. EuroSAT's
  "a centered satellite photo of {}.").
* ``ZeroshotCLIP2``: the mean of the normalised features of the 7 :data:`IMAGENET_TEMPLATES_SELECT` templates plus
  the dataset's own template (not added for ImageNet, whose template is the generic one), normalised again.

Run them with ``--eval-only`` and a CoOp config for the backbone and input settings (as CoOp's
``scripts/zsclip/zeroshot.sh`` does); the precision is ``TRAINER.COOP.PREC``. Text features are computed once, when
the model is built. Nothing is registered, so nothing is saved or loaded. Unlike the reference, the template list
of ``ZeroshotCLIP2`` is not modified in place (the reference appended the dataset template to the class attribute
on every build), and a dataset without a template of its own uses "a photo of a {}.".
"""
from __future__ import annotations

from typing import List

import torch

import clip
from clip import MASTER_DTYPE
from dassl.engine import TrainerX

from .base import ForClasses, load_clip
from .compat import UserError
from .config import check_precision
from .registry import register_method
from .templates import IMAGENET_TEMPLATES_SELECT, dataset_template, zeroshot_text_features


@register_method(block="COOP", config_dir="CoOp", scripts={"base2new": "vit_b16"}, aliases=("zsclip",),
                 trains=False)
class ZeroshotCLIP(ForClasses, TrainerX):
    """``--trainer ZeroshotCLIP --eval-only``: CLIP with the dataset's hand-written template."""

    @classmethod
    def check_config(cls, cfg):
        check_precision(cfg, cls.METHOD.block)

    def templates(self) -> List[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self):
        cfg = self.cfg
        classnames = self.classnames
        self.precision = clip.resolve_precision(cfg.TRAINER[self.METHOD.block].PREC, self.device,
                                                half_on_cpu=bool(cfg.get("CPU_HALF", False)))
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        self.precision.cast_model(clip_model)
        self.clip_model = clip_model.to(self.device)
        templates = self.templates()
        print(f"Prompts: {[templates[0].format(c.replace('_', ' ')) for c in classnames[:5]]}"
              f"{' ...' if len(classnames) > 5 else ''} ({len(templates)} template(s))")
        with self.precision.autocast(self.device):
            self.text_features = zeroshot_text_features(clip_model, classnames, templates)

    @torch.no_grad()
    def model_inference(self, image):
        with self.precision.autocast(self.device):
            features = self.clip_model.encode_image(image)
            features = features / features.norm(dim=-1, keepdim=True)
            logits = self.clip_model.logit_scale.exp() * features @ self.text_features.to(features.dtype).t()
        return logits.to(MASTER_DTYPE)

    def train(self):
        raise UserError(f"{type(self).__name__} does not train: run train.py with --eval-only")


@register_method(block="COOP", config_dir="CoOp", scripts={"base2new": "vit_b16"}, trains=False)
class ZeroshotCLIP2(ZeroshotCLIP):
    """``--trainer ZeroshotCLIP2 --eval-only``: the 7-template ensemble plus the dataset's template."""

    def templates(self) -> List[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
