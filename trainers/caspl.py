"""CasPL (Wu et al., ECCV 2024): boosting prompts distilled from a larger frozen CLIP, cascaded with any method.

Phase 1 (``--trainer CasPL``, this module): *boosting prompts* -- IVLP-style deep prompts in both encoders
(:class:`~trainers.common.DeepPrompts`; ``KD.N_CTX_TEXT/N_CTX_VISION`` tokens, ``KD.PROMPT_DEPTH_*`` layers,
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

import os
import os.path as osp
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import MASTER_DTYPE
from dassl.engine import TRAINER_REGISTRY

from .common import ClassPrompts, DeepPrompts, PromptTrainer, Prompts, UserError
from .config import register_config
from .teacher_cache import (TEACHER_MODES, BatchRows, cache_filename, cache_key, default_cache_dir, load_features,
                            numerics, save_features, teacher_identity, view_cfg, view_settings)
from .templates import dataset_template

try:  # this project's engine (torchrun support)
    from dassl.engine import distributed
except ImportError:  # the real Dassl.pytorch: one process
    class distributed:  # noqa: N801
        is_main_process = staticmethod(lambda: True)
        barrier = staticmethod(lambda: None)
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
    # Not in the fork: phase 1's teacher cost. "online": the teacher's image encoder runs on every augmented batch
    # (the fork's way); "cached": once per training image on a fixed view (the test pipeline at the teacher's
    # resolution), features kept on disk under TEACHER_CACHE_DIR ("" = <DATASET.ROOT>/.caspl_teacher_cache)
    c.TEACHER_MODE = "online"
    c.TEACHER_CACHE_DIR = ""
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
                      "base2new@imagenet": "vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12",  # as scripts/caspl/run.sh
                      "crossdataset": "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"}

    def build_prompt_learner(self, cfg, classnames, clip_model):
        kd = cfg.KD
        return DeepPrompts(clip_model, n_text=kd.N_CTX_TEXT, depth_text=kd.PROMPT_DEPTH_TEXT,
                           n_vision=kd.N_CTX_VISION, depth_vision=kd.PROMPT_DEPTH_VISION, key="KD")

    def build_frozen_sets(self, cfg, classnames, clip_model):
        return {"classes": ClassNames(clip_model, classnames)}  # phase 1 is never cascaded with itself

    def prompt_order(self, names=()):
        return None, None  # [SOS][boost][class .][EOT] and [CLS][patches][boost]: the learner first

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        mode = cfg.KD.get("TEACHER_MODE", "online")
        if mode not in TEACHER_MODES:
            raise UserError(f"KD.TEACHER_MODE is {mode!r}; choose one of {', '.join(TEACHER_MODES)} (online: the "
                            "teacher on every augmented batch, as the fork; cached: once per training image on a "
                            "fixed view, kept on disk)")

    @property
    def teacher_mode(self) -> str:
        return self.cfg.KD.get("TEACHER_MODE", "online")

    def build_model(self):
        super().build_model()
        cfg = self.cfg
        teacher = self.teacher(cfg.KD.BACKBONE_NAME, "KD.BACKBONE_NAME")
        template = dataset_template(cfg.DATASET.NAME)
        with torch.no_grad(), self.precision.autocast(self.device):
            text = zeroshot_text_features(teacher, self.dm.dataset.classnames, [template])
        self.model.register_buffer("teacher_text", text.to(MASTER_DTYPE), persistent=False)
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        extras = self.result_extras()["caspl"] = {
            "phase": 1, "teacher": cfg.KD.BACKBONE_NAME, "temperature": float(cfg.KD.TEMPERATURE),
            "transductive": subsample == "all", "subsample": subsample,
            "boost": {k: int(cfg.KD[k]) for k in ("N_CTX_TEXT", "N_CTX_VISION", "PROMPT_DEPTH_TEXT",
                                                  "PROMPT_DEPTH_VISION")},
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

    def forward_backward(self, batch):
        if self.teacher_mode == "cached":
            self._batch_rows = self.teacher_rows(batch)
        return super().forward_backward(batch)

    def compute_loss(self, image, label):
        out = self.model(image)
        scale = out.logit_scale.detach()
        if self.teacher_mode == "cached":
            target = self.cached_teacher_logits(self._batch_rows, scale)
        else:
            target = self.teacher_logits(image, scale)
        return distillation_loss(out.logits, target, self.cfg.KD.TEMPERATURE), out.logits
