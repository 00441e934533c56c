"""Tiny CLIP models built from the real architecture, for fast CPU tests.

- ``tiny_config(kind="vit"|"resnet", **overrides)``: ``CLIP(**cfg)`` arguments. Widths are 64 (OpenAI's rule gives
  one head per 64 channels, and ``build_model`` infers heads that way), 2 layers, 32-pixel images, the real
  49408-token vocabulary (so the real tokenizer works), embed dim 32.
- ``make_tiny_clip(kind, seed, **overrides)``: a deterministic random model in eval mode, fp32. Unlike a freshly
  initialised CLIP, every LayerNorm, BatchNorm and bias holds non-trivial values, so tests see every parameter.
- ``write_tiny_checkpoint(path, kind, seed, torchscript=False)``: the same model saved in OpenAI's format, a
  plain state dict or a TorchScript archive whose ``state_dict()`` has OpenAI's keys.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import torch
from torch import nn

import clip

__all__ = ["tiny_config", "make_tiny_clip", "write_tiny_checkpoint"]

_VIT = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)
_RESNET = dict(_VIT, vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=None)


def tiny_config(kind: str = "vit", **overrides) -> dict:
    """``CLIP(**cfg)`` arguments of a tiny model; ``transformer_heads`` follows ``transformer_width // 64``."""
    if kind not in ("vit", "resnet"):
        raise ValueError(f"kind must be 'vit' or 'resnet', got {kind!r}")
    cfg = dict(_VIT if kind == "vit" else _RESNET)
    cfg.update(overrides)
    if "transformer_heads" not in overrides:
        cfg["transformer_heads"] = max(1, cfg["transformer_width"] // 64)
    return cfg


@torch.no_grad()
def _perturb(model: nn.Module, generator: torch.Generator) -> None:
    """Give norms, biases and BatchNorm statistics non-default values (deterministically)."""
    def noise(t: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator) * scale

    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            module.weight.copy_(1.0 + noise(module.weight, 0.1))
            module.bias.copy_(noise(module.bias, 0.1))
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(noise(module.running_mean, 0.1))
            module.running_var.copy_(1.0 + torch.rand(module.running_var.shape, generator=generator) * 0.5)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.copy_(noise(module.bias, 0.02))
    for name, param in model.named_parameters():
        if name.endswith("attn.in_proj_bias"):
            param.copy_(noise(param, 0.02))


def make_tiny_clip(kind: str = "vit", seed: int = 0, **overrides) -> "clip.CLIP":
    """A deterministic tiny CLIP (fp32, eval mode)."""
    cfg = tiny_config(kind, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.CLIP(**cfg)
    generator = torch.Generator().manual_seed(seed + 1)
    _perturb(model, generator)
    return model.eval()


def write_tiny_checkpoint(path: Union[str, Path], kind: str = "vit", seed: int = 0, torchscript: bool = False,
                          **overrides) -> Path:
    """Save ``make_tiny_clip(kind, seed, **overrides)`` to ``path`` in OpenAI's format; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = make_tiny_clip(kind, seed, **overrides)
    if not torchscript:
        torch.save(model.state_dict(), path)
        return path
    model.text_truncation = False  # keep the traced graph free of data-dependent sizes
    res = model.visual.input_resolution
    image = torch.zeros(1, 3, res, res)
    text = clip.tokenize(["a"], context_length=model.context_length)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings, and TorchScript's deprecation notice
        traced = torch.jit.trace(model, (image, text), check_trace=False)
    traced.save(str(path))
    return path
