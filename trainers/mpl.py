"""Modular Prompt Learning (MPL): deep prompts that are *added*, *removed* and *carried* at every layer.

Reference behaviour (``TRAINER.MPL`` defaults, ``configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml``):

* text prompt ``"X a photo of a {class}."``; the ``N_CTX`` learned context vectors start from the embedding of
  ``"X"`` and sit right after SOS; ``"a photo of a"`` stays fixed;
* layer 0: the vision branch appends ``proj(ctx)`` (a shallow text-to-vision linear map) after the patches;
* deep layers ``l = 1 .. PROMPT_DEPTH-1``: the text branch overwrites its context with a fresh prompt ``t_l``
  (N(0, 0.02)); the vision branch removes its ``N_RM_OP`` most recently added tokens and appends
  ``N_ADD_OP`` tokens ``f_{j,l}(t_l)`` -- one affine text-to-vision map per added token -- and carries the
  rest, so the number of vision prompts grows from layer to layer (1, 2, ..., 9 on the reference setting);
* the ``N_ADD_OP x (PROMPT_DEPTH-1)`` maps start as copies of one freshly initialised map (as the reference).

Generalisations (defaults keep the reference): per-layer add/remove lists for each branch
(``VISION_ADD``/``VISION_RM``/``TEXT_ADD``/``TEXT_RM``), add/remove/carry on the text branch too
(``TEXT_MODE: modular``), the coupling function (``COUPLING``: ``affine`` per added token, ``shared`` maps
reused at every layer, or ``independent`` vision prompts with no coupling), and independently initialised maps
(``INDEPENDENT_INIT``). Impossible schedules are refused when the model is built.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from clip import LayerOp

from .base import PromptTrainer
from .compat import UserError
from .prompts import ClassPrompts, Prompts, encoder_dims
from .registry import Count, register_method

COUPLINGS = ("affine", "shared", "independent")
TEXT_MODES = ("replace", "modular")


def mpl_keys(c):
    c.N_CTX = 2  # learned context tokens (text), and text tokens per deep layer
    c.N_ADD_OP = 2  # coupling maps per deep layer; each adds N_CTX vision tokens
    c.N_RM_OP = 1  # vision prompt tokens removed per deep layer, most recently added first
    c.CTX_INIT = "a photo of a"  # fixed words after the learned context ("X ... a photo of a {class}.")
    c.PROMPT_DEPTH = 9  # layers 0 .. PROMPT_DEPTH-1 receive prompts
    # Generalisations; empty lists mean "the uniform value above at every deep layer".
    c.VISION_ADD = []  # per deep layer 1..PROMPT_DEPTH-1: coupling maps (vision tokens = maps x text tokens)
    c.VISION_RM = []  # per deep layer: vision tokens removed
    c.TEXT_MODE = "replace"  # replace (reference) or modular (add/remove/carry on the text branch)
    c.TEXT_ADD = []  # per deep layer: text tokens of the deep prompt t_l (replace mode: must equal N_CTX)
    c.TEXT_RM = []  # modular text only, per deep layer: text tokens removed; default N_RM_OP
    c.COUPLING = "affine"  # affine (one map per added token and layer), shared (per token, all layers), independent
    c.INDEPENDENT_INIT = False  # initialise every map on its own (the reference copies one map)


# ----------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Per-deep-layer operation counts of both branches, checked for feasibility.

    Index ``k`` of every list is deep layer ``l = k + 1``.
    """

    n_ctx: int
    depth: int
    text_mode: str
    text_add: List[int]  # tokens of t_l
    text_rm: List[int]  # modular mode only
    vision_maps: List[int]  # coupling maps at layer l; vision tokens added = maps * text_add
    vision_rm: List[int]

    @property
    def vision_add(self) -> List[int]:
        return [m * t for m, t in zip(self.vision_maps, self.text_add)]

    def prompt_counts(self, branch: str, n_layers: int) -> List[int]:
        """Number of prompt tokens at the input of each layer (after that layer's operation)."""
        if branch == "vision":
            adds, rms = self.vision_add, self.vision_rm
        elif self.text_mode == "modular":
            adds, rms = self.text_add, self.text_rm
        else:
            return [self.n_ctx] * n_layers
        counts, p = [], self.n_ctx
        for layer in range(n_layers):
            if 1 <= layer < self.depth:
                p = p - rms[layer - 1] + adds[layer - 1]
            counts.append(p)
        return counts


def _per_layer(values, default: int, n: int, key: str) -> List[int]:
    values = list(values)
    if not values:
        if default < 0:
            raise UserError(f"{key}'s default count is {default}; counts must not be negative")
        return [default] * n
    if len(values) != n:
        raise UserError(
            f"{key} has {len(values)} entries but PROMPT_DEPTH - 1 = {n} deep layers take operations; give one "
            f"count per deep layer (layers 1..{n}) or leave it empty"
        )
    if any(int(v) != v or v < 0 for v in values):
        raise UserError(f"{key} must hold non-negative integers, got {values}")
    return [int(v) for v in values]


def build_schedule(mcfg, n_layers: Optional[int], key: str = "TRAINER.MPL") -> Schedule:
    """Read and check the schedule of a ``TRAINER.MPL``-style config node (``key``) against an encoder depth
    (None: the config alone, before any model is loaded)."""
    n_ctx, depth = int(mcfg.N_CTX), int(mcfg.PROMPT_DEPTH)
    if n_ctx < 1:
        raise UserError(f"{key}.N_CTX must be at least 1, got {n_ctx}")
    if depth < 1 or (n_layers is not None and depth > n_layers):
        raise UserError(f"{key}.PROMPT_DEPTH must be between 1 and the encoder's "
                        f"{n_layers if n_layers is not None else 'number of'} layers, got {depth}")
    if mcfg.TEXT_MODE not in TEXT_MODES:
        raise UserError(f"{key}.TEXT_MODE is {mcfg.TEXT_MODE!r}; choose one of {', '.join(TEXT_MODES)}")
    if mcfg.COUPLING not in COUPLINGS:
        raise UserError(f"{key}.COUPLING is {mcfg.COUPLING!r}; choose one of {', '.join(COUPLINGS)}")
    n = depth - 1
    text_add = _per_layer(mcfg.TEXT_ADD, n_ctx, n, f"{key}.TEXT_ADD")
    if mcfg.TEXT_MODE == "replace" and any(t != n_ctx for t in text_add):
        raise UserError(
            f"{key}.TEXT_ADD {text_add} differs from N_CTX={n_ctx}: in TEXT_MODE replace each deep text prompt "
            "overwrites the N_CTX context tokens; set TEXT_MODE modular to add and remove text tokens"
        )
    schedule = Schedule(
        n_ctx=n_ctx, depth=depth, text_mode=mcfg.TEXT_MODE, text_add=text_add,
        text_rm=_per_layer(mcfg.TEXT_RM, int(mcfg.N_RM_OP), n, f"{key}.TEXT_RM"),
        vision_maps=_per_layer(mcfg.VISION_ADD, int(mcfg.N_ADD_OP), n, f"{key}.VISION_ADD"),
        vision_rm=_per_layer(mcfg.VISION_RM, int(mcfg.N_RM_OP), n, f"{key}.VISION_RM"),
    )
    branches = ["vision"] + (["text"] if schedule.text_mode == "modular" else [])
    for branch in branches:
        adds = schedule.vision_add if branch == "vision" else schedule.text_add
        rms = schedule.vision_rm if branch == "vision" else schedule.text_rm
        p = n_ctx
        for k, (a, r) in enumerate(zip(adds, rms)):
            if r > p:
                raise UserError(
                    f"impossible MPL schedule: {branch} layer {k + 1} removes {r} prompt tokens but only {p} exist "
                    f"(the reference would silently delete {'image patch' if branch == 'vision' else 'word'} "
                    f"tokens); lower N_RM_OP / {branch.upper()}_RM or add more tokens at earlier layers"
                )
            p = p - r + a
    return schedule


# ----------------------------------------------------------------------------------------------------------
# The prompt learner
# ----------------------------------------------------------------------------------------------------------
class MultiModalPromptLearner(nn.Module):
    """Learned text prompts and the vision prompts coupled to them, for every prompted layer.

    Parameters (names follow the reference so its checkpoints load):
        ctx: (N_CTX, Dt) layer-0 text context.
        proj: Linear(Dt -> Dv), vision prompts of layer 0 from ``ctx`` (coupled modes).
        compound_prompts_text: per deep layer, (text_add_l, Dt), N(0, 0.02).
        txt2img_proj[j][l]: Linear(Dt -> Dv) adding vision tokens at deep layer l+1 (``affine``), or
            txt2img_proj[j] shared by all layers (``shared``); absent for ``independent``.
        vision_prompts: (``independent`` only) layer-0 (N_CTX, Dv) then per deep layer (tokens, Dv).

    ``forward()`` returns :class:`~trainers.prompts.Prompts` for ``C`` classes.
    """

    def __init__(self, mcfg, classnames: Sequence[str], clip_model: nn.Module, prefix: Optional[str] = None,
                 ctx_from_prefix: bool = True, key: str = "TRAINER.MPL"):
        super().__init__()
        dims = encoder_dims(clip_model, need_vit=key)
        text_width, vision_width = dims.text_width, dims.vision_width
        n_layers = min(dims.text_layers, dims.vision_layers)
        self.schedule = schedule = build_schedule(mcfg, n_layers, key)
        self.coupling = mcfg.COUPLING
        n_ctx = schedule.n_ctx

        if prefix is None:  # MPL: placeholder words, then the fixed init phrase (CTX_INIT is not learned)
            words = " ".join(str(mcfg.CTX_INIT).replace("_", " ").split())
            prefix = " ".join(["X"] * n_ctx + ([words] if words else []))
        self.class_prompts = ClassPrompts(clip_model, classnames, prefix, n_ctx)
        print(f'Initial text prompt: "{self.class_prompts.texts[0]}" ({n_ctx} learned context token(s))')
        if ctx_from_prefix:  # the embedding of the words the context replaces ("X" for MPL)
            init = self.class_prompts.init_ctx.clone()
        else:
            init = torch.empty(n_ctx, text_width).normal_(std=0.02)
        self.ctx = nn.Parameter(init)

        coupled = self.coupling != "independent"
        if coupled:
            self.proj = nn.Linear(text_width, vision_width)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(t, text_width).normal_(std=0.02)) for t in schedule.text_add]
        )
        n_deep = schedule.depth - 1
        max_maps = max(schedule.vision_maps, default=0)
        if self.coupling == "affine":
            template = nn.Linear(text_width, vision_width)

            def make():
                return nn.Linear(text_width, vision_width) if mcfg.INDEPENDENT_INIT else copy.deepcopy(template)

            self.txt2img_proj = nn.ModuleList(
                nn.ModuleList(make() if j < schedule.vision_maps[k] else nn.Identity() for k in range(n_deep))
                for j in range(max_maps)
            )
        elif self.coupling == "shared":
            template = nn.Linear(text_width, vision_width)
            self.txt2img_proj = nn.ModuleList(
                (nn.Linear(text_width, vision_width) if mcfg.INDEPENDENT_INIT else copy.deepcopy(template))
                for _ in range(max_maps)
            )
        else:
            sizes = [n_ctx] + schedule.vision_add
            self.vision_prompts = nn.ParameterList(
                [nn.Parameter(torch.empty(s, vision_width).normal_(std=0.02)) for s in sizes]
            )

    def _deep_vision_tokens(self, k: int) -> torch.Tensor:
        """Vision tokens added at deep layer ``k + 1``: (vision_add[k], Dv)."""
        if self.coupling == "independent":
            return self.vision_prompts[k + 1]
        t = self.compound_prompts_text[k]
        maps = self.schedule.vision_maps[k]
        if self.coupling == "affine":
            outs = [self.txt2img_proj[j][k](t) for j in range(maps)]
        else:
            outs = [self.txt2img_proj[j](t) for j in range(maps)]
        return torch.cat(outs, dim=0) if outs else t.new_zeros(0, self._vision_width())

    def _vision_width(self) -> int:
        if self.coupling == "independent":
            return self.vision_prompts[0].shape[1]
        return self.proj.out_features

    def forward(self) -> Prompts:
        s = self.schedule
        shallow = self.vision_prompts[0] if self.coupling == "independent" else self.proj(self.ctx)
        vision_ops: List[Optional[LayerOp]] = [LayerOp(add=shallow)]
        text_ops: List[Optional[LayerOp]] = [None]
        for k in range(s.depth - 1):
            vision_ops.append(LayerOp(remove=s.vision_rm[k], add=self._deep_vision_tokens(k)))
            t = self.compound_prompts_text[k]
            if s.text_mode == "replace":
                text_ops.append(LayerOp(replace=t))
            else:
                text_ops.append(LayerOp(remove=s.text_rm[k], add=t))
        return Prompts(
            text_ids=self.class_prompts.token_ids,
            text_embeddings=self.class_prompts.assemble(self.ctx),
            text_ops=text_ops,
            vision_ops=vision_ops,
            n_text_prompt=s.n_ctx,
        )


@register_method(
    keys=mpl_keys, learner="MultiModalPromptLearner",
    scripts={"base2new": "vit_b4_c1_add2_rm1", "crossdataset": "vit_b4_c1_add2_rm1_cross_datasets"},
    # beside frozen sets (CasPL's boosting prompts): theirs first in both encoders; MPL's add/remove/carry acts on
    # its own tokens after them (text: [SOS][boost][ctx][a photo of a][class .][EOT]; vision: [CLS][patches][boost]
    # [MPL's tokens])
    frozen_order=(("frozen", "adapt"), ("frozen", "adapt")),
    counts=[Count("vit_b4_c1_add2_rm1", 6_702_336), Count("vit_b4_c1_add2_rm1_cross_datasets", 1_971_456)],
)
class MPL(PromptTrainer):
    """Modular Prompt Learning (Huang et al.); ``--trainer MPL``, config block ``TRAINER.MPL``."""

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        build_schedule(cfg.TRAINER.MPL, None)

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return MultiModalPromptLearner(self.method_cfg, classnames, clip_model)
