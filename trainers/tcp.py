"""TCP (Yao et al., CVPR 2024): textual-based class-aware prompts, on CoOp's context.

Each class gets its own tokens, produced from the class's frozen hand-written text feature by a small network,
and written into the text sequence at a middle layer of the text encoder; a KgCoOp-style term keeps the learned
class features close to the hand-written ones. Because the tokens come from the class's text feature, classes
never seen in training (base-to-new) get their own tokens at test time.

Reference behaviour (htyao89/Textual-based_Class-aware_prompt_tuning ``trainers/tcp.py`` and
``trainers/clip_text/model.py``; facts in ``shared/reference/methods-more.md`` section 4):

* layer 0: ``[SOS][ctx_1..ctx_4][the dataset's TCP template with the class name][EOT]``
  (:data:`TCP_TEMPLATES`, e.g. Pets ``"X X X X {}, a type of pet."``; for UCF101 and ImageNet the context overwrites
  "a photo of a"); ``ctx`` N(0, 0.02) (the shipped ``CTX_INIT: False``);
* anchor: the frozen CLIP's L2-normalised text features of the dataset's anchor template (:data:`ANCHOR_TEMPLATES`,
  not KgCoOp's table), for the current classes;
* "textual knowledge embedding" ``meta_net``: Linear(E -> 128), QuickGELU, Linear(128 -> n * Dt), applied to the
  anchor and reshaped to ``(C, n, Dt)`` class-aware tokens (n = 4);
* at the input of text block 8 (0-based) the first n tokens after SOS become ``w * class tokens + (1 - w) * old``
  with w = 1.0: a per-class :class:`clip.LayerOp` replace;
* loss = CE(logits, y) + 8.0 * (1 - mean_c cos(t_c, anchor_c));
* Adam, lr 0.002, eps 1e-3, 50 epochs (25 for SUN397 and ImageNet), batch 32.

Config keys instead of the reference's constants (defaults = its values; widths read from the model):
``CLASS_TOKEN_LAYER`` (8), ``N_CLASS_TOKENS`` (4), ``W`` (1.0, the mix weight: the reference's
``TRAINER.COOP.W``, which its text encoder overwrote with a hard-coded 1.0, so this trainer honours the key and
the shipped value gives the same result), ``KG_WEIGHT`` (8.0), ``META_HIDDEN`` (128). The meta-network's input
is CLIP's embedding width (512 at ViT-B/16) and its output ``N_CLASS_TOKENS`` x the text width (4 x 512).

Differences: no second CLIP (the anchor comes from this run's frozen CLIP, in fp32, before the run's precision is
applied); the learned tensors are fp32 master weights (the reference's are fp16). Its Adam needed ``eps`` 1e-3
because fp16 parameters and moments underflow; with fp32 masters 1e-8 would be stable, but ``eps`` also sets the
step size for small gradients (it dominates ``sqrt(v)`` when gradients are below about 1e-3), so the configs keep
the authors' ``OPTIM.EPS 0.001`` to train as they did (the trainer base applies ``OPTIM.EPS`` on either engine).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from clip import MASTER_DTYPE, LayerOp
from clip.layers import QuickGELU

from .base import LossOutput, PromptTrainer, cross_entropy
from .compat import UserError
from .config import check_range, phrase_context_keys
from .kgcoop import knowledge_guided_loss
from .prompts import ClassPrompts, Prompts, context_vectors, encoder_dims, learned_context
from .registry import Count, register_method
from .templates import CUSTOM_TEMPLATES, dataset_template, zeroshot_text_features


#: the text after TCP's context slots, per dataset ("{}": the class name); others: "{}."
SUFFIXES = {
    "OxfordPets": "{}, a type of pet.",
    "OxfordFlowers": "{}, a type of flower.",
    "FGVCAircraft": "{}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "{}.",
    "StanfordCars": "{}, a type of car",  # no period, as the reference
    "Food101": "{}, a type of food.",
    "SUN397": "{}.",
    "Caltech101": "{}.",
    "UCF101": "person doing {}.",  # the context takes the place of "a photo of a"
    "ImageNet": "{}.",  # likewise
}

#: the hand-written templates of TCP's anchor (and the meta-network's input); others: the CoOp family's
ANCHOR_TEMPLATES = {
    **CUSTOM_TEMPLATES,
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of an aircraft {}.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "Food101": "a photo of a {}, a type of food.",
}


def tcp_keys(c):
    phrase_context_keys(c, n_ctx=4, ctx_init="", position=None)  # the reference's True CTX_INIT: "a photo of a"
    c.CLASS_TOKEN_LAYER = 8  # text block at whose input the class-aware tokens are written
    c.N_CLASS_TOKENS = 4  # class-aware tokens per class (they take the first positions after SOS)
    c.W = 1.0  # mix weight: tokens <- W * class tokens + (1 - W) * tokens
    c.KG_WEIGHT = 8.0  # weight of the consistency term 1 - mean_c cos(t_c, anchor_c)
    c.META_HIDDEN = 128  # hidden width of the meta-network


def split_template(template: str):
    """(words before the class name, text after it) of a TCP template such as ``"person doing {}."``."""
    if template.count("{}") != 1:
        raise ValueError(f'a TCP template needs exactly one "{{}}" for the class name, got "{template}"')
    before, after = template.split("{}")
    return before.strip(), after


class TCPPromptLearner(nn.Module):
    """CoOp's context in the dataset's TCP template, plus the meta-network that makes class-aware tokens.

    Parameters:
        ctx: (n_ctx, Dt), or (C, n_ctx, Dt) with CSC (class-dependent).
        meta_net: linear1 (E -> META_HIDDEN), relu (QuickGELU), linear2 (META_HIDDEN -> N_CLASS_TOKENS * Dt).
    Buffer (not saved): anchor (C, E), the L2-normalised hand-written class features.

    ``forward()`` returns :class:`Prompts`: text embeddings (C, L, Dt) and, at ``CLASS_TOKEN_LAYER``, a replace of
    the first ``N_CLASS_TOKENS`` context positions by per-class tokens (C, N_CLASS_TOKENS, Dt).
    """

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module, dataset_name: str,
                 key: str = "TRAINER.TCP"):
        super().__init__()
        dims = encoder_dims(clip_model)
        width, embed = dims.text_width, clip_model.text_projection.shape[1]
        prefix, n_ctx, from_phrase = learned_context(mcfg.CTX_INIT, mcfg.N_CTX, key, rule="phrase")
        before, after = split_template(SUFFIXES.get(dataset_name, "{}."))
        self.n_tokens, self.layer, self.weight = int(mcfg.N_CLASS_TOKENS), int(mcfg.CLASS_TOKEN_LAYER), float(mcfg.W)
        if not 1 <= self.n_tokens <= n_ctx:
            raise UserError(f"{key}.N_CLASS_TOKENS={self.n_tokens}: the class-aware tokens replace learned context "
                            f"positions, so it must be between 1 and the {n_ctx} context vectors")
        if not 0 <= self.layer < dims.text_layers:
            raise UserError(f"{key}.CLASS_TOKEN_LAYER={self.layer} is not a text block of this CLIP "
                            f"(0 to {dims.text_layers - 1})")
        self.class_prompts = ClassPrompts(clip_model, classnames, f"{prefix} {before}".strip(), n_ctx, suffix=after)
        ctx = context_vectors(self.class_prompts, from_phrase, width, bool(mcfg.CSC))
        print(f'Initial context: "{prefix}"; prompts like "{self.class_prompts.texts[0]}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        hidden = int(mcfg.META_HIDDEN)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed, hidden)),
            ("relu", QuickGELU()),
            ("linear2", nn.Linear(hidden, self.n_tokens * width)),
        ]))
        template = dataset_template(dataset_name, ANCHOR_TEMPLATES)
        print(f'Class-aware tokens: {self.n_tokens} per class at text block {self.layer}, from "{template}"')
        # fp32, from the frozen CLIP before the run's precision is applied; recomputed for every class list
        self.register_buffer("anchor", zeroshot_text_features(clip_model, classnames, [template]), persistent=False)

    @property
    def class_dependent(self):
        return ("ctx",) if self.ctx.dim() == 3 else ()

    def class_tokens(self) -> torch.Tensor:
        """(C, N_CLASS_TOKENS, Dt) class-aware tokens of the current classes."""
        width = self.ctx.shape[-1]
        return self.meta_net(self.anchor.to(MASTER_DTYPE)).view(-1, self.n_tokens, width)

    def forward(self) -> Prompts:
        cp = self.class_prompts
        ops = [None] * self.layer + [LayerOp(replace=self.class_tokens(), replace_weight=self.weight)]
        return Prompts(text_ids=cp.token_ids, text_embeddings=cp.assemble(self.ctx), text_ops=ops,
                       n_text_prompt=cp.n_ctx)


@register_method(
    keys=tcp_keys,
    scripts={"base2new": "vit_b16_ep100_ctxv1", "fewshot": "vit_b16_ep100_ctxv1",
             "base2new@imagenet": "vit_b16_ep25_ctxv1", "base2new@sun397": "vit_b16_ep25_ctxv1"},
    counts=[Count("vit_b16_ep100_ctxv1", 331_904)],
)
class TCP(PromptTrainer):
    """``--trainer TCP``, config block ``TRAINER.TCP``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        m = cfg.TRAINER.TCP
        check_range(m.N_CLASS_TOKENS, "TRAINER.TCP.N_CLASS_TOKENS", 1, None, integer=True)
        check_range(m.CLASS_TOKEN_LAYER, "TRAINER.TCP.CLASS_TOKEN_LAYER", 0, None, integer=True)
        check_range(m.META_HIDDEN, "TRAINER.TCP.META_HIDDEN", 1, None, integer=True)
        check_range(m.W, "TRAINER.TCP.W", 0, 1)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return TCPPromptLearner(self.method_cfg, classnames, clip_model, cfg.DATASET.NAME)

    def loss(self, batch, out):
        ce = cross_entropy(out.logits, batch["label"])
        kg = self.method_cfg.KG_WEIGHT * knowledge_guided_loss(out.text_features, self.model.prompt_learner.anchor)
        return LossOutput(ce + kg, out.logits, terms={"kg": kg}, ce=ce)
