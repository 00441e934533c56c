"""ProGrad (Zhu et al., ICCV 2023): CoOp's context, trained with prompt-aligned gradients.

The cross-entropy gradient of every learned tensor is kept as it is when it agrees with the gradient of a
distillation loss towards zero-shot CLIP, and has its conflicting component removed when it does not::

    g_ce, g_kd = dL_ce/dctx, dL_kd/dctx                      (per parameter tensor)
    g = g_ce                                         if g_ce . g_kd >= 0
    g = g_ce - LAMBDA * (g_ce . g_kd) / |g_kd|^2 * g_kd   otherwise

The distillation gradient itself is never added: it only removes what conflicts with it. The update happens in the
engine's hook between backward and the optimizer step (``before_optimizer_step``), so weight decay and momentum
act on the projected gradient, a GradScaler's gradients are unscaled first, and under torchrun both gradients are
the whole batch's.

Reference behaviour (BeierZhu/Prompt-align ``ProGrad.public/trainers/prograd.py`` and its Dassl fork's
``prograd_backward_and_update``; facts in ``shared/reference/methods-more.md`` section 2):

* learned: CoOp's context, ``N_CTX`` vectors (16 in every shipped script: 8,192 parameters at ViT-B/16; 2,048
  with 4), at layer 0, class name at the end (or middle/front);
* ``CTX_INIT True``: the dataset's ProGrad template without ``" {}."`` is the init phrase (at most ``N_CTX``
  words, k of them); the first ``N_CTX - k`` context vectors are **zeros**, the rest the embeddings of the
  phrase's first k tokens, so the prompt reads "<zeros> <template with the class name>" (a phrase with more
  tokens than words, e.g. "pet," = 2 tokens, keeps its last tokens as fixed words); ``False``: N(0, 0.02) vectors;
* the zero-shot teacher: ``logit_scale * f_image . t_zs`` with ``t_zs`` the frozen CLIP's text features of the
  dataset's ProGrad template (:data:`TEMPLATES`), no gradient;
* losses: L_ce = CE(student logits, y) (primary) and L_kd = T^2 * mean_batch sum_c -softmax(t/T)_c *
  log_softmax(s/T)_c (reference; a soft-target cross-entropy: its gradient is the KL's, its value is not the KL,
  so the log shows it as ``kd``); ``LOSS.NAME prograd``, ``LOSS.T`` and ``LOSS.LAMBDA`` as the reference's keys;
* evaluation: the student's logits (CoOp's).

Differences, and why results do not change:

* **No second CLIP.** The reference loads a separate CLIP (in fp32) as the teacher. The student's image encoder is
  CLIP's own, frozen and without prompts, so its image features *are* the teacher's (same weights, same input),
  and the teacher's text features depend on nothing learned, so they are computed once per class list from the
  frozen CLIP (in fp32, before the run's precision is applied) and kept as a buffer. In an fp32 run the teacher's
  logits are bit-identical to a separate copy's; in fp16 they differ from the reference's fp32 teacher by the
  image features' rounding only.
* **Projection in fp32, and a zero distillation gradient.** The reference computes norms and dot products on fp16
  gradients and divides by ``|g_kd|``, so a zero ``g_kd`` gives NaN and poisons the update. Here the gradients
  are fp32 (prompts are fp32 master weights) and a zero (or non-finite) ``g_kd`` leaves ``g_ce`` unchanged.
* As in the reference, only the direction of ``g_kd`` matters: where the student equals the teacher (an init that
  reproduces the template exactly, with ``N_CTX`` equal to its number of words) ``g_kd`` is rounding noise and the
  first step removes an arbitrary component of ``g_ce`` (the 16-vector configs start from zeros plus the template,
  so the student differs from the teacher from the first step).
* **CLASS_TOKEN_POSITION middle works.** The reference's ``middle`` branch names an undefined variable and raises;
  here it is CoOp's middle layout.
* The reference runs two backward passes (KD, then CE); here the KD gradient is taken with ``torch.autograd.grad``
  in the loss hook (it does not touch ``.grad``, so DDP reduces the CE gradient as usual and the KD one is summed
  over processes explicitly) and handed to the gradient hook in the step's ``LossOutput.aux``; then CE runs the
  ordinary backward. Same two gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import MASTER_DTYPE

from .base import LossOutput, PromptTrainer, cross_entropy
from .compat import UserError
from .config import check_choice, check_range, phrase_context_keys, register_block
from .coop import PromptLearner
from .prompts import CLASS_TOKEN_POSITIONS
from .registry import Count, register_method
from .templates import CUSTOM_TEMPLATES, dataset_template, zeroshot_text_features

#: ProGrad's zero-shot templates (its teacher and its ``CTX_INIT``); other datasets: the CoOp family's
TEMPLATES = {
    **CUSTOM_TEMPLATES,
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a type of food, a photo of {}.",
}

#: the loss the reference's ``LOSS.NAME`` must name
LOSS_NAME = "prograd"


def prograd_keys(c):
    phrase_context_keys(c, n_ctx=16)  # every reference script: 16 context vectors
    c.CTX_INIT = True  # True: zero-padded init from the dataset's ProGrad template; False: N(0, 0.02)


def loss_keys(c):
    """``cfg.LOSS``, top level as in ProGrad's Dassl fork."""
    c.NAME = LOSS_NAME  # the only loss ProGrad's trainer accepts
    c.T = 1.0  # distillation temperature
    c.LAMBDA = 1.0  # share of the conflicting component removed (1: the whole projection; reference 0.8 on
    # Flowers102, DTD and EuroSAT at 8 and 16 shots)


register_block("LOSS", loss_keys)


def prograd_template(dataset_name: str) -> str:
    return dataset_template(dataset_name, TEMPLATES)


def init_phrase(template: str, n_ctx: int, key: str = "TRAINER.PROGRAD") -> str:
    """The template without its ``" {}."`` ending, refused when it has more words than ``n_ctx``."""
    if not template.endswith(" {}."):
        raise UserError(f'the ProGrad template "{template}" does not end with " {{}}.", so {key}.CTX_INIT True '
                        "cannot take an init phrase from it; set CTX_INIT False for random context")
    phrase = template[:-len(" {}.")]
    if len(phrase.split(" ")) > n_ctx:
        raise UserError(f'{key}.CTX_INIT True starts the context from "{phrase}", which has '
                        f"{len(phrase.split(' '))} words, more than N_CTX={n_ctx}: raise N_CTX or set CTX_INIT False")
    return phrase


class ProGradPromptLearner(PromptLearner):
    """CoOp's learner (``ctx`` (N_CTX, D), or (C, N_CTX, D) with CSC), with ProGrad's zero-padded template init."""

    def __init__(self, mcfg, classnames: Sequence[str], clip_model, dataset_name: str, key: str = "TRAINER.PROGRAD"):
        n_ctx = int(mcfg.N_CTX)
        coop = CN({"N_CTX": n_ctx, "CSC": bool(mcfg.CSC), "CTX_INIT": "",
                   "CLASS_TOKEN_POSITION": mcfg.CLASS_TOKEN_POSITION})
        n_zero = 0
        if mcfg.CTX_INIT:
            phrase = init_phrase(prograd_template(dataset_name), n_ctx, key)
            n_zero = n_ctx - len(phrase.split(" "))
            coop.CTX_INIT = " ".join(["X"] * n_zero + [phrase])  # N_CTX words: placeholders, then the phrase
        super().__init__(coop, classnames, clip_model, key=key)
        if n_zero:
            with torch.no_grad():
                self.ctx[:n_zero] = 0


def soft_target_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b sum_c -softmax(teacher/T)_c * log_softmax(logits/T)_c`` (the reference's ``ProGradLoss``)."""
    t = float(temperature)
    target = F.softmax(teacher_logits.to(MASTER_DTYPE) / t, dim=-1)
    log_p = F.log_softmax(logits.to(MASTER_DTYPE) / t, dim=-1)
    return -(target * log_p).sum(dim=-1).mean() * t * t


def project_conflicting(grad: torch.Tensor, reference: Optional[torch.Tensor], lam: float) -> torch.Tensor:
    """ProGrad's rule for one tensor, in fp32: ``grad`` when it agrees with ``reference`` (dot >= 0), else
    ``grad - lam * (grad . reference) / |reference|^2 * reference``. A missing, zero or non-finite reference
    leaves ``grad`` unchanged (the reference divides by ``|reference|`` and would give NaN). Only the direction of
    ``reference`` matters, so it may be scaled by any positive factor (a loss scale, a sum over processes)."""
    if reference is None:
        return grad
    g = grad.to(MASTER_DTYPE)
    r = reference.to(MASTER_DTYPE)
    rr = (r * r).sum()
    if not bool(torch.isfinite(rr)) or float(rr) == 0.0:
        return grad
    dot = (g * r).sum()
    if float(dot) >= 0.0:
        return grad
    return (g - (float(lam) * dot / rr) * r).to(grad.dtype)


@register_method(
    keys=prograd_keys,
    #: ViT-B/16 recipes are this project's (the reference ships RN50 only); few-shot by shots as its README, with
    #: LAMBDA 0.8 at 8 and 16 shots on Flowers102, DTD and EuroSAT
    scripts={
        "base2new": "vit_b16_ep100", "base2new@imagenet": "vit_b16_ep50", "crossdataset": "vit_b16_ep50",
        "fewshot": "vit_b16", "fewshot:1": "vit_b16_ep50", "fewshot:2": "vit_b16_ep100", "fewshot:4": "vit_b16_ep100",
        **{f"fewshot:{k}@{d}": "vit_b16_lambda0.8" for k in (8, 16) for d in ("oxford_flowers", "dtd", "eurosat")},
    },
    counts=[Count("vit_b16_ep100", 8_192), Count("vit_b16_ep100", 2_048, ("TRAINER.PROGRAD.N_CTX", "4"))],
)
class ProGrad(PromptTrainer):
    """``--trainer ProGrad``, config blocks ``TRAINER.PROGRAD`` and ``LOSS``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        check_choice(cfg.TRAINER.PROGRAD, "CLASS_TOKEN_POSITION", "TRAINER.PROGRAD.CLASS_TOKEN_POSITION",
                     CLASS_TOKEN_POSITIONS)
        if cfg.LOSS.NAME != LOSS_NAME:
            raise UserError(f'LOSS.NAME is "{cfg.LOSS.NAME}", but the ProGrad trainer trains with its own loss '
                            f'pair only: set LOSS.NAME {LOSS_NAME} (as the reference requires)')
        if not float(cfg.LOSS.T) > 0:
            raise UserError(f"LOSS.T must be a positive temperature, got {cfg.LOSS.T}")
        check_range(cfg.LOSS.LAMBDA, "LOSS.LAMBDA", 0, 1)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return ProGradPromptLearner(self.method_cfg, classnames, clip_model, cfg.DATASET.NAME)

    def build_clip_model(self, cfg, classnames, clip_model):
        model = super().build_clip_model(cfg, classnames, clip_model)
        template = prograd_template(cfg.DATASET.NAME)
        print(f'Zero-shot teacher: the frozen CLIP with "{template}"')
        # the teacher's class features, from the fp32 frozen CLIP before the run's precision; not saved
        model.register_buffer("zs_text", zeroshot_text_features(clip_model, classnames, [template]), persistent=False)
        return model

    # -- losses and the projection ------------------------------------------------------------------------
    def teacher_logits(self, out) -> torch.Tensor:
        """Zero-shot CLIP's logits for the batch: the frozen image features times the template features."""
        with torch.no_grad():
            image = out.image_features.to(MASTER_DTYPE)
            return out.logit_scale.to(MASTER_DTYPE) * image @ self.model.zs_text.to(MASTER_DTYPE).t()

    def loss(self, batch, out):
        ce = cross_entropy(out.logits, batch["label"])
        kd = soft_target_cross_entropy(out.logits, self.teacher_logits(out), self.cfg.LOSS.T)
        aux = {}
        if torch.is_grad_enabled() and out.logits.requires_grad:
            aux["reference_gradients"] = self._gradients_of(kd, batch=out.logits.shape[0])
        return LossOutput(ce, out.logits, terms={"kd": kd.detach()}, ce=ce, aux=aux)

    def _gradients_of(self, loss: torch.Tensor, batch: int):
        """(parameter, gradient of ``loss``) for every learned tensor; ``.grad`` is left alone. With a GradScaler
        the loss is scaled first (fp16 backward), and under torchrun the batch-weighted sum over processes is
        taken: both change the gradient's length only, and the projection uses its direction."""
        params = [p for p in self.model.prompt_learner.parameters() if p.requires_grad]
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            grads = [torch.zeros_like(p) if g is None else g * batch for p, g in zip(params, grads)]
            for g in grads:
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return list(zip(params, grads))

    def adjust_gradients(self, result):
        reference = result.aux.get("reference_gradients")
        if reference is None:
            return
        lam = float(self.cfg.LOSS.LAMBDA)
        with torch.no_grad():
            for param, ref in reference:
                if param.grad is not None:
                    param.grad.copy_(project_conflicting(param.grad, ref, lam))
