"""PromptKD (Li et al., CVPR 2024): an image-only student distilled, without labels, from a PromptSRC teacher.

Two phases (``shared/reference/methods-more.md`` section 3, zhengli97/PromptKD ``trainers/promptkd.py``):

1. **Teacher**: a larger CLIP (ViT-L/14) prompt-tuned with this project's PromptSRC trainer on the labelled 16-shot
   base classes (``configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml``). ``TRAINER.PROMPTKD.TEACHER_DIR``
   names that run (folder or checkpoint file); ``scripts/promptkd_teacher.sh`` makes it when it is missing and the
   protocol scripts pass it (``scripts/promptkd/*.sh``). The teacher is rebuilt with the backbone, prompt sizes and
   depths its own run used (read from its ``result.json``, its checkpoint and its ``config.yaml``), and the
   reference keys that describe it (``N_CTX_TEXT``, ``PROMPT_DEPTH_TEXT``, ``CTX_INIT``, ``TEACHER_NAME``) must
   agree with that run: a difference is one error naming both values (the reference hard-codes depth 9 and 4
   tokens and, with ``strict=False``, silently keeps random prompts for a teacher of another depth).
2. **Student** (``--trainer PromptKD``, this module): the run's CLIP (ViT-B/16) with IVLP-style vision prompts only
   (``N_CTX_VISION`` tokens at ``PROMPT_DEPTH_VISION`` layers, N(0, 0.02)) and a projector (1x1 conv student
   width -> teacher width, BatchNorm, ReLU, 1x1 conv; widths read from the two models), classifying against the
   teacher's class text features with the student's logit scale. The teacher's text features (every class the run
   needs) are computed once when the trainer is built and kept outside checkpoints; the teacher's image branch
   runs under ``no_grad`` on every training batch, on the same augmented view as the student.

Loss: ``KD_WEIGHT * T^2 * sum KL(softmax(t/T) || softmax(s/T)) / (B*C)`` (:func:`promptkd_loss`), no cross-entropy;
labels are never used by the loss (the logged training accuracy reads them, for monitoring only).
``KD_WEIGHT_BY_DATASET`` holds the reference scripts' per-dataset exceptions (200 for FGVC Aircraft, Flowers and
DTD, 1000 otherwise).

Data (``TRAINER.PROMPTKD.TRANSDUCTIVE``, default True as the reference): the student trains on the training split
of *all* classes, new ones included (their names and images, not their labels), while evaluation stays on the half
named by ``DATASET.SUBSAMPLE_CLASSES``: base-class test images with the logits of the base classes, new-class
test images with those of the new classes (the reference's ``[:ceil(n/2)]`` / ``[ceil(n/2):]`` slices). False:
inductive, the training split of the run's classes only. ``TRAINER.MODAL`` (reference key): ``base2novel`` or
``cross`` (every class of the target dataset, teacher trained on ImageNet).

Model selection: the final epoch by default. The reference deploys the epoch with the best *base-class test*
accuracy (``TEST.FINAL_MODEL best_val`` with val = base test), which tunes on the test set and inflates Base; it
is kept only behind ``TEST.FINAL_MODEL best_val`` plus ``TRAINER.PROMPTKD.SELECT_ON_TEST True``
(``best_val`` alone selects on the half's validation split).
"""
from __future__ import annotations

import contextlib
import json
import math
import os.path as osp
import re
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip import MASTER_DTYPE
from dassl.utils import load_checkpoint

from .base import LossOutput, PromptTrainer, load_clip
from .checkpoints import load_prompt_set, read_prompt_state, read_run_config, resolve_checkpoint
from .compat import UserError
from .config import check_choice, check_range, deep_prompt_keys, register_block
from .ivlp import from_reference_keys
from .prompted_clip import ModelOutput, PromptedCLIP, normalise
from .prompts import DeepPrompts, Prompts, encoder_dims, replaced_vision_ops
from .registry import METHODS, Count, EarlierRun, register_method

#: trainers whose runs can serve as the teacher (IVLP prompt learners, ``VLPromptLearner``)
TEACHER_METHODS = ("PromptSRC", "IVLP")
#: the folders of the released teachers (``teacher_model/<DATASET>/VLPromptLearner/model-best.pth.tar``; for
#: ImageNet cross-dataset ``VLPromptLearner_large/model.pth.tar-20``): PromptSRC whole-model checkpoints
TEACHER_FOLDERS = ("VLPromptLearner", "VLPromptLearner_large")
MODALS = ("base2novel", "cross")


def promptkd_keys(c):
    """``cfg.TRAINER.PROMPTKD``: the reference's keys (values of its base-to-new scripts), then ours."""
    # the student's vision prompts, and the description of the teacher (checked against the teacher run)
    deep_prompt_keys(c, n_text=4, n_vision=4, depth_text=9, depth_vision=9)
    c.PROJECT_LAYER = -1  # unused, as in the reference
    c.CE_WEIGHT = 0.0  # unused, as in the reference (no cross-entropy: labels are not used)
    c.KD_WEIGHT = 1000.0  # weight of the KL term (the reference scripts' value)
    c.TEMPERATURE = 1.0
    c.TEACHER_NAME = "ViT-L/14"  # the teacher's backbone (checked against the teacher run)
    # Not in the reference:
    c.KD_WEIGHT_BY_DATASET = []  # "DatasetName:weight" entries (DATASET.NAME) that replace KD_WEIGHT
    c.TEACHER_DIR = ""  # the teacher: a PromptSRC run folder, or a checkpoint file (then TEACHER_NAME is its CLIP)
    c.TEACHER_EPOCH = -1  # -1: the epoch the teacher run recorded
    c.TRANSDUCTIVE = True  # train on the training split of every class (labels unused); False: the run's classes
    c.SELECT_ON_TEST = False  # with TEST.FINAL_MODEL best_val: select on the half's test images (the reference)


# ``cfg.TRAINER.MODAL`` (the reference's key, a plain value): ``base2novel`` or ``cross``
register_block("TRAINER.MODAL", lambda c: "base2novel")


# ----------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------
def promptkd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                  weight: float = 1.0) -> torch.Tensor:
    """``weight * T^2 * sum_{b,c} KL(softmax(teacher/T) || softmax(student/T)) / (B*C)`` (computed in fp32).

    Args: student, teacher: (B, C) logits. The sum over classes is the per-sample KL; dividing by ``B*C`` rather
    than ``B`` is the reference's (hence its large weights).
    """
    t = float(temperature)
    log_s = F.log_softmax(student.to(MASTER_DTYPE) / t, dim=-1)
    log_t = F.log_softmax(teacher.to(MASTER_DTYPE) / t, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    return float(weight) * t * t * kl / student.numel()


def kd_weight_for(mcfg, dataset_name: str) -> float:
    """``KD_WEIGHT``, or the ``KD_WEIGHT_BY_DATASET`` entry of ``dataset_name`` (names compared without case,
    spaces or punctuation)."""
    wanted = _squash(dataset_name)
    for name, weight in parse_weights(mcfg.KD_WEIGHT_BY_DATASET):
        if _squash(name) == wanted:
            return weight
    return float(mcfg.KD_WEIGHT)


def parse_weights(entries) -> list:
    out = []
    for entry in entries:
        name, sep, value = str(entry).rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not name.strip() or weight is None:
            raise UserError(f"TRAINER.PROMPTKD.KD_WEIGHT_BY_DATASET entry {entry!r} is not \"DatasetName:weight\" "
                            '(e.g. "FGVCAircraft:200"; the name is DATASET.NAME)')
        out.append((name.strip(), weight))
    return out


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# ----------------------------------------------------------------------------------------------------------
# The student: vision prompts and the projector
# ----------------------------------------------------------------------------------------------------------
class Projector(nn.Module):
    """The reference's ``VPT_image_trans``: 1x1 conv (student -> teacher width), BatchNorm, ReLU, 1x1 conv.

    Input shape: (B, student_dim). Output shape: (B, teacher_dim). Parameters stay fp32 (like the prompts); the
    input is cast to them. BatchNorm uses batch statistics in training and its running statistics in evaluation.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(student_dim, teacher_dim, kernel_size=1)
        self.bn = nn.BatchNorm2d(teacher_dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(teacher_dim, teacher_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)[:, :, None, None]
        return self.conv2(self.relu(self.bn(self.conv1(x))))[:, :, 0, 0]


class StudentPrompts(nn.Module):
    """The student's learned parts: IVLP vision prompts (no text prompts) and the projector.

    Parameters: ``vision_prompts[l]`` (n_ctx, Dv), l = 0..depth-1, N(0, 0.02); ``projector`` (:class:`Projector`,
    student embedding -> teacher embedding). ``forward()`` returns the vision :class:`~trainers.prompts.Prompts`.

    >>> StudentPrompts(vit_b16, teacher_dim=768, n_ctx=4, depth=9)   # 27,648 + 986,112 = 1,013,760 parameters
    """

    def __init__(self, clip_model: nn.Module, teacher_dim: int, n_ctx: int, depth: int,
                 key: str = "TRAINER.PROMPTKD"):
        super().__init__()
        dims = encoder_dims(clip_model, need_vit=key)
        n_ctx, depth = int(n_ctx), int(depth)
        if n_ctx < 1 or not 1 <= depth <= dims.vision_layers:
            raise UserError(f"{key}: N_CTX_VISION must be at least 1 and PROMPT_DEPTH_VISION between 1 and "
                            f"the image encoder's {dims.vision_layers} layers, got {n_ctx} and {depth}")
        self.n_ctx = n_ctx
        self.vision_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, dims.vision_width).normal_(std=0.02)) for _ in range(depth)])
        self.projector = Projector(int(clip_model.embed_dim), int(teacher_dim))

    def forward(self) -> Prompts:
        return Prompts(vision_ops=replaced_vision_ops(self.vision_prompts, self.n_ctx))

    def project(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.projector(image_features)


class DistilledCLIP(PromptedCLIP):
    """The student: ``logits = exp(student logit_scale) * normalise(proj(f(image))) @ class_features.T``.

    ``class_features`` (C, E_teacher): the teacher's L2-normalised text features of every class the run needs, a
    buffer that is never saved. The student's own text encoder is never run. Frozen prompt sets compose on the
    vision side only. :meth:`active_classes` restricts the logits to some classes (a base or new half).
    """

    def __init__(self, clip_model, prompt_learner, frozen_sets=None, text_order=None, vision_order=None, *,
                 class_features: torch.Tensor):
        super().__init__(clip_model, prompt_learner, frozen_sets, text_order=text_order, vision_order=vision_order)
        self.register_buffer("class_features", class_features, persistent=False)
        self._active: Optional[torch.Tensor] = None

    def prompts(self) -> Prompts:
        own = self.prompt_learner()
        if not len(self.frozen_sets):
            return own
        sets = {"adapt": own, **self.frozen_prompts()}
        return Prompts(vision_ops=clip.compose([sets[n].vision_ops for n in self.vision_order]))

    @contextlib.contextmanager
    def active_classes(self, index: Optional[Sequence[int]]):
        """Within this block the logits cover only the classes ``index`` (None: all of ``class_features``)."""
        previous = self._active
        self._active = None if index is None else torch.as_tensor(list(index), dtype=torch.long)
        try:
            yield
        finally:
            self._active = previous

    @contextlib.contextmanager
    def frozen_text_features(self):
        yield  # nothing to cache: the class features are fixed for good

    def forward(self, image: torch.Tensor) -> ModelOutput:
        prompts = self.prompts()
        feats = self.prompt_learner.project(self.clip_model.encode_image(image, ops=prompts.vision_ops))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        text, scale = self.class_features, self.clip_model.logit_scale.exp()
        logits = scale * feats @ text.t()
        if self._active is not None:  # the reference's slice of the all-class logits
            index = self._active.to(text.device)
            logits, text = logits[:, index], text[index]
        return ModelOutput(logits, feats, text, scale, prompts)


# ----------------------------------------------------------------------------------------------------------
# The teacher: a PromptSRC run
# ----------------------------------------------------------------------------------------------------------
def teacher_shapes(state: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Prompt sizes and depths of an IVLP prompt learner's state dict (its ``ctx``, ``text_prompts.<i>`` and
    ``vision_prompts.<i>``)."""
    text = [k for k in state if k.startswith("text_prompts.")]
    vision = sorted((k for k in state if k.startswith("vision_prompts.")), key=lambda k: int(k.split(".")[1]))
    n_text = int(state["ctx"].shape[0]) if "ctx" in state else 0
    return {"n_ctx_text": n_text, "depth_text": (len(text) + 1) if n_text else 0,
            "n_ctx_vision": int(state[vision[0]].shape[0]) if vision else 0, "depth_vision": len(vision)}


def _recorded_ctx_init(run_dir: str, block: str) -> Optional[str]:
    """``TRAINER.<block>.CTX_INIT`` from the run's ``config.yaml`` (None for a run that predates it)."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        return None
    return str(cfg.TRAINER[block].CTX_INIT)


def read_teacher(mcfg) -> dict:
    """Where the teacher is and what it is: ``{"source", "checkpoint", "epoch", "method", "model_name",
    "backbone", "ctx_init", "n_ctx_text", "depth_text", "n_ctx_vision", "depth_vision"}``, checked against the
    ``TRAINER.PROMPTKD`` keys that describe it (one error naming both values when they differ)."""
    source = str(mcfg.TEACHER_DIR)
    epoch = int(mcfg.TEACHER_EPOCH) if int(mcfg.TEACHER_EPOCH) >= 0 else None
    how = ("train one with `bash scripts/promptkd_teacher.sh DATASET` (PromptSRC on the teacher CLIP, base classes), "
           "or give TRAINER.PROMPTKD.TEACHER_DIR a PromptSRC run folder or checkpoint file")
    released = [n for n in TEACHER_FOLDERS if osp.isdir(osp.join(source, n))]
    if osp.isdir(source) and released and not osp.isfile(osp.join(source, "result.json")):
        # a downloaded teacher (teacher_model/<DATASET>): a PromptSRC checkpoint, its CLIP is TEACHER_NAME
        info = {"source": osp.abspath(source), "method": "PromptSRC", "model_name": released[0],
                "backbone": str(mcfg.TEACHER_NAME), "ctx_init": None}
        if not info["backbone"]:
            raise UserError("TRAINER.PROMPTKD.TEACHER_NAME is empty: name the CLIP the teacher in "
                            f'"{source}" was trained on (e.g. ViT-L/14)')
    elif osp.isdir(source):
        result = osp.join(source, "result.json")
        if not osp.isfile(result):
            raise UserError(f'TRAINER.PROMPTKD.TEACHER_DIR "{source}" holds no finished run (no result.json): finish '
                            f"it, or {how}")
        with open(result) as f:
            record = json.load(f)
        method = record.get("method")
        if method not in TEACHER_METHODS:
            raise UserError(f'TRAINER.PROMPTKD.TEACHER_DIR "{source}" is a {method} run; the teacher must be a '
                            f"{' or '.join(TEACHER_METHODS)} run: {how}")
        teacher = METHODS[method]
        info = {"source": osp.abspath(source), "method": method, "model_name": teacher.learner_name,
                "backbone": str(record.get("backbone")), "ctx_init": _recorded_ctx_init(source, teacher.block)}
        named = str(mcfg.TEACHER_NAME)
        if named and named != info["backbone"]:
            raise UserError(f"TRAINER.PROMPTKD.TEACHER_NAME is {named!r} but the teacher run \"{source}\" used "
                            f"{info['backbone']!r}: set TRAINER.PROMPTKD.TEACHER_NAME {info['backbone']!r}, or use a "
                            f"teacher trained on {named!r}")
    elif osp.isfile(source):  # a checkpoint file (e.g. a reference release): its CLIP is TEACHER_NAME
        info = {"source": osp.abspath(source), "method": "PromptSRC", "model_name": "VLPromptLearner",
                "backbone": str(mcfg.TEACHER_NAME), "ctx_init": None}
        if not info["backbone"]:
            raise UserError("TRAINER.PROMPTKD.TEACHER_NAME is empty: name the CLIP the teacher checkpoint "
                            f'"{source}" was trained on (e.g. ViT-L/14)')
    else:
        raise UserError(f'TRAINER.PROMPTKD.TEACHER_DIR "{source}": no such folder or file. PromptKD distils a '
                        f"PromptSRC teacher: {how}")
    info["checkpoint"], info["epoch"] = resolve_checkpoint(source, info["model_name"], epoch,
                                                           what="TRAINER.PROMPTKD.TEACHER_DIR")
    state = read_prompt_state(load_checkpoint(info["checkpoint"]), info["checkpoint"], METHODS[info["method"]].cls,
                              what="TRAINER.PROMPTKD.TEACHER_DIR")
    info.update(teacher_shapes(state))
    if info["ctx_init"] is None:  # a checkpoint file, or a run from before config.yaml: the key describes it
        info["ctx_init"] = str(mcfg.CTX_INIT)
    for key, name in (("N_CTX_TEXT", "n_ctx_text"), ("PROMPT_DEPTH_TEXT", "depth_text")):
        if int(mcfg[key]) != info[name]:
            raise UserError(f"TRAINER.PROMPTKD.{key} is {int(mcfg[key])} but the teacher "
                            f"\"{info['checkpoint']}\" was trained with {info[name]}: set TRAINER.PROMPTKD.{key} "
                            f"{info[name]}, or use a teacher trained with {int(mcfg[key])}")
    if " ".join(str(mcfg.CTX_INIT).split()) != " ".join(info["ctx_init"].split()):
        raise UserError(f"TRAINER.PROMPTKD.CTX_INIT is {str(mcfg.CTX_INIT)!r} but the teacher run \"{source}\" used "
                        f"{info['ctx_init']!r}: set TRAINER.PROMPTKD.CTX_INIT to the teacher's, or use another teacher")
    return info


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------
_PROJECTOR = re.compile(r"^VPT_image_trans\.conv1\.([013])\.(.+)$")
_PROJECTOR_PARTS = {"0": "conv1", "1": "bn", "3": "conv2"}


@register_method(
    keys=promptkd_keys, learner="PromptKDStudent",
    scripts={"base2new": "vit_b16_c2_ep20_batch8_4+4ctx", "crossdataset": "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets"},
    # the teacher: a PromptSRC run, which scripts/method.sh makes first with scripts/promptkd_teacher.sh
    earlier_run=EarlierRun("PromptSRC", "TRAINER.PROMPTKD.TEACHER_DIR", "TRAINER.PROMPTKD.TEACHER_NAME",
                           script="scripts/promptkd_teacher.sh"),
    counts=[Count("vit_b16_c2_ep20_batch8_4+4ctx", 1_013_760),
            Count("vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets", 995_328)],
)
class PromptKD(PromptTrainer):
    """``--trainer PromptKD``, config blocks ``TRAINER.PROMPTKD`` and ``TRAINER.MODAL``."""

    #: why its classifier is no head for plain CLIP (trainers.predict)
    NOT_A_HEAD = ("its image features go through a learned projector into the teacher's embedding space (and its "
                  "vision prompts change the image encoder)")
    #: the released students: the whole student model, registered as ``VLPromptLearner``
    REFERENCE_FOLDERS = ("VLPromptLearner",)
    #: the original student builds the teacher's text prompt learner, whose context it never uses
    REFERENCE_UNUSED = {"ctx": "the text context of the original student's prompt learner, which the student "
                               "never runs (it classifies against the teacher's text features)"}

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        """The original student's names: its image encoder's ``VPT``/``VPT_shallow`` prompts become
        ``vision_prompts.<l>``, the projector ``VPT_image_trans.conv1.{0,1,3}`` (conv, BatchNorm, conv) becomes
        ``projector.{conv1,bn,conv2}``."""
        out = {}
        for key, value in from_reference_keys(state_dict).items():
            match = _PROJECTOR.match(key)
            if match:
                key = f"prompt_learner.projector.{_PROJECTOR_PARTS[match.group(1)]}.{match.group(2)}"
            out[key] = value
        return out

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        m = cfg.TRAINER.PROMPTKD
        check_choice(cfg.TRAINER, "MODAL", "TRAINER.MODAL", MODALS)
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        if cfg.TRAINER.MODAL == "cross" and subsample != "all":
            raise UserError(f"TRAINER.MODAL cross distils and evaluates every class of the target dataset, but "
                            f"DATASET.SUBSAMPLE_CLASSES is {subsample!r}: set it to all, or use MODAL base2novel")
        check_range(m.TEMPERATURE, "TRAINER.PROMPTKD.TEMPERATURE", 1e-12, None, what=" (a positive temperature)")
        check_range(m.KD_WEIGHT, "TRAINER.PROMPTKD.KD_WEIGHT", 0, None)
        parse_weights(m.KD_WEIGHT_BY_DATASET)
        if m.SELECT_ON_TEST and cfg.TEST.FINAL_MODEL != "best_val":
            raise UserError("TRAINER.PROMPTKD.SELECT_ON_TEST True selects the epoch on test images, which only "
                            "TEST.FINAL_MODEL best_val does: set both (the reference's model selection), or neither")
        if not str(m.TEACHER_DIR):
            raise UserError("TRAINER.PROMPTKD.TEACHER_DIR is empty: PromptKD distils a PromptSRC teacher run. The "
                            "scripts (scripts/promptkd/*.sh) train and find it by themselves; with train.py, train "
                            "it with `bash scripts/promptkd_teacher.sh DATASET` and pass its folder")
        read_teacher(m)  # a wrong teacher is one error before anything is built

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        self.teacher_info = read_teacher(cfg.TRAINER.PROMPTKD)

    # -- data ---------------------------------------------------------------------------------------------
    @property
    def transductive(self) -> bool:
        return bool(self.cfg.TRAINER.PROMPTKD.TRANSDUCTIVE)

    def build_data_loader(self):
        """Evaluation data: the run's half (``DATASET.SUBSAMPLE_CLASSES``), labels from 0 as usual. Transductive
        training data: the training split of every class (a second dataset read with ``SUBSAMPLE_CLASSES all``);
        the half's logits are then a slice of the all-class logits."""
        super().build_data_loader()
        half = self.cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        self.class_names = self.classnames  # the classes of class_features
        self.eval_index = None  # columns of class_features the evaluation uses (None: all)
        if self.dm is None or not (self.transductive and half != "all"):
            return
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
        cfg.VERBOSE = False
        cfg.freeze()
        print("PromptKD, transductive: training on the training split of every class (labels unused)")
        from dassl.data import DataManager  # here, not at import: torchvision costs every script's start-up ~0.8 s

        full = DataManager(cfg)
        names = list(full.dataset.classnames)
        m = math.ceil(len(names) / 2)
        index = list(range(m)) if half == "base" else list(range(m, len(names)))
        if [names[i] for i in index] != self.class_names:
            raise UserError(f"the {half} classes of {self.cfg.DATASET.NAME} are not the {half} half of its classes "
                            "in label order; PromptKD's transductive mode needs the base-to-new split of the CoOp "
                            "datasets (or set TRAINER.PROMPTKD.TRANSDUCTIVE False)")
        self.train_loader_x = full.train_loader_x
        self.class_names = names
        self.eval_index = index

    # -- model --------------------------------------------------------------------------------------------
    def build_teacher(self, cfg) -> PromptedCLIP:
        """The frozen teacher (its CLIP and prompts, as its run trained them) and ``self.class_features``."""
        info = self.teacher_info
        print(f"Loading the PromptKD teacher: {info['method']} run \"{info['source']}\" on {info['backbone']!r} "
              f"({info['n_ctx_text']}+{info['n_ctx_vision']} tokens, text depth {info['depth_text']}, vision depth "
              f"{info['depth_vision']})")
        teacher_clip = load_clip(cfg, info["backbone"])
        with torch.random.fork_rng(devices=[]):  # the teacher's throwaway init leaves the student's draws alone
            learner = DeepPrompts(teacher_clip, n_text=info["n_ctx_text"], depth_text=info["depth_text"],
                                  n_vision=info["n_ctx_vision"], depth_vision=info["depth_vision"],
                                  key="TRAINER.PROMPTKD (its teacher)", classnames=self.class_names,
                                  ctx_init=info["ctx_init"])
        origin = load_prompt_set(learner, info["checkpoint"], info["model_name"], info["epoch"],
                                 what="PromptKD teacher prompts", declarations=METHODS[info["method"]].cls,
                                 backbone=teacher_clip)
        print(f'Teacher prompts from "{origin["path"]}" (epoch {origin["epoch"]}, sha256 {origin["sha256"][:12]}...)')
        self.frozen_origins["teacher"] = origin
        teacher = PromptedCLIP(teacher_clip, learner).to(self.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        print(f"Computing the teacher's text features of {len(self.class_names)} classes")
        with torch.no_grad():  # once, in fp32, before the teacher takes the run's precision
            self.class_features = normalise(teacher.encode_text(learner())).to(MASTER_DTYPE)
        self.precision.cast_model(teacher_clip)
        return teacher.eval()

    def build_prompt_learner(self, cfg, classnames, clip_model):
        m = cfg.TRAINER.PROMPTKD
        teacher_dim = getattr(self, "teacher_dim", None)
        if teacher_dim is None:  # no teacher loaded (counting parameters on the meta device): its architecture
            try:
                teacher_dim = clip.model_config(str(m.TEACHER_NAME))["embed_dim"]
            except ValueError as err:
                raise UserError(f"TRAINER.PROMPTKD.TEACHER_NAME: {err}") from err
        return StudentPrompts(clip_model, teacher_dim, m.N_CTX_VISION, m.PROMPT_DEPTH_VISION)

    def build_clip_model(self, cfg, classnames, clip_model):
        teacher = self.build_teacher(cfg)
        self.teacher_dim = int(teacher.clip_model.embed_dim)
        learner = self.build_prompt_learner(cfg, self.class_names, clip_model)
        frozen, text_order, vision_order = self.frozen_sets(cfg, self.class_names, clip_model)
        model = DistilledCLIP(clip_model, learner, frozen, text_order=text_order, vision_order=vision_order,
                              class_features=self.class_features)
        model.teachers["teacher"] = teacher
        return model

    def build_model(self):
        super().build_model()
        cfg, m = self.cfg, self.cfg.TRAINER.PROMPTKD
        self.kd_weight = kd_weight_for(m, cfg.DATASET.NAME)
        half = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        if cfg.TEST.FINAL_MODEL == "best_val":
            selection = "best base-class test accuracy (the reference's)" if m.SELECT_ON_TEST else \
                "best validation accuracy"
            if m.SELECT_ON_TEST:
                self.val_loader = self.test_loader  # the reference's "val": the half's test images
        else:
            selection = "last epoch"
        info = self.teacher_info
        self.result_extras()["promptkd"] = {
            "transductive": self.transductive or half == "all",
            "train_classes": "all" if self.transductive else half, "eval_classes": half,
            "modal": cfg.TRAINER.MODAL, "kd_weight": self.kd_weight, "temperature": float(m.TEMPERATURE),
            "model_selection": selection,
            "teacher": {k: info[k] for k in ("source", "checkpoint", "epoch", "method", "backbone", "ctx_init",
                                             "n_ctx_text", "depth_text", "n_ctx_vision", "depth_vision")},
        }
        print(f"PromptKD: KD weight {self.kd_weight:g} ({cfg.DATASET.NAME}), temperature {float(m.TEMPERATURE):g}, "
              f"{len(self.class_names)} classes in training, evaluation on the {half} classes, model selection: "
              f"{selection}")

    # -- training -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen teacher on the same (augmented) batch: ``exp(teacher logit_scale) * cos(image, class)``."""
        teacher = self.model.teachers["teacher"]
        size = getattr(teacher.clip_model.visual, "input_resolution", image.shape[-1])
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
        feats = normalise(teacher.clip_model.encode_image(image, ops=teacher.prompt_learner.vision_ops()))
        scale = teacher.clip_model.logit_scale.exp().to(MASTER_DTYPE)
        return scale * feats.to(MASTER_DTYPE) @ self.model.class_features.t()

    def loss(self, batch, out):
        target = self.teacher_logits(batch["img"])
        return LossOutput(promptkd_loss(out.logits, target, self.cfg.TRAINER.PROMPTKD.TEMPERATURE, self.kd_weight),
                          out.logits)

    # -- evaluation ---------------------------------------------------------------------------------------
    def test(self, split=None):
        with self.model.active_classes(self.eval_index):
            return super().test(split)

    def load_model(self, directory, epoch=None):
        """With ``TEST.FINAL_MODEL best_val`` the selected epoch (``model-best.pth.tar``) is deployed in every run,
        the new-class test included, as in the reference; otherwise the given epoch."""
        if directory and epoch is not None and self.cfg.TEST.FINAL_MODEL == "best_val" and all(
                osp.isfile(osp.join(directory, name, "model-best.pth.tar")) for name in self.get_model_names()):
            print(f"TEST.FINAL_MODEL best_val: deploying the selected model (model-best.pth.tar) instead of epoch "
                  f"{epoch}")
            epoch = None
        super().load_model(directory, epoch)
