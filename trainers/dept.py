"""DePT (Zhang et al., CVPR 2024), Decoupled Prompt Tuning: a second head on a method's features, for any method.

An extension of the method contract (``trainers/registry.py``), switched on by ``TRAINER.LINEAR_PROBE.TYPE linear``
beside any method whose loss contains a cross-entropy (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC, MPL, ...). The
method is left as it is; DePT adds, as children of its prompt learner (so they are trained, saved and loaded with
it, at ``LR_MULT`` times the learning rate):

* two channel-wise transforms (FiLM, ``scale * x + bias``, from ones and zeros), one for image features and one
  for text features, on the encoders' outputs *before* L2 normalisation (``TRAINER.FILM.LINEAR_PROBE``);
* a linear head over the run's classes (PyTorch's default init).

Training: the head sees a batch of 2B features -- each image's transformed feature and the transformed text
feature of its label, both with the label -- and the loss becomes ``(1 - WEIGHT) * CE(the method's logits) +
WEIGHT * CE(head) + the method's other terms`` (``WEIGHT`` = 0.7). Evaluation: on the classes the head was trained
on, ``(1 - WEIGHT) * the method's logits + WEIGHT * head(FiLM(image))`` (``TEST_TIME_FUSION``); on other classes
the method's logits alone.

Facts from the fork (Koorye/DePT, ``shared/reference/methods-wave3.md``): the keys and values above, SGD at lr 0.0035
for 10 epochs with batch 4 (CoCoOp: 0.002, batch 1), the head and FiLM at 6.5x the learning rate (the fork's
``OPTIM.LR_EXP`` with ``STAGED_LR``), learnable counts CoOp+DePT 266,740 and MaPLe+DePT 3,813,620 at ImageNet's 500
base classes. Which logits the fork uses depends on the config (``SUBSAMPLE_CLASSES base``, or ``all`` on a dataset
named ImageNet*, takes the fused path, cutting the 1000-row head to ImageNet-A's and -R's 200 classes by folder
name). Here it depends on the classes, which the checkpoint records: the head is used where every class of the run
has a row (the base classes; ImageNet and its variants, rows selected by name), and the method's logits elsewhere
(new classes, other datasets) -- the same choice on every protocol of the fork, and also few-shot training on all
classes, which the fork's code cannot run (its new-class path asserts evaluation mode). The head and FiLM are fp32
master weights in every precision (the fork casts them to fp16).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip import MASTER_DTYPE

from .base import LossOutput
from .compat import UserError
from .config import check_choice, check_range, register_block
from .registry import Count, Extension, register_extension

TYPES = ("", "linear")


def linear_probe_keys(c):
    """``cfg.TRAINER.LINEAR_PROBE``: the fork's keys, and the head's learning-rate multiplier."""
    c.TYPE = ""  # "linear": DePT's head beside the method (the fork's value); "": off
    c.WEIGHT = 0.7  # lambda: the head's share of the loss and of the fused logits
    c.TEST_TIME_FUSION = True  # evaluation on the head's classes: fuse the head's logits with the method's
    c.LR_MULT = 6.5  # the head's and FiLM's learning rate, in multiples of OPTIM.LR (the fork's OPTIM.LR_EXP)


def film_keys(c):
    """``cfg.TRAINER.FILM``: the fork's key."""
    c.LINEAR_PROBE = True  # channel-wise transforms of the features the head reads


register_block("TRAINER.LINEAR_PROBE", linear_probe_keys)
register_block("TRAINER.FILM", film_keys)


class FiLM(nn.Module):
    """``scale * x + bias`` per channel; ``scale`` from ones, ``bias`` from zeros. Input and output (..., E)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.to(self.scale.dtype) + self.bias


class DecoupledHead(nn.Module):
    """DePT's learned parts: FiLM of image and text features (or none) and a linear head over the classes.

    Parameters: ``film_image`` and ``film_text`` (scale and bias, (E,) each), ``head`` (weight (C, E), bias (C,)).
    The head's rows are the run's classes (``class_dependent``); loaded onto other classes, the rows of those
    classes are kept when the checkpoint has every one of them, and otherwise the head is switched off
    (:meth:`load_for_classes`).
    """

    class_dependent = ("head.weight", "head.bias")

    def __init__(self, width: int, classnames: Sequence[str], film: bool = True):
        super().__init__()
        self.film_image = FiLM(width) if film else nn.Identity()
        self.film_text = FiLM(width) if film else nn.Identity()
        self.head = nn.Linear(width, len(classnames))
        #: whether the head has a trained row for every class of the run
        self.active = True

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(self.head.weight.dtype))

    def load_for_classes(self, state: dict, prefix: str, trained: List[str], current: List[str]) -> None:
        """Keep the rows of ``current`` when the checkpoint (trained on ``trained``) has all of them (ImageNet's
        variants, a subset of the classes); otherwise keep this head as it is and switch it off."""
        if set(current) <= set(trained):
            rows = torch.tensor([trained.index(c) for c in current], dtype=torch.long)
            for key in self.class_dependent:
                state[prefix + key] = state[prefix + key].index_select(0, rows.to(state[prefix + key].device))
            self.active = True
            print(f"DePT: the head's rows of the {len(current)} classes (of its {len(trained)})")
        else:
            own = self.state_dict()
            for key in self.class_dependent:
                state[prefix + key] = own[key]
            self.active = False
            print(f"DePT: the head was trained on other classes than these {len(current)}; their logits are the "
                  "method's alone")


def _every_protocol(config: str, digits: str = "") -> Dict[str, str]:
    return {**dict.fromkeys(("base2new", "crossdataset", "fewshot"), config), **({"digits": digits} if digits else {})}


class DePT(Extension):
    name = "DePT"
    #: the fork's configs (CoOp, KgCoOp, MaPLe, CoCoOp; the same for base-to-new, cross-dataset and few-shot) and
    #: this project's (MPL, PromptSRC), with the offline demo's for CoOp and MPL
    scripts = {
        "CoOp": _every_protocol("dept_vit_b16_ep10_bs4_lr35", "dept_tiny_digits"),
        "KgCoOp": _every_protocol("dept_vit_b16_ep10_ctxv1_bs4_lr35"),
        "MaPLe": _every_protocol("dept_vit_b16_c2_ep10_batch4_2ctx"),
        "CoCoOp": _every_protocol("dept_vit_b16_c4_ep10_batch1_ctxv1"),
        "MPL": {"base2new": "dept_vit_b4_c1_add2_rm1", "fewshot": "dept_vit_b4_c1_add2_rm1",
                "digits": "dept_tiny_digits"},
        "PromptSRC": {"base2new": "dept_vit_b16_c2_ep20_batch4_4+4ctx"},
    }
    #: at ImageNet's 500 base classes: the method's prompts + FiLM 2 x (512 + 512) + head 500 x 513
    counts = {
        "CoOp": [Count("dept_vit_b16_ep10_bs4_lr35", 266_740)],
        "KgCoOp": [Count("dept_vit_b16_ep10_ctxv1_bs4_lr35", 260_596)],
        "MaPLe": [Count("dept_vit_b16_c2_ep10_batch4_2ctx", 3_813_620)],
        "CoCoOp": [Count("dept_vit_b16_c4_ep10_batch1_ctxv1", 293_908)],
        "MPL": [Count("dept_vit_b4_c1_add2_rm1", 6_960_884)],
        "PromptSRC": [Count("dept_vit_b16_c2_ep20_batch4_4+4ctx", 304_628)],
    }

    def enabled(self, cfg) -> bool:
        c = cfg.TRAINER.get("LINEAR_PROBE")
        if c is None:
            return False
        check_choice(c, "TYPE", "TRAINER.LINEAR_PROBE.TYPE", TYPES)  # the switch: checked wherever it is read
        return c.TYPE == "linear"

    def check_config(self, cfg) -> None:
        c = cfg.TRAINER.LINEAR_PROBE
        check_range(c.WEIGHT, "TRAINER.LINEAR_PROBE.WEIGHT", 0, 1)
        check_range(c.LR_MULT, "TRAINER.LINEAR_PROBE.LR_MULT", 1e-12, None, what=" (a positive multiplier)")

    def learner_modules(self, trainer, classnames, clip_model) -> Dict[str, nn.Module]:
        width = int(clip_model.embed_dim)
        return {"dept": DecoupledHead(width, classnames, film=bool(trainer.cfg.TRAINER.FILM.LINEAR_PROBE))}

    def lr_multipliers(self, cfg) -> Dict[str, float]:
        return {"dept": float(cfg.TRAINER.LINEAR_PROBE.LR_MULT)}

    @staticmethod
    def _head(trainer) -> DecoupledHead:
        return trainer.model.prompt_learner.dept

    def loss(self, trainer, batch, out, result):
        if result.ce is None:
            raise UserError(f"DePT reweights a method's cross-entropy, and {type(trainer).__name__}'s loss has none; "
                            "set TRAINER.LINEAR_PROBE.TYPE \"\" for this method")
        dept, label = self._head(trainer), batch["label"]
        weight = float(trainer.cfg.TRAINER.LINEAR_PROBE.WEIGHT)
        text = out.text_embeds
        text = text[torch.arange(len(label), device=text.device), label] if text.dim() == 3 else text[label]
        features = torch.cat([dept.film_text(text), dept.film_image(out.image_embeds)])
        head = F.cross_entropy(dept.logits(features).to(MASTER_DTYPE), torch.cat([label, label]))
        loss = result.loss - weight * result.ce + weight * head
        return LossOutput(loss, result.logits, terms={**result.terms, "head": head}, ce=None, aux=result.aux)

    def eval_logits(self, trainer, out, logits):
        dept, cfg = self._head(trainer), trainer.cfg.TRAINER.LINEAR_PROBE
        if not (dept.active and cfg.TEST_TIME_FUSION):
            return logits
        weight = float(cfg.WEIGHT)
        head = dept.logits(dept.film_image(out.image_embeds))
        return (1 - weight) * logits.to(MASTER_DTYPE) + weight * head.to(MASTER_DTYPE)

    def result_extras(self, trainer) -> Dict:
        c = trainer.cfg.TRAINER.LINEAR_PROBE
        return {"dept": {"weight": float(c.WEIGHT), "lr_mult": float(c.LR_MULT), "fusion": bool(c.TEST_TIME_FUSION),
                         "film": bool(trainer.cfg.TRAINER.FILM.LINEAR_PROBE)}}


register_extension(DePT())
