"""Each method's training loss, written by hand from its paper and the reference code's facts
(``shared/reference/``), for the contract tests: they must equal what the method's loss hook returns on a fixed
batch. Nothing here calls a method's loss code; the frozen CLIP, its tokenizer and the model's forward (logits and
features) are the inputs. A new method adds one function to :data:`REFERENCE_LOSSES` (the contract test names the
method that has none).

Every function takes ``(trainer, batch, out)`` -- ``out`` the prompted CLIP's output on ``batch["img"]`` -- and
returns ``{"loss": ..., <term>: ...}``: the loss and the logged terms the method reports.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import clip
from trainers.promptsrc import TEMPLATES as PROMPTSRC_TEMPLATES

#: the datasets' hand-written templates the tests use (EuroSAT), from the references' tables
EUROSAT = "a centered satellite photo of {}."


def _n(x):
    return x / x.norm(dim=-1, keepdim=True)


def _text(clip_model, names, template):
    ids = clip.tokenize([template.format(n) for n in names], context_length=clip_model.context_length)
    with torch.no_grad():
        return clip_model.encode_text(ids.to(clip_model.token_embedding.weight.device)).float()


def _ce(out, batch):
    return F.cross_entropy(out.logits.float(), batch["label"])


def _kl_sum(teacher_logits, student_logits, t=1.0):
    """sum_b sum_c p_t (log p_t - log p_s) at temperature t."""
    p_t = F.softmax(teacher_logits.float() / t, dim=-1)
    return (p_t * (F.log_softmax(teacher_logits.float() / t, dim=-1)
                   - F.log_softmax(student_logits.float() / t, dim=-1))).sum()


def cross_entropy_only(trainer, batch, out):
    return {"loss": _ce(out, batch)}


def clip_lora(trainer, batch, out):
    """CE on 100 * cos(image, text): the reference's fixed logit scale, not CLIP's learned one."""
    logits = 100.0 * _n(out.image_features.float()) @ _n(out.text_features.float()).t()
    return {"loss": F.cross_entropy(logits, batch["label"])}


#: MMRL's lambda per dataset (the reference's trainers/config.py table; EuroSAT is what the tests use)
MMRL_LAMBDA = {"EuroSAT": 0.01}


def mmrl(trainer, batch, out):
    """ALPHA CE(100 cos(f_cls, t)) + (1 - ALPHA) CE(100 cos(f_rep, t)) + lambda (1 - mean cos(f_cls, f_cls of frozen
    CLIP on the batch)) + lambda (1 - mean cos(t, frozen CLIP's t of the dataset template)) (Guo & Gu 2025)."""
    c = trainer.cfg.TRAINER.MMRL
    alpha = c.ALPHA
    lam = MMRL_LAMBDA.get(trainer.cfg.DATASET.NAME, c.REG_WEIGHT) if c.DATASET_TABLE else c.REG_WEIGHT
    image, rep, text = (_n(t.float()) for t in (out.image_features, out.extras["rep_features"], out.text_features))
    label = batch["label"]
    ce_cls = F.cross_entropy(100 * image @ text.t(), label)
    ce_rep = F.cross_entropy(100 * rep @ text.t(), label)
    model = trainer.model.clip_model
    with torch.no_grad():
        zs_image = _n(model.encode_image(batch["img"]).float())
    zs_text = _n(_text(model, trainer.classnames, EUROSAT))
    image_reg = lam * (1 - (image * zs_image).sum(-1).mean())
    text_reg = lam * (1 - (text * zs_text).sum(-1).mean())
    return {"loss": alpha * ce_cls + (1 - alpha) * ce_rep + image_reg + text_reg, "cls": ce_cls, "rep": ce_rep,
            "image_reg": image_reg, "text_reg": text_reg}


def kgcoop(trainer, batch, out):
    """CE + W * (1 - mean_c cos(t_c, hand-written t_c)) (Yao et al. 2023, eq. 5)."""
    anchor = _n(_text(trainer.model.clip_model, trainer.classnames, EUROSAT))
    kg = trainer.cfg.TRAINER.KGCOOP.W * (1 - (_n(out.text_features.float()) * anchor).sum(-1).mean())
    return {"loss": _ce(out, batch) + kg, "kg": kg}


def tcp(trainer, batch, out):
    """CE + KG_WEIGHT * (1 - mean cos) with TCP's anchor template (EuroSAT's is CoOp's)."""
    anchor = _n(_text(trainer.model.clip_model, trainer.classnames, EUROSAT))
    kg = trainer.cfg.TRAINER.TCP.KG_WEIGHT * (1 - (_n(out.text_features.float()) * anchor).sum(-1).mean())
    return {"loss": _ce(out, batch) + kg, "kg": kg}


def prograd(trainer, batch, out):
    """The loss is CE; the distillation term (for the gradient projection) is T^2 * mean_b CE(soft teacher)."""
    t = float(trainer.cfg.LOSS.T)
    zs = _n(_text(trainer.model.clip_model, trainer.classnames, EUROSAT))
    teacher = out.logit_scale.float() * _n(out.image_features.float()) @ zs.t()
    kd = -(F.softmax(teacher / t, -1) * F.log_softmax(out.logits.float() / t, -1)).sum(-1).mean() * t * t
    return {"loss": _ce(out, batch), "kd": kd}


def promptsrc(trainer, batch, out):
    """CE + 25 L1(text, template-ensemble text) + 10 L1(image, zero-shot image) + KL(zs || prompted) / (B C)
    (Khattak et al. 2023, eq. 3-6; the weights from the config)."""
    m, clip_model = trainer.cfg.TRAINER.PROMPTSRC, trainer.model.clip_model
    with torch.no_grad():
        zs_image = _n(clip_model.encode_image(batch["img"]).float())
    mean = torch.stack([_text(clip_model, trainer.classnames, t) for t in PROMPTSRC_TEMPLATES]).mean(0)
    zs_text = _n(mean)
    zs_logits = out.logit_scale.float() * zs_image @ zs_text.t()
    text = m.TEXT_LOSS_WEIGHT * (out.text_features.float() - zs_text).abs().mean()
    image = m.IMAGE_LOSS_WEIGHT * (out.image_features.float() - zs_image).abs().mean()
    kl = _kl_sum(zs_logits, out.logits) / out.logits.numel()
    return {"loss": _ce(out, batch) + text + image + kl, "text": text, "image": image, "kl": kl}


def caspl(trainer, batch, out):
    """KL(teacher || student) summed, x T^2, / B; the teacher's logits use the student's logit scale and the
    dataset's template (Wu et al. 2024; the fork's loss)."""
    t = float(trainer.cfg.KD.TEMPERATURE)
    teacher = next(iter(trainer.model.teachers.values()))
    size = teacher.visual.input_resolution
    image = F.interpolate(batch["img"], size=(size, size), mode="bicubic", align_corners=False) \
        if batch["img"].shape[-1] != size else batch["img"]
    with torch.no_grad():
        feats = _n(teacher.encode_image(image).float())
    logits = out.logit_scale.float() * feats @ _n(_text(teacher, trainer.classnames, EUROSAT)).t()
    return {"loss": _kl_sum(logits, out.logits, t) * t * t / out.logits.shape[0]}


def promptkd(trainer, batch, out):
    """KD_WEIGHT * T^2 * sum KL(teacher || student) / (B C) (Li et al. 2024; the reference divides by B x C)."""
    m = trainer.cfg.TRAINER.PROMPTKD
    t = float(m.TEMPERATURE)
    teacher = trainer.model.teachers["teacher"]
    with torch.no_grad():
        feats = _n(teacher.encode_image(batch["img"], teacher.prompt_learner()).float())
    logits = teacher.clip_model.logit_scale.exp().float() * feats @ trainer.model.class_features.float().t()
    return {"loss": float(m.KD_WEIGHT) * t * t * _kl_sum(logits, out.logits, t) / out.logits.numel()}


def with_dept(base):
    """DePT on a method (Zhang et al. 2024, the fork's ``elp_*`` trainers): (1 - lambda) CE(method) + lambda
    CE(linear head on FiLM'd features of the 2B batch: each image and its label's text) + the method's other
    terms."""
    def loss(trainer, batch, out):
        ref = base(trainer, batch, out)
        lam = float(trainer.cfg.TRAINER.LINEAR_PROBE.WEIGHT)
        dept = trainer.model.prompt_learner.dept
        label = batch["label"]
        text = out.text_embeds.float()
        text = text[torch.arange(len(label)), label] if text.dim() == 3 else text[label]
        image = out.image_embeds.float()
        feats = torch.cat([dept.film_text.scale * text + dept.film_text.bias,
                           dept.film_image.scale * image + dept.film_image.bias])
        head = F.cross_entropy(feats @ dept.head.weight.t() + dept.head.bias, torch.cat([label, label]))
        ce = _ce(out, batch)
        return {**ref, "loss": ref["loss"] - ce + (1 - lam) * ce + lam * head, "head": head}

    return loss


REFERENCE_LOSSES = {
    "CoOp": cross_entropy_only, "CoCoOp": cross_entropy_only, "VPT": cross_entropy_only, "IVLP": cross_entropy_only,
    "MaPLe": cross_entropy_only, "MPL": cross_entropy_only, "KgCoOp": kgcoop, "TCP": tcp, "ProGrad": prograd,
    "PromptSRC": promptsrc, "CasPL": caspl, "PromptKD": promptkd, "MMA": cross_entropy_only,
    "CLIPLoRA": clip_lora, "MMRL": mmrl,
}

#: options that switch a method's regularisers off, and the loss it must then equal (on the same output)
WITHOUT_REGULARISERS = {
    "KgCoOp": (["TRAINER.KGCOOP.W", "0.0"], cross_entropy_only),
    "TCP": (["TRAINER.TCP.KG_WEIGHT", "0.0"], cross_entropy_only),
}
