"""open_clip's checkpoints of OpenAI-architecture CLIPs (LAION-2B, DataComp ViT-B/32, B/16, L/14).

open_clip (mlfoundations/open_clip) trains models of OpenAI's architecture whose state dicts use OpenAI's flat
key names (``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``, ...), so they load
into :class:`clip.CLIP` unchanged. What differs, and cannot be read from the weights, is registered per
checkpoint here:

- the MLP activation: exact GELU (``nn.GELU``) for open_clip's own models, QuickGELU for OpenAI's;
- the preprocessing: mean/std (OpenAI's for most, ``(0.5, 0.5, 0.5)`` for LAION's ViT-L/14), interpolation and
  resize mode; the input size is read from the checkpoint, as for every model.

Names are ``<open_clip architecture>:<pretrained tag>``, e.g. ``clip.load("ViT-B-16:laion2b_s34b_b88k")`` or
``MODEL.BACKBONE.NAME ViT-B-16:laion2b_s34b_b88k``. The weights come from the Hugging Face hub: with
``huggingface_hub`` installed, through it into the Hugging Face cache that other tools share (a revision and a
token can be given, see :mod:`clip.hf_hub`); without it, downloaded from ``$HF_ENDPOINT`` (default
``https://huggingface.co``, read when this module is imported) into the CLIP cache under a name of their own.
The hub publishes no SHA256 that open_clip records, so none is checked (give one with :func:`register_openclip`
to check it). Training checkpoints of open_clip (``{"state_dict": {"module.…"}}``)
load too: :func:`convert_state_dict` strips the ``module.`` prefix of distributed training.

Not registered: the architectures whose attention head width is not 64 (ViT-H/14: 80, ViT-g/14 and bigG/14),
since :class:`clip.CLIP` follows OpenAI's one-head-per-64-channels rule, and the non-OpenAI architectures
(SigLIP, CoCa, ConvNeXt, EVA).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from torch import Tensor

from .pretrained import register_pretrained
from .transforms import OPENAI_MEAN, OPENAI_STD

__all__ = ["OPENCLIP_MODELS", "register_openclip", "convert_state_dict", "hub_url", "INCEPTION_MEAN",
           "INCEPTION_STD"]

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
HUB_FILE = "open_clip_pytorch_model.bin"

#: name -> (Hugging Face repository, options); every one is an OpenAI-architecture CLIP with GELU
OPENCLIP_MODELS: Dict[str, tuple] = {
    "ViT-B-32:laion2b_s34b_b79k": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {}),
    "ViT-B-32:datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", {}),
    "ViT-B-16:laion2b_s34b_b88k": ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", {}),
    "ViT-B-16:datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", {}),
    "ViT-L-14:laion2b_s32b_b82k": ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
                                   {"mean": INCEPTION_MEAN, "std": INCEPTION_STD}),
    "ViT-L-14:datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", {}),
}


def hub_url(repo: str, filename: str = HUB_FILE, endpoint: Optional[str] = None, revision: Optional[str] = None) -> str:
    """The download URL of ``filename`` in the hub repository ``repo`` (``revision``, default the main branch)."""
    base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{base}/{repo}/resolve/{revision or 'main'}/{filename}"


def register_openclip(name: str, repo: str, *, activation: str = "gelu", mean: Sequence[float] = OPENAI_MEAN,
                      std: Sequence[float] = OPENAI_STD, interpolation: str = "bicubic",
                      resize_mode: str = "shortest", sha256: Optional[str] = None, endpoint: Optional[str] = None,
                      filename: str = HUB_FILE, revision: Optional[str] = None) -> None:
    """Register an open_clip checkpoint (a hub repository holding ``filename``) under ``name`` for clip.load;
    ``revision`` pins a branch, tag or commit (through ``huggingface_hub``, or in the downloader's URL)."""
    cache_name = "open_clip-" + name.replace("/", "-").replace(":", "-") + os.path.splitext(filename)[1]
    register_pretrained(name, url=hub_url(repo, filename, endpoint, revision), sha256=sha256, filename=cache_name,
                        options={"activation": activation, "mean": tuple(mean), "std": tuple(std),
                                 "interpolation": interpolation, "resize_mode": resize_mode},
                        hub=(repo, filename, revision, endpoint))


def convert_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An open_clip (or OpenAI) state dict in OpenAI's key names: strips ``module.`` (DDP training checkpoints).

    Any other state dict is returned as it is.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


for _name, (_repo, _options) in OPENCLIP_MODELS.items():
    register_openclip(_name, _repo, **_options)
