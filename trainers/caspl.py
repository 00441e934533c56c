"""CasPL (Wu et al., ECCV 2024): boosting prompts distilled from a larger frozen CLIP, cascaded with any method.

Phase 1 (``--trainer CasPL``): *boosting prompts* -- IVLP-style deep prompts in both encoders
(:class:`~trainers.prompts.DeepPrompts`; ``KD.N_CTX_TEXT/N_CTX_VISION`` tokens, ``KD.PROMPT_DEPTH_*`` layers,
N(0, 0.02); 122,880 parameters at 8+8 tokens, depth 12, ViT-B/16) -- are learned on the run's CLIP (the student)
by distilling a frozen zero-shot teacher CLIP (``KD.BACKBONE_NAME``, ViT-L/14 by default; any name or checkpoint
path). Teacher text features: the dataset's hand-written template, computed once. Teacher logits use the
student's logit scale. Loss: ``KL(softmax(t/T) || softmax(s/T))`` summed, times ``T^2``, divided by the batch size;
labels unused. Text layout: ``[SOS][boost][class .][EOT]``; vision ``[CLS][patches][boost]``.

Teacher cost (``KD.TEACHER_MODE``): ``online`` (default, the fork's) runs the teacher's image encoder on every
augmented batch of every epoch. ``cached`` runs it once per training image, on a fixed view (the test pipeline at
the teacher's resolution: resize, center crop, normalise), before the first epoch, and keeps the normalised
features on disk (:mod:`trainers.teacher_cache`; ``KD.TEACHER_CACHE_DIR``, default
``<DATASET.ROOT>/.caspl_teacher_cache``, shared by reruns and seeds); the student still sees augmented views.
``result.json`` records the mode (``"caspl": {"teacher_mode": ..., "teacher_cache": {path, key, ...}}``).

Data: the fork's default is the whole training split of every class (``DATASET.NUM_SHOTS -1``,
``SUBSAMPLE_CLASSES all``) with labels unused: *transductive* -- the new classes' names and images are seen in
phase 1 (recorded as ``"caspl": {"transductive": true}`` in ``result.json``). ``SUBSAMPLE_CLASSES base`` gives
the inductive variant.

Phase 2 (:class:`Cascade`, an extension of the method contract) is every other method with ``KD.BOOST_DIR`` set to
the phase-1 run (folder or checkpoint; the epoch that run recorded unless ``KD.BOOST_EPOCH``): the boosting prompts
become a frozen prompt set beside the method's own, in the method's registered ``frozen_order`` (A7 of
``shared/reference/caspl.md``: text ``[SOS][adapt][boost][words]``, vision ``[CLS][patches][boost][adapt]``; MPL puts
the boosting tokens first in both). Their sizes must equal phase 1's (one error names both shapes).

Fixed here, by construction: no 2-token slice (positions come from the declared order), no hard-coded fp16 or
CUDA, checkpoints of only the boosting prompts (phase 1) or only the adapting prompts (phase 2), and the origin
(path + SHA256) of the boosting prompts recorded in phase 2's checkpoint and ``result.json``.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip import MASTER_DTYPE

from .base import LossOutput, PromptTrainer
from .compat import UserError, distributed
from .config import check_choice, check_range, register_block
from .prompts import ClassPrompts, DeepPrompts, Prompts
from .registry import Count, Extension, register_extension, register_method
from .teacher_cache import (TEACHER_MODES, BatchRows, cache_filename, cache_key, default_cache_dir, load_features,
                            numerics, save_features, teacher_identity, view_cfg, view_settings)
from .templates import dataset_template, zeroshot_text_features

#: the sizes of the boosting prompts (``KD.*``), the same in both phases
BOOST_SIZES = ("N_CTX_TEXT", "N_CTX_VISION", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION")


def kd_keys(c):
    """``cfg.KD``, the fork's block (its key names, so its configs read)."""
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
    # Not in the fork: phase 1's teacher cost. "online": the teacher's image encoder runs on every augmented batch
    # (the fork's way); "cached": once per training image on a fixed view (the test pipeline at the teacher's
    # resolution), features kept on disk under TEACHER_CACHE_DIR ("" = <DATASET.ROOT>/.caspl_teacher_cache)
    c.TEACHER_MODE = "online"
    c.TEACHER_CACHE_DIR = ""


register_block("KD", kd_keys)


def check_sizes(cfg) -> None:
    for key in BOOST_SIZES:
        check_range(cfg.KD[key], f"KD.{key}", 0, None, integer=True)
    check_range(cfg.KD.TEMPERATURE, "KD.TEMPERATURE", 1e-12, None, what=" (a positive temperature)")


def boosting_prompts(cfg, clip_model) -> DeepPrompts:
    kd = cfg.KD
    return DeepPrompts(clip_model, n_text=kd.N_CTX_TEXT, depth_text=kd.PROMPT_DEPTH_TEXT, n_vision=kd.N_CTX_VISION,
                       depth_vision=kd.PROMPT_DEPTH_VISION, key="KD")


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


@register_method(
    keys=lambda c: None,
    learner="BoostingPrompts",
    scripts={"base2new": "vit_b16_c2_ep20_batch4_8+8ctx_l12",
             "base2new@imagenet": "vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12",  # as scripts/caspl/run.sh
             "crossdataset": "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"},
    counts=[Count("vit_b16_c2_ep20_batch4_8+8ctx_l12", 122_880),
            Count("vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12", 122_880),
            Count("vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1", 5_120)],
)
class CasPL(PromptTrainer):
    """``--trainer CasPL``: phase 1, the boosting prompts; config blocks ``TRAINER.CASPL`` and ``KD``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        check_sizes(cfg)
        check_choice(cfg.KD, "TEACHER_MODE", "KD.TEACHER_MODE", TEACHER_MODES)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return boosting_prompts(cfg, clip_model)

    def build_frozen_sets(self, cfg, classnames, clip_model):
        # the class names as a set of their own: [SOS][boost][class .][EOT]; vision [CLS][patches][boost]
        return {"classes": ClassNames(clip_model, classnames)}

    def build_model(self):
        super().build_model()
        cfg = self.cfg
        teacher = self.teacher(cfg.KD.BACKBONE_NAME, "KD.BACKBONE_NAME")
        template = dataset_template(cfg.DATASET.NAME)
        with torch.no_grad(), self.precision.autocast(self.device):
            text = zeroshot_text_features(teacher, self.classnames, [template])
        self.model.register_buffer("teacher_text", text.to(MASTER_DTYPE), persistent=False)
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        extras = self.result_extras()["caspl"] = {
            "phase": 1, "teacher": cfg.KD.BACKBONE_NAME, "temperature": float(cfg.KD.TEMPERATURE),
            "transductive": subsample == "all", "subsample": subsample,
            "boost": {k: int(cfg.KD[k]) for k in BOOST_SIZES},
            "teacher_mode": self.teacher_mode,
        }
        self.teacher_cache = None  # the cached features (N, D), once prepare_teacher_cache() ran
        if self.teacher_mode == "cached":
            self.teacher_cache_info = self.describe_teacher_cache(teacher)
            extras["teacher_cache"] = {k: self.teacher_cache_info[k] for k in ("path", "key", "images", "view")}
            how = f"cached (once per image, fixed view, \"{self.teacher_cache_info['path']}\")"
        else:
            how = "online (every augmented batch)"
        print(f"CasPL phase 1: teacher {cfg.KD.BACKBONE_NAME!r}, template {template!r}, "
              f"{'transductive (all classes, labels unused)' if subsample == 'all' else 'inductive (' + subsample + ' classes)'}"
              f", teacher {how}")

    @property
    def teacher_mode(self) -> str:
        return self.cfg.KD.get("TEACHER_MODE", "online")

    # -- the teacher ------------------------------------------------------------------------------------------
    def teacher_resolution(self, teacher) -> int:
        return int(getattr(teacher.visual, "input_resolution", 0) or max(self.cfg.INPUT.SIZE))

    @torch.no_grad()
    def teacher_image_features(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's L2-normalised image features (its dtype), resized to its resolution if needed."""
        teacher = self.teacher(self.cfg.KD.BACKBONE_NAME, "KD.BACKBONE_NAME")
        size = getattr(teacher.visual, "input_resolution", image.shape[-1])
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
        feats = teacher.encode_image(image)
        return feats / feats.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def teacher_logits_from_features(self, feats: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Teacher logits: the student's logit scale x cosine with the teacher's text features."""
        return scale.to(MASTER_DTYPE) * feats.to(MASTER_DTYPE) @ self.model.teacher_text.t()

    @torch.no_grad()
    def teacher_logits(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The frozen teacher on the same (augmented) batch, resized to its resolution if that differs."""
        return self.teacher_logits_from_features(self.teacher_image_features(image), scale)

    def describe_teacher_cache(self, teacher) -> dict:
        """Where the cached features live and the key that names them (nothing is read or written here)."""
        cfg = self.cfg
        impaths = [item.impath for item in self.dm.dataset.train_x]
        size = self.teacher_resolution(teacher)
        view = view_settings(cfg, size)
        key = cache_key(impaths, teacher_identity(cfg.KD.BACKBONE_NAME), view, numerics(self.precision, teacher))
        path = osp.join(default_cache_dir(cfg), cache_filename(cfg.DATASET.NAME, cfg.KD.BACKBONE_NAME, key))
        return {"path": path, "key": key, "images": len(impaths), "view": view, "size": size, "impaths": impaths}

    def prepare_teacher_cache(self):
        """Load the cached teacher features, or compute them (one pass over the training images) and save them."""
        info = self.teacher_cache_info
        path, key, impaths = info["path"], info["key"], info["impaths"]
        feats, why = load_features(path, key, impaths)
        if feats is not None:
            print(f'Teacher cache reused: "{path}" ({feats.shape[0]} images x {feats.shape[1]})')
        elif distributed.is_main_process():  # torchrun: rank 0 computes and writes it, the others then read it
            if why != "missing":
                print(f'Teacher cache "{path}" is {why}: computing it again')
            try:  # before the teacher pass (hours on ImageNet), not after it: can the file be written there?
                os.makedirs(osp.dirname(path), exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=osp.dirname(path), prefix=".write-check-"):
                    pass
            except OSError as err:
                raise UserError(f'cannot write the teacher cache in "{osp.dirname(path)}" ({err}); set '
                                "KD.TEACHER_CACHE_DIR to a writable folder") from err
            feats = self.compute_teacher_features(info)
            try:
                save_features(path, key, impaths, feats, info={"teacher": self.cfg.KD.BACKBONE_NAME,
                                                               "view": info["view"]})
            except OSError as err:
                raise UserError(f'cannot write the teacher cache "{path}" ({err}); set KD.TEACHER_CACHE_DIR to a '
                                "writable folder") from err
            print(f'Teacher cache written: "{path}" ({feats.shape[0]} images x {feats.shape[1]})')
        distributed.barrier()
        if feats is None:
            feats, why = load_features(path, key, impaths)
            if feats is None:
                raise RuntimeError(f'teacher cache "{path}" written by rank 0 is {why}')
        self.teacher_cache = feats
        self.teacher_rows = BatchRows(impaths)
        self.release_teacher(self.cfg.KD.BACKBONE_NAME)  # needed no more (its text features are kept)

    @torch.no_grad()
    def compute_teacher_features(self, info) -> torch.Tensor:
        """The teacher once over the training images, in the fixed view, in order; no global random state used."""
        from dassl.data import DatasetWrapper
        from dassl.data.transforms import build_transform

        cfg = self.cfg
        view = view_cfg(cfg, info["size"])
        print(f"Teacher cache: one pass of the teacher over {info['images']} training images (test view, "
              f"{info['size']}x{info['size']})")
        tfm = build_transform(view, is_train=False)
        if tfm is None:
            raise UserError("KD.TEACHER_MODE cached needs the test transform, but INPUT.NO_TRANSFORM is True")
        loader = torch.utils.data.DataLoader(
            DatasetWrapper(view, self.dm.dataset.train_x, transform=tfm, is_train=False),
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
            generator=torch.Generator(),  # the loader's seed draw must not move the global RNG (data order)
            pin_memory=self.device.type == "cuda")
        chunks = []
        with self.precision.autocast(self.device):
            for batch in loader:
                chunks.append(self.teacher_image_features(batch["img"].to(self.device)).cpu())
        return torch.cat(chunks)

    def cached_teacher_logits(self, rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.teacher_logits_from_features(self.teacher_cache[rows].to(self.device), scale)

    # -- training ---------------------------------------------------------------------------------------------
    def before_train(self):
        if self.teacher_mode == "cached" and self.teacher_cache is None:
            self.prepare_teacher_cache()
        super().before_train()

    def loss(self, batch, out):
        scale = out.logit_scale.detach()
        if self.teacher_mode == "cached":
            target = self.cached_teacher_logits(self.teacher_rows(batch), scale)
        else:
            target = self.teacher_logits(batch["img"], scale)
        return LossOutput(distillation_loss(out.logits, target, self.cfg.KD.TEMPERATURE), out.logits)


class Cascade(Extension):
    """CasPL's phase 2 on any method: with ``KD.BOOST_DIR`` set, the phase-1 run's boosting prompts are a frozen
    prompt set (``"boost"``) beside the method's own, placed by the method's ``frozen_order``; its origin goes into
    the checkpoint and ``result.json`` (``"cascade"``, ``"frozen_sets"``)."""

    name = "CasPL"
    #: the fork's phase-2 configs by method (its other protocols keep the method's usual configs)
    scripts = {
        "CoOp": {"base2new": "caspl_vit_b16_ep50"},  # ImageNet too
        "CoCoOp": {"base2new": "caspl_vit_b16_c8_ep10_batch1"},
        "MaPLe": {"base2new": "caspl_vit_b16_c8_ep5_batch4_8ctx_l12"},
        "PromptSRC": {
            "base2new": "caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12",
            "crossdataset": "caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3",
            "fewshot": "caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12",
            # few-shot GPA (30, 30) on these datasets, (45, 5) on the others
            **{f"fewshot@{d}": "caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12_gpa30"
               for d in ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397")},
        },
    }
    #: the method's own prompts in those configs (the frozen boosting prompts are never counted)
    counts = {
        "CoOp": [Count("caspl_vit_b16_ep50", 4_096)],
        "CoCoOp": [Count("caspl_vit_b16_c8_ep10_batch1", 37_408)],
        "MaPLe": [Count("caspl_vit_b16_c8_ep5_batch4_8ctx_l12", 4_776_960)],
        "PromptSRC": [Count("caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12", 122_880),
                      Count("caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12", 122_880),
                      Count("caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12_gpa30", 122_880),
                      Count("caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3", 30_720)],
    }

    def enabled(self, cfg) -> bool:
        return bool(cfg.get("KD") is not None and cfg.KD.get("BOOST_DIR")) and cfg.TRAINER.NAME != "CasPL"

    def check_config(self, cfg) -> None:
        check_sizes(cfg)

    def frozen_sets(self, trainer, classnames, clip_model):
        kd = trainer.cfg.KD
        boost = boosting_prompts(trainer.cfg, clip_model)
        epoch = int(kd.BOOST_EPOCH) if int(kd.BOOST_EPOCH) >= 0 else None
        try:
            trainer.load_frozen_set("boost", boost, kd.BOOST_DIR, kd.BOOST_MODEL_NAME, epoch, what="KD.BOOST_DIR",
                                    sizes=lambda state: {f"KD.{k}": v for k, v in DeepPrompts.sizes_of(state).items()})
        except UserError as err:
            if "does not match" in str(err):  # sizes or depths other than phase 1's
                raise UserError(f"{err} (set KD.N_CTX_* and KD.PROMPT_DEPTH_* to the phase-1 run's values; "
                                "scripts/caspl/run.sh passes them from its result.json)") from None
            raise UserError(f"{err} (KD.BOOST_DIR names CasPL's phase-1 run; make one with `python train.py "
                            "--trainer CasPL --config-file configs/trainers/CasPL/<config>.yaml ...` on the same "
                            "dataset, or give KD.BOOST_DIR the folder or checkpoint file of one)") from None
        return {"boost": boost}

    def result_extras(self, trainer):
        origin = trainer.frozen_origins["boost"]
        return {"cascade": {"phase": 2, "boosting_run": origin["path"], "boosting_sha256": origin["sha256"]}}


register_extension(Cascade())
