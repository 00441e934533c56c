"""MMRL (Guo & Gu, CVPR 2025), Multi-Modal Representation Learning: representation tokens from a shared learned
space, inserted at a middle block of both encoders, with a second head on the image side.

Reference behaviour (yunncheng/MMRL, trainer ``MMRL``; facts in ``shared/reference/methods-wave3.md``):

* learned: the representation space R ``(K=5, REP_DIM)`` (N(0, 0.02)); per layer of ``REP_LAYERS`` (6..12,
  1-based) a Linear REP_DIM -> 768 (vision) and REP_DIM -> 512 (text), each list started as copies of one
  default-initialised Linear; ``proj_rep`` ``(768, 512)`` N(0, 1/768) (random: not CLIP's ``proj``). 4,992,256
  parameters at ViT-B/16 (EuroSAT's REP_DIM 2048: 18,762,496);
* at the first layer of ``REP_LAYERS`` the K projected tokens are inserted (vision: beside CLS, text: right after
  SOS, so EOT moves by K and the word tokens see them under the causal mask); at the later layers they are
  overwritten by that layer's projection. Here: ``clip.LayerOp`` ``add`` then ``replace``;
* three features: CLS -> ln_post -> the frozen ``proj`` (f_cls), the K tokens -> ln_post -> mean -> ``proj_rep``
  (f_rep, from ``encode_image(..., prompt_tokens=True)``), text EOT (t); logits ``100 * cos``, fused as
  ``ALPHA * cls + (1 - ALPHA) * rep`` (ALPHA 0.7);
* loss ``ALPHA CE(cls) + (1 - ALPHA) CE(rep) + lambda (1 - mean cos(f_cls, f_cls_zs)) + lambda (1 - mean cos(t,
  t_zs))``, f_zs the frozen CLIP's image features of the same batch, t_zs its features of the dataset's template
  (which is also the text input); lambda = ``REG_WEIGHT`` from the per-dataset table, which overrides the yaml
  (:data:`DATASET_TABLE`; the cross-dataset config turns the table off and uses 0.2);
* evaluation: fused logits on the classes the tokens were trained on, the class-token logits elsewhere (new
  classes, other datasets, ImageNet's variants);
* AdamW lr 1e-3, wd 5e-4, cosine, warm-up 1 epoch at 1e-5 (none for cross-dataset), random-resized-crop scale
  (0.5, 1), amp; base-to-new 10 epochs batch 4, few-shot 50 epochs batch 32, ImageNet 5 epochs batch 32,
  cross-dataset 1 epoch batch 32.

Differences: the reference decides which logits to evaluate from ``TASK`` on the command line (and the dataset's
name); here the checkpoint records the dataset and classes the tokens were trained on, and fused logits are used
exactly when a run evaluates those (the same choice for base-to-new, few-shot and cross-dataset, without a
``TASK`` key). The zero-shot teacher is the run's own frozen CLIP, not a second copy.
"""
from __future__ import annotations

import copy
import json
from typing import Dict, Tuple

import torch
import torch.nn as nn

import clip
from clip import MASTER_DTYPE, LayerOp

from .base import LossOutput, PromptTrainer, cross_entropy
from .compat import UserError
from .config import check_range
from .prompted_clip import ModelOutput, PromptedCLIP, normalise
from .prompts import Prompts, encoder_dims
from .registry import Count, register_method
from .templates import dataset_template, zeroshot_text_features

#: the reference's fixed logit scale
LOGIT_SCALE = 100.0
#: cfg.DATASET.NAME -> (REG_WEIGHT, REP_DIM or None): the reference's per-dataset table, applied over the yaml
DATASET_TABLE: Dict[str, Tuple[float, object]] = {
    "StanfordCars": (7.0, None), "FGVCAircraft": (6.0, None), "SUN397": (6.0, None),
    "DescribableTextures": (6.0, None), "Food101": (5.0, None), "OxfordFlowers": (4.0, None), "UCF101": (3.0, None),
    "ImageNet": (0.5, None), "Caltech101": (0.5, None), "OxfordPets": (0.2, None), "EuroSAT": (0.01, 2048),
}


def mmrl_keys(c):
    c.ALPHA = 0.7  # weight of the class-token head in the loss and the fused logits
    c.REG_WEIGHT = 1.0  # lambda of the two consistency terms (the dataset table overrides it, see DATASET_TABLE)
    c.N_REP_TOKENS = 5  # K
    c.REP_LAYERS = [6, 7, 8, 9, 10, 11, 12]  # 1-based blocks: tokens inserted at the first, replaced at the others
    c.REP_DIM = 512  # width of the representation space (the dataset table overrides it)
    c.DATASET_TABLE = True  # apply the reference's per-dataset REG_WEIGHT/REP_DIM; False: the yaml's values


def settings(cfg) -> Tuple[float, int]:
    """(REG_WEIGHT, REP_DIM) of a run: the dataset table's over the yaml's when ``DATASET_TABLE`` is on."""
    c = cfg.TRAINER.MMRL
    weight, dim = float(c.REG_WEIGHT), int(c.REP_DIM)
    if c.DATASET_TABLE and cfg.DATASET.NAME in DATASET_TABLE:
        weight, table_dim = DATASET_TABLE[cfg.DATASET.NAME]
        dim = int(table_dim or dim)
    return weight, dim


class TrainedOn(nn.Module):
    """The dataset and classes the representation tokens were trained on, saved in the checkpoint
    (``_extra_state``) and, unlike the class record, restored by loading: it decides which logits evaluate."""

    def __init__(self, dataset: str, classnames):
        super().__init__()
        self.dataset, self.classnames = str(dataset), [str(c) for c in classnames]

    def get_extra_state(self):
        return {"dataset": self.dataset, "classnames": json.dumps(self.classnames)}

    def set_extra_state(self, state):
        if isinstance(state, dict) and "dataset" in state:
            self.dataset, self.classnames = state["dataset"], json.loads(state["classnames"])


class RepresentationLearner(nn.Module):
    """MMRL's learner: the representation space, its per-layer projections, ``proj_rep`` and the class prompts.

    Parameters: ``compound_rep_tokens`` (K, R); ``compound_rep_tokens_r2vproj.j`` Linear R -> Dv and
    ``compound_rep_tokens_r2tproj.j`` Linear R -> Dt for the j-th layer of ``REP_LAYERS``; ``proj_rep`` (Dv, E).
    ``forward()``: :class:`Prompts` with the class prompts (the dataset's template) and the token ops.
    """

    def __init__(self, cfg, classnames, clip_model, key: str = "TRAINER.MMRL"):
        super().__init__()
        c = cfg.TRAINER.MMRL
        dims = encoder_dims(clip_model, need_vit=key)
        _, rep_dim = settings(cfg)
        layers = [int(x) for x in c.REP_LAYERS]
        depth = min(dims.text_layers, dims.vision_layers)
        if not layers or layers != sorted(set(layers)) or not 1 <= layers[0] <= layers[-1] <= depth:
            raise UserError(f"{key}.REP_LAYERS {list(c.REP_LAYERS)} must be increasing 1-based blocks between 1 and "
                            f"{depth} (the blocks of the encoders)")
        self.layers, self.n_tokens = layers, int(c.N_REP_TOKENS)
        self.n_text_layers, self.n_vision_layers = dims.text_layers, dims.vision_layers
        template = dataset_template(cfg.DATASET.NAME)
        ids = clip.tokenize([template.format(n.replace("_", " ")) for n in classnames],
                            context_length=clip_model.context_length)
        self.register_buffer("token_ids", ids.to(clip_model.token_embedding.weight.device), persistent=False)
        self.compound_rep_tokens = nn.Parameter(torch.empty(self.n_tokens, rep_dim).normal_(std=0.02))
        r2v, r2t = nn.Linear(rep_dim, dims.vision_width), nn.Linear(rep_dim, dims.text_width)
        self.compound_rep_tokens_r2vproj = nn.ModuleList([copy.deepcopy(r2v) for _ in layers])
        self.compound_rep_tokens_r2tproj = nn.ModuleList([copy.deepcopy(r2t) for _ in layers])
        width, embed = dims.vision_width, int(clip_model.visual.output_dim)
        self.proj_rep = nn.Parameter(torch.empty(width, embed).normal_(std=width ** -0.5))
        self.trained_on = TrainedOn(cfg.DATASET.NAME, classnames)
        print(f'Text: "{template.format(classnames[0])}"; {self.n_tokens} representation tokens (dim {rep_dim}) '
              f"from block {layers[0]} to {layers[-1]} of both encoders")

    def ops(self, projections: nn.ModuleList, n_layers: int):
        ops = [None] * n_layers
        for j, layer in enumerate(self.layers):
            tokens = projections[j](self.compound_rep_tokens)
            ops[layer - 1] = LayerOp(add=tokens) if j == 0 else LayerOp(replace=tokens)
        return ops

    def forward(self) -> Prompts:
        return Prompts(text_ids=self.token_ids, text_ops=self.ops(self.compound_rep_tokens_r2tproj, self.n_text_layers),
                       vision_ops=self.ops(self.compound_rep_tokens_r2vproj, self.n_vision_layers))


class RepresentationCLIP(PromptedCLIP):
    """The prompted CLIP with MMRL's second head: ``out.logits`` are the fused logits; ``extras`` hold
    ``logits_cls`` and ``logits_rep`` (B, C) and ``rep_features`` (B, E), normalised."""

    alpha: float = 0.7

    def forward(self, image: torch.Tensor) -> ModelOutput:
        prompts = self._cached_prompts
        if prompts is None or torch.is_grad_enabled():
            prompts = self.prompts()
        text_raw, text = self.text_features(prompts)
        image_raw, tokens = self.clip_model.encode_image(image, ops=prompts.vision_ops, prompt_tokens=True)
        n = self.prompt_learner.n_tokens  # the learner's tokens are the segment's last (after any frozen set's)
        rep = tokens[:, -n:].mean(dim=1) @ self.prompt_learner.proj_rep.to(tokens.dtype)
        image_features, rep_features = normalise(image_raw), normalise(rep)
        scale = torch.tensor(LOGIT_SCALE, device=image.device)
        logits_cls = scale * image_features @ text.t()
        logits_rep = scale * rep_features @ text.t()
        logits = self.alpha * logits_cls + (1 - self.alpha) * logits_rep
        return ModelOutput(logits, image_features, text, scale, prompts, image_embeds=image_raw, text_embeds=text_raw,
                           extras={"logits_cls": logits_cls, "logits_rep": logits_rep, "rep_features": rep_features})


@register_method(keys=mmrl_keys, config_dir="MMRL", learner="MultiModalRepresentationLearner",
                 scripts={"base2new": "vit_b16", "base2new@imagenet": "vit_b16_imagenet",
                          "fewshot": "vit_b16_few_shot", "fewshot@imagenet": "vit_b16_imagenet",
                          "crossdataset": "vit_b16_cross_datasets"},
                 counts=[Count("vit_b16", 4_992_256), Count("vit_b16", 18_762_496, opts=("DATASET.NAME", "EuroSAT"))])
class MMRL(PromptTrainer):
    """``--trainer MMRL``, config block ``TRAINER.MMRL``."""

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        c = cfg.TRAINER.MMRL
        check_range(c.ALPHA, "TRAINER.MMRL.ALPHA", 0, 1)
        check_range(c.REG_WEIGHT, "TRAINER.MMRL.REG_WEIGHT", 0, None)
        check_range(c.N_REP_TOKENS, "TRAINER.MMRL.N_REP_TOKENS", 1, None, integer=True)
        check_range(c.REP_DIM, "TRAINER.MMRL.REP_DIM", 1, None, integer=True)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return RepresentationLearner(cfg, classnames, clip_model)

    def build_clip_model(self, cfg, classnames, clip_model):
        learner = self.build_prompt_learner(cfg, classnames, clip_model)
        sets, text_order, vision_order = self.frozen_sets(cfg, classnames, clip_model)
        model = RepresentationCLIP(clip_model, learner, sets, text_order=text_order, vision_order=vision_order)
        model.alpha = float(self.method_cfg.ALPHA)
        template = dataset_template(cfg.DATASET.NAME)
        # t_zs, from the fp32 frozen CLIP before the run's precision is applied; not saved in checkpoints
        model.register_buffer("anchor", zeroshot_text_features(clip_model, classnames, [template]), persistent=False)
        weight, dim = settings(cfg)
        self.result_extras()["mmrl"] = {"reg_weight": weight, "rep_dim": dim}
        table = self.method_cfg.DATASET_TABLE and cfg.DATASET.NAME in DATASET_TABLE
        print(f"MMRL: REG_WEIGHT {weight}, REP_DIM {dim}{' (the dataset table)' if table else ''}")
        return model

    def loss(self, batch, out):
        label, alpha = batch["label"], float(self.method_cfg.ALPHA)
        weight, _ = settings(self.cfg)
        ce_cls = cross_entropy(out.extras["logits_cls"], label)
        ce_rep = cross_entropy(out.extras["logits_rep"], label)
        with torch.no_grad():
            zs = normalise(self.model.clip_model.encode_image(batch["img"]).to(MASTER_DTYPE))
        image_reg = weight * (1 - (out.image_features.to(MASTER_DTYPE) * zs).sum(-1).mean())
        text_reg = weight * (1 - (out.text_features.to(MASTER_DTYPE) * self.model.anchor.to(MASTER_DTYPE))
                             .sum(-1).mean())
        loss = alpha * ce_cls + (1 - alpha) * ce_rep + image_reg + text_reg
        return LossOutput(loss, out.logits, terms={"cls": ce_cls, "rep": ce_rep, "image_reg": image_reg,
                                                   "text_reg": text_reg})

    def uses_fused_logits(self) -> bool:
        """Fused logits exactly when the run evaluates the dataset and classes the tokens were trained on."""
        record = self.model.prompt_learner.trained_on
        return record.dataset == self.cfg.DATASET.NAME and record.classnames == list(self.classnames)

    def eval_logits(self, out):
        return out.logits if self.uses_fused_logits() else out.extras["logits_cls"]
