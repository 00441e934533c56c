"""MMA (Yang et al., CVPR 2024), Multi-Modal Adapter: residual adapters in the upper blocks of both encoders, with
a layer shared between them.

Reference behaviour (ZjjConan/Multi-Modal-Adapter, trainer ``MultiModalAdapter``; facts in
``shared/reference/methods-wave3.md``):

* at every block ``ADAPTER_START .. ADAPTER_END`` (1-based, 5..12 at ViT-B/16) of both encoders, a branch reads the
  block's own frozen ``ln_1`` of its input and adds ``ADAPTER_SCALE * up(shared(down(x)))`` to the block's output
  (after the MLP residual): ``down`` Linear D -> 32 + ReLU and ``up`` Linear 32 -> D per encoder, ``shared``
  Linear 32 -> 32 + ReLU, one module used by both encoders at that block. Kaiming-normal (fan_out, relu) weights,
  zero biases. 8 x 84,320 = 674,560 learnable parameters at ViT-B/16;
* the reference's gradient-scale layers (identity forward) scale the gradient entering the branch's input by
  ``s`` and the one entering its output by ``1/s`` (``s = ADAPTER_SCALE``): the trunk gets the true gradient of the
  scaled branch, and the adapters the gradient of an unscaled one, 1000x (:class:`GradScale`);
* fixed text "a photo of a {class}." for every dataset, no learned context; logits ``logit_scale.exp() * cos``;
  loss plain cross-entropy; the same forward on new classes;
* SGD lr 0.0015, 5 epochs, batch 16 (ImageNet 128), no warm-up, amp.

Here the adapters are :class:`clip.Branch` block operations of the prompt learner's :class:`~trainers.prompts.Prompts`
(no copy of CLIP's blocks); their weights are fp32 master weights in every precision (the reference makes them fp16
under ``PREC fp16``). Beside a frozen prompt set (CasPL's boosting prompts) the adapters act on its tokens too.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import clip

from .base import PromptTrainer
from .compat import UserError
from .config import check_range
from .prompts import ClassPrompts, Prompts, encoder_dims
from .registry import Count, register_method


def mma_keys(c):
    c.TEXT_CTX_INIT = "a photo of a"  # the fixed text before the class name
    c.ADAPTER_START = 5  # first adapted block (1-based)
    c.ADAPTER_END = 12  # last adapted block (1-based)
    c.ADAPTER_DIM = 32  # bottleneck width (the shared layer is DIM -> DIM)
    c.ADAPTER_SCALE = 0.001  # factor on the branch output; the adapters' gradients are scaled by its inverse


class GradScale(torch.autograd.Function):
    """Identity in forward; multiplies the gradient by ``scale`` in backward (the reference's gradient-scale
    layer)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


class AdapterBranch(nn.Module):
    """One encoder's adapter at one block, as a token-wise function for :class:`clip.Branch`:
    ``x -> up(relu(shared(relu(down(x)))))`` in fp32, with the gradient-scale layers around it
    (``grad_scale = ADAPTER_SCALE``; 1 turns them off). Input and output ``(..., D)``."""

    def __init__(self, down: nn.Linear, shared: nn.Linear, up: nn.Linear, grad_scale: float):
        super().__init__()
        self.down, self.shared, self.up = down, shared, up
        self.grad_scale = float(grad_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.grad_scale
        h = GradScale.apply(x, s) if s != 1 else x
        h = h.to(self.down.weight.dtype)
        h = self.up(torch.relu(self.shared(torch.relu(self.down(h)))))
        return GradScale.apply(h, 1.0 / s) if s != 1 else h


class MultiModalAdapter(nn.Module):
    """MMA's learner: the adapters and the fixed class prompts.

    Parameters (by 1-based block ``l`` in ``START .. END``): ``text_adapter.l.{down,up}`` (Dt -> dim -> Dt),
    ``visual_adapter.l.{down,up}`` (Dv -> dim -> Dv), ``shared_adapter.l`` (dim -> dim).
    ``forward()``: :class:`Prompts` with the class prompts and a :class:`clip.Branch` on ``ln_1`` at each adapted
    block of each encoder.
    """

    def __init__(self, c, classnames, clip_model, key: str = "TRAINER.MMA"):
        super().__init__()
        dims = encoder_dims(clip_model, need_vit=key)
        start, end, dim = int(c.ADAPTER_START), int(c.ADAPTER_END), int(c.ADAPTER_DIM)
        depth = min(dims.text_layers, dims.vision_layers)
        if not 1 <= start <= end <= depth:
            raise UserError(f"{key}: ADAPTER_START {start} and ADAPTER_END {end} must satisfy 1 <= START <= END <= "
                            f"{depth} (the blocks of the encoders, 1-based)")
        self.layers = list(range(start, end + 1))
        self.scale = float(c.ADAPTER_SCALE)
        self.class_prompts = ClassPrompts(clip_model, classnames, " ".join(str(c.TEXT_CTX_INIT).split()), 0)

        def pair(width):
            return nn.ModuleDict({"down": _linear(width, dim), "up": _linear(dim, width)})

        self.text_adapter = nn.ModuleDict({str(layer): pair(dims.text_width) for layer in self.layers})
        self.visual_adapter = nn.ModuleDict({str(layer): pair(dims.vision_width) for layer in self.layers})
        self.shared_adapter = nn.ModuleDict({str(layer): _linear(dim, dim) for layer in self.layers})
        self.n_text_layers, self.n_vision_layers = dims.text_layers, dims.vision_layers
        print(f'Text: "{self.class_prompts.texts[0]}"; adapters (dim {dim}, scale {self.scale}) at blocks '
              f"{start}-{end} of both encoders")

    def block_ops(self, adapters: nn.ModuleDict, n_layers: int, grad_scale: bool = True):
        ops = [None] * n_layers
        for layer in self.layers:
            a = adapters[str(layer)]
            fn = AdapterBranch(a["down"], self.shared_adapter[str(layer)], a["up"],
                               self.scale if grad_scale else 1.0)
            ops[layer - 1] = clip.BlockOp(branches=(clip.Branch(fn, scale=self.scale, reads="ln_1"),))
        return ops

    def forward(self) -> Prompts:
        return Prompts(text_ids=self.class_prompts.token_ids,
                       text_block_ops=self.block_ops(self.text_adapter, self.n_text_layers),
                       vision_block_ops=self.block_ops(self.visual_adapter, self.n_vision_layers))


@register_method(keys=mma_keys, config_dir="MMA", learner="adapter_learner",
                 scripts={"base2new": "vit_b16_ep5", "crossdataset": "vit_b16_ep5_imnet", "fewshot": "vit_b16_ep5",
                          "base2new@imagenet": "vit_b16_ep5_imnet", "fewshot@imagenet": "vit_b16_ep5_imnet"},
                 counts=[Count("vit_b16_ep5", 674_560)])
class MMA(PromptTrainer):
    """``--trainer MMA``, config block ``TRAINER.MMA`` (the reference's ``TRAINER.MMADAPTER`` keys)."""

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        c = cfg.TRAINER.MMA
        for key in ("ADAPTER_START", "ADAPTER_END", "ADAPTER_DIM"):
            check_range(c[key], f"TRAINER.MMA.{key}", 1, None, integer=True)
        check_range(c.ADAPTER_SCALE, "TRAINER.MMA.ADAPTER_SCALE", 1e-12, None, what=" (a positive factor)")

    def build_prompt_learner(self, cfg, classnames, clip_model):
        return MultiModalAdapter(self.method_cfg, classnames, clip_model)
