"""CLIP for prompt learning: OpenAI's architecture and checkpoints, plus per-layer token operations.

>>> import clip
>>> model, preprocess = clip.load("ViT-B/16", device="cpu")          # doctest: +SKIP
>>> ops = [clip.LayerOp(add=prompt)]                                # VPT-shallow: one op before layer 0
>>> features = model.encode_image(images, ops=ops)                   # doctest: +SKIP

Nothing method-specific lives here; methods are schedules of :class:`LayerOp` (see :mod:`clip.ops`).
"""
from .checkpoint import load, read_state_dict
from .configs import MODEL_CONFIGS, create_model, model_config
from .download import DownloadError
from .model import CLIP, ModifiedResNet, Transformer, VisionTransformer, build_model, config_from_state_dict
from .openclip import register_openclip
from .ops import BlockOp, Branch, LayerOp, LayoutTrace, LowRank, compose, merge_block_ops
from .precision import MASTER_DTYPE, PRECISIONS, Precision, resolve_precision
from .pretrained import available_models, cache_dir, pretrained_options, register_pretrained
from .tokenization import DEFAULT_CONTEXT_LENGTH, tokenize, tokenizer
from .transforms import image_transform

__all__ = [
    "load", "read_state_dict", "available_models", "register_pretrained", "register_openclip", "pretrained_options",
    "cache_dir", "DownloadError",
    "build_model", "config_from_state_dict", "model_config", "create_model", "MODEL_CONFIGS",
    "CLIP", "VisionTransformer", "ModifiedResNet", "Transformer", "LayerOp", "LayoutTrace", "compose",
    "BlockOp", "Branch", "LowRank", "merge_block_ops",
    "tokenize", "tokenizer", "DEFAULT_CONTEXT_LENGTH", "image_transform",
    "Precision", "resolve_precision", "PRECISIONS", "MASTER_DTYPE",
]
