"""Architecture hyper-parameters of OpenAI's released CLIP models, as data, and the model factory.

``create_model("ViT-B/16", device="meta")`` builds a full-size model without allocating memory (parameter
counts, sequence lengths, shapes). Weights come from :func:`clip.load`.
"""
from __future__ import annotations

import copy
from typing import Dict, Mapping, Union

import torch

from .model import CLIP

__all__ = ["model_config", "create_model", "MODEL_CONFIGS"]


def _text(width: int, layers: int = 12) -> dict:
    return dict(context_length=77, vocab_size=49408, transformer_width=width, transformer_heads=width // 64,
                transformer_layers=layers)


def _vit(embed_dim: int, resolution: int, layers: int, width: int, patch: int, text_width: int) -> dict:
    return dict(embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers, vision_width=width,
                vision_patch_size=patch, **_text(text_width))


def _resnet(embed_dim: int, resolution: int, layers: tuple, width: int, text_width: int) -> dict:
    return dict(embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers, vision_width=width,
                vision_patch_size=None, **_text(text_width))


#: name -> ``CLIP(**cfg)`` arguments of the released models
MODEL_CONFIGS: Dict[str, dict] = {
    "RN50": _resnet(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _resnet(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _resnet(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _resnet(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _resnet(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768),
}


def model_config(name: str) -> dict:
    """``CLIP(**cfg)`` arguments of a released model (a copy; safe to modify)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"no architecture config for {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    return copy.deepcopy(MODEL_CONFIGS[name])


def create_model(name_or_cfg: Union[str, Mapping], device: Union[str, torch.device, None] = None) -> CLIP:
    """Build a randomly initialised CLIP from a released name or a config dict, e.g. on ``device="meta"``."""
    cfg = model_config(name_or_cfg) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    if device is None:
        return CLIP(**cfg)
    with torch.device(device):
        return CLIP(**cfg)
