"""CasPL (Wu et al., ECCV 2024): boosting prompts distilled from a larger frozen CLIP, cascaded with any method.

Phase 1 (``--trainer CasPL``, this module): *boosting prompts* -- IVLP-style deep prompts in both encoders
(:class:`~trainers.common.DeepPrompts`; ``KD.N_CTX_TEXT/N_CTX_VISION`` tokens, ``KD.PROMPT_DEPTH_*`` layers,
N(0, 0.02); 122,880 parameters at 8+8 tokens, depth 12, ViT-B/16) -- are learned on the run's CLIP (the student)
by distilling a frozen zero-shot teacher CLIP (``KD.BACKBONE_NAME``, ViT-L/14 by default; any name or checkpoint
path). Teacher text features: the dataset's hand-written template, computed once. Teacher logits use the
student's logit scale. Loss: ``KL(softmax(t/T) || softmax(s/T))`` summed, times ``T^2``, divided by the batch size;
labels unused. Text layout: ``[SOS][boost][class .][EOT]``; vision ``[CLS][patches][boost]``.

Data: the fork's default is the whole training split of every class (``DATASET.NUM_SHOTS -1``,
``SUBSAMPLE_CLASSES all``) with labels unused: *transductive* -- the new classes' names and images are seen in
phase 1 (recorded as ``"caspl": {"transductive": true}`` in ``result.json``). ``SUBSAMPLE_CLASSES base`` gives
the inductive variant.

Phase 2 is every other method with ``KD.BOOST_DIR`` set to the phase-1 run (folder or checkpoint; the epoch that
run recorded unless ``KD.BOOST_EPOCH``): the boosting prompts become a frozen prompt set beside the method's own
(:meth:`~trainers.common.PromptTrainer.build_frozen_sets`), in the method's ``CASCADE_ORDER`` (A7 of
``shared/reference/caspl.md``: text ``[SOS][adapt][boost][words]``, vision ``[CLS][patches][boost][adapt]``; MPL puts
the boosting tokens first in both). Their sizes must equal phase 1's (one error names both shapes).

Fixed here, by construction: no 2-token slice (positions come from the declared order), no hard-coded fp16 or
CUDA, checkpoints of only the boosting prompts (phase 1) or only the adapting prompts (phase 2), and the origin
(path + SHA256) of the boosting prompts recorded in phase 2's checkpoint and ``result.json``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import MASTER_DTYPE
from dassl.engine import TRAINER_REGISTRY

from .common import ClassPrompts, DeepPrompts, PromptTrainer, Prompts
from .config import register_config
from .templates import dataset_template
from .zsclip import zeroshot_text_features


@register_config("KD", top_level=True)
def kd_defaults() -> CN:
    """``cfg.KD``, the fork's block (its key names, so its configs read)."""
    c = CN()
    c.BACKBONE_NAME = "ViT-L/14"  # the frozen teacher: a model name or a checkpoint path
    c.TEMPERATURE = 1.0
    c.N_CTX_TEXT = 8  # boosting prompt tokens (text), both phases
    c.N_CTX_VISION = 8  # boosting prompt tokens (vision), both phases
    c.PROMPT_DEPTH_TEXT = 12
    c.PROMPT_DEPTH_VISION = 12
    c.FIRST_TRAIN = False  # the fork's phase flags: accepted, the trainer decides (CasPL = phase 1)
    c.SECOND_TRAIN = False
    c.IS_TEST = True  # the fork's phase 1 skips the final test; here it runs unless TEST.NO_TEST
    c.USE_IVLP = True  # the fork's switch for CoOp/CoCoOp: deep boosting prompts (always, here)
    # Not in the fork: phase 2 reads the boosting prompts from this phase-1 run (folder or checkpoint file)
    c.BOOST_DIR = ""
    c.BOOST_EPOCH = -1  # -1: the epoch the phase-1 run recorded
    c.BOOST_MODEL_NAME = "BoostingPrompts"  # the phase-1 run's checkpoint folder
    return c


@register_config("CASPL")
def caspl_defaults() -> CN:
    c = CN()
    c.PREC = "fp16"  # fp32, fp16, bf16 or amp
    return c


class ClassNames(nn.Module):
    """The plain class prompts ``"{class}."`` as a prompt set of no parameters (phase 1's text side)."""

    def __init__(self, clip_model: nn.Module, classnames):
        super().__init__()
        self.class_prompts = ClassPrompts(clip_model, classnames, "", 0)

    def forward(self) -> Prompts:
        cp = self.class_prompts
        return Prompts(text_ids=cp.token_ids, text_embeddings=cp.assemble(cp.init_ctx), n_text_prompt=0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T))`` summed over batch and classes, ``x T^2``, ``/ B``."""
    t = float(temperature)
    log_s = F.log_softmax(student.to(MASTER_DTYPE) / t, dim=-1)
    log_t = F.log_softmax(teacher.to(MASTER_DTYPE) / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) * t * t / student.shape[0]


@TRAINER_REGISTRY.register()
class CasPL(PromptTrainer):
    """``--trainer CasPL``: phase 1, the boosting prompts; config blocks ``TRAINER.CASPL`` and ``KD``."""

    CFG_KEY = "CASPL"
    MODEL_NAME = "BoostingPrompts"
    SCRIPT_CONFIGS = {"base2new": "vit_b16_c2_ep20_batch4_8+8ctx_l12",
                      "crossdataset": "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"}

    def build_prompt_learner(self, cfg, classnames, clip_model):
        kd = cfg.KD
        return DeepPrompts(clip_model, n_text=kd.N_CTX_TEXT, depth_text=kd.PROMPT_DEPTH_TEXT,
                           n_vision=kd.N_CTX_VISION, depth_vision=kd.PROMPT_DEPTH_VISION, key="KD")

    def build_frozen_sets(self, cfg, classnames, clip_model):
        return {"classes": ClassNames(clip_model, classnames)}  # phase 1 is never cascaded with itself

    def prompt_order(self, names=()):
        return None, None  # [SOS][boost][class .][EOT] and [CLS][patches][boost]: the learner first

    def build_model(self):
        super().build_model()
        cfg = self.cfg
        teacher = self.teacher(cfg.KD.BACKBONE_NAME)
        template = dataset_template(cfg.DATASET.NAME)
        with torch.no_grad(), self.precision.autocast(self.device):
            text = zeroshot_text_features(teacher, self.dm.dataset.classnames, [template])
        self.model.register_buffer("teacher_text", text.to(MASTER_DTYPE), persistent=False)
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        self.result_extras()["caspl"] = {
            "phase": 1, "teacher": cfg.KD.BACKBONE_NAME, "temperature": float(cfg.KD.TEMPERATURE),
            "transductive": subsample == "all", "subsample": subsample,
            "boost": {k: int(cfg.KD[k]) for k in ("N_CTX_TEXT", "N_CTX_VISION", "PROMPT_DEPTH_TEXT",
                                                  "PROMPT_DEPTH_VISION")},
        }
        print(f"CasPL phase 1: teacher {cfg.KD.BACKBONE_NAME!r}, template {template!r}, "
              f"{'transductive (all classes, labels unused)' if subsample == 'all' else 'inductive (' + subsample + ' classes)'}")

    @torch.no_grad()
    def teacher_logits(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The frozen teacher on the same (augmented) batch, resized to its resolution if that differs."""
        teacher = self.teacher(self.cfg.KD.BACKBONE_NAME)
        size = getattr(teacher.visual, "input_resolution", image.shape[-1])
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
        feats = teacher.encode_image(image)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return scale.to(MASTER_DTYPE) * feats.to(MASTER_DTYPE) @ self.model.teacher_text.t()

    def compute_loss(self, image, label):
        out = self.model(image)
        target = self.teacher_logits(image, out.logit_scale.detach())
        return distillation_loss(out.logits, target, self.cfg.KD.TEMPERATURE), out.logits
