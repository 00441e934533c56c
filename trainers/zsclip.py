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

from typing import List, Sequence

import torch
import torch.nn as nn

import clip
from clip import MASTER_DTYPE
from dassl.engine import TRAINER_REGISTRY, TrainerX

from .common import UserError, load_clip
from .templates import IMAGENET_TEMPLATES_SELECT, dataset_template


@torch.no_grad()
def zeroshot_text_features(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                           chunk: int = 1024) -> torch.Tensor:
    """(C, E) class features: per template L2-normalised, averaged over templates, normalised again.

    With one template this is that template's normalised features.
    """
    names = [name.replace("_", " ") for name in classnames]
    device = clip_model.token_embedding.weight.device
    total = 0
    for template in templates:
        texts = [template.format(name) for name in names]
        feats = []
        for start in range(0, len(texts), chunk):
            ids = clip.tokenize(texts[start:start + chunk], context_length=clip_model.context_length).to(device)
            feats.append(clip_model.encode_text(ids))
        feats = torch.cat(feats)
        total = total + feats / feats.norm(dim=-1, keepdim=True)
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """``--trainer ZeroshotCLIP --eval-only``: CLIP with the dataset's hand-written template."""

    #: the config block whose PREC applies (zero-shot runs use the CoOp configs, as in the reference)
    PREC_KEY = "COOP"
    #: for the protocol scripts (scripts/zsclip/): evaluation only, with configs/trainers/CoOp/<CFG>.yaml
    TRAINS = False
    SCRIPT_ALIASES = ("zsclip",)
    CONFIG_DIR = "CoOp"
    SCRIPT_CONFIGS = {"base2new": "vit_b16"}

    def templates(self) -> List[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = clip.resolve_precision(cfg.TRAINER[self.PREC_KEY].PREC, self.device)
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


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """``--trainer ZeroshotCLIP2 --eval-only``: the 7-template ensemble plus the dataset's template."""

    def templates(self) -> List[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
