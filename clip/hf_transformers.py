"""Hugging Face ``transformers`` CLIPModel checkpoints, converted to this project's OpenAI layout.

A transformers CLIP folder (``config.json`` + ``model.safetensors``, a sharded ``model.safetensors.index.json``,
or ``pytorch_model.bin``; what ``save_pretrained`` writes and what the Hugging Face cache holds under
``snapshots/<commit>/``) is read into :class:`clip.CLIP` by renaming its tensors with the swap table
:data:`SWAPS` (timm's way: substring pairs applied once at load time) and three reshapes: the separate
``q_proj``/``k_proj``/``v_proj`` of each block are concatenated into ``in_proj_weight``/``in_proj_bias`` (in
that order), and the two projections, ``nn.Linear`` weights ``(embed, width)`` there, are transposed into
OpenAI's ``(width, embed)`` parameters. The non-persistent ``position_ids`` buffers some older files carry are
dropped. The model is then built and loaded strictly like any OpenAI checkpoint, with OpenAI's parameter names.

What the tensors do not say comes from ``config.json``:

- ``hidden_act``: ``quick_gelu`` (OpenAI's models) or ``gelu`` (exact GELU); the same in both towers;
- ``layer_norm_eps`` 1e-5 and ``num_attention_heads`` giving 64-wide heads, as :class:`clip.CLIP` builds them;
- the text tower must use CLIP's own tokenizer (``vocab_size`` 49408), and pooling must read the end-of-text
  token, which this project finds as the largest id in a row: transformers pools at the argmax of the ids when
  ``eos_token_id`` is 2 (configs written before transformers PR #24773) and at the first ``eos_token_id``
  otherwise; both are the same position for :func:`clip.tokenize`'s output when ``eos_token_id`` is 49407.

Anything else (a SigLIP or other ``model_type``, a single-tower ``CLIPVisionModel``, another activation,
80-wide heads, another vocabulary) raises :class:`~clip.checkpoint.CheckpointFileError` naming what is not
supported. ``preprocessor_config.json``, when present, gives the mean, std and interpolation of the transform.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .model import HEAD_WIDTH
from .tokenization import EOT_ID, VOCAB_SIZE

__all__ = ["SWAPS", "is_transformers_state_dict", "convert_state_dict", "check_config", "read_folder",
           "WEIGHT_FILES"]

#: what ``save_pretrained`` writes, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

#: (pattern, replacement), applied in order to every key (after q/k/v became ``self_attn.in_proj_*``)
SWAPS = (
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: transformers' name
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"\.self_attn\.in_proj_", ".attn.in_proj_"),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
#: ``nn.Linear`` weights ``(embed, width)`` there, ``(width, embed)`` parameters here
TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # transformers' name -> ours (exact GELU is "gelu")
_LEGACY_EOS = 2  # eos_token_id of configs written before transformers PR #24773: pooling at the argmax


class UnsupportedCheckpoint(ValueError):
    """A transformers checkpoint this project cannot load; the message says what is not supported."""


def is_transformers_state_dict(state_dict: Dict[str, Tensor]) -> bool:
    """Keys of transformers' CLIPModel (``text_model.*``/``vision_model.*``) rather than OpenAI's."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


def convert_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A transformers CLIPModel state dict in OpenAI's key names and shapes (see the module docstring)."""
    out: Dict[str, Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith(".position_ids"):
            continue
        match = _QKV.match(key)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        if key in TRANSPOSED:
            out[TRANSPOSED[key]] = value.t().contiguous()
            continue
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise UnsupportedCheckpoint(f"{block}.self_attn has {'/'.join(sorted(parts))}_proj.{kind} only "
                                        "(q, k and v are needed)")
        out[f"{block}.self_attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    renamed = {}
    for key, value in out.items():
        for pattern, replacement in SWAPS:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    left = sorted(k for k in renamed if k.startswith(("text_model.", "vision_model.")))
    if left:
        raise UnsupportedCheckpoint(f"tensor {left[0]} has no counterpart in OpenAI's CLIP"
                                    + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))
    return renamed


def check_config(config: dict, state_dict: Dict[str, Tensor]) -> str:
    """The activation of a transformers CLIP config; raises :class:`UnsupportedCheckpoint` for what
    :class:`clip.CLIP` cannot be (``state_dict``: the converted tensors, for the widths)."""
    kind = config.get("model_type", "clip")
    if kind != "clip":
        raise UnsupportedCheckpoint(f"it is a transformers {kind!r} model; only CLIPModel checkpoints of ViT CLIPs "
                                    "load (model_type 'clip')")
    architectures = config.get("architectures") or ["CLIPModel"]
    if "CLIPModel" not in architectures:
        raise UnsupportedCheckpoint(f"it is a transformers {architectures[0]} (one tower); only CLIPModel, with "
                                    "both the text and the vision tower, loads")
    towers = {"text": (config.get("text_config") or {}, "ln_final.weight", 8),
              "vision": (config.get("vision_config") or {}, "visual.ln_pre.weight", 12)}
    activations = set()
    for name, (tower, norm_key, default_heads) in towers.items():  # defaults: transformers' CLIPTextConfig etc.
        act = tower.get("hidden_act", "quick_gelu")
        if act not in _ACTIVATIONS:
            raise UnsupportedCheckpoint(f"the {name} tower's hidden_act is {act!r}; supported: "
                                        f"{', '.join(_ACTIVATIONS)}")
        activations.add(_ACTIVATIONS[act])
        eps = float(tower.get("layer_norm_eps", 1e-5))
        if eps != 1e-5:
            raise UnsupportedCheckpoint(f"the {name} tower's layer_norm_eps is {eps:g}; CLIP uses 1e-05")
        width = state_dict[norm_key].shape[0] if norm_key in state_dict else tower.get("hidden_size")
        heads = int(tower.get("num_attention_heads", default_heads))
        if width is not None and width != heads * HEAD_WIDTH:
            raise UnsupportedCheckpoint(f"the {name} tower has {heads} attention heads of width {width / heads:g}; "
                                        f"CLIP's architecture has heads {HEAD_WIDTH} wide")
    if len(activations) > 1:
        raise UnsupportedCheckpoint("the text and vision towers use different activations "
                                    f"({', '.join(sorted(activations))}); one activation is supported")
    vocab = state_dict["token_embedding.weight"].shape[0] if "token_embedding.weight" in state_dict else VOCAB_SIZE
    eos = (config.get("text_config") or {}).get("eos_token_id", EOT_ID)
    if vocab != VOCAB_SIZE or eos not in (EOT_ID, _LEGACY_EOS):
        raise UnsupportedCheckpoint(f"its text tower has vocab_size {vocab} and eos_token_id {eos}; only CLIP's own "
                                    f"tokenizer is supported (vocab_size {VOCAB_SIZE}, eos_token_id {EOT_ID})")
    return activations.pop()


def _read_tensors(path: Path) -> Dict[str, Tensor]:
    if path.name.endswith(".index.json"):  # sharded: {"weight_map": {key: shard file}}
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: Dict[str, Tensor] = {}
        for shard in shards:
            out.update(_read_tensors(path.with_name(shard)))
        return out
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UnsupportedCheckpoint(f"reading {path.name} needs the safetensors package (pip install "
                                        "safetensors)") from None
        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _preprocessing(folder: Path) -> dict:
    """mean, std and interpolation from ``preprocessor_config.json`` (PIL's resample codes), if there."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    out = {}
    if cfg.get("image_mean") and cfg.get("image_std"):
        out.update(mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample"))
    if resample:
        out["interpolation"] = resample
    return out


def read_folder(path: Path, tensors: Optional[Dict[str, Tensor]] = None) -> Tuple[Dict[str, Tensor], dict]:
    """``(OpenAI-layout state dict, load options)`` of a transformers CLIPModel folder, or of one of its weight
    files (``config.json`` must be beside it; ``tensors``: that file's, when already read). Options:
    ``activation`` and what ``preprocessor_config.json`` says.

    Raises :class:`UnsupportedCheckpoint` (a ``ValueError``) naming what is missing or not supported.
    """
    folder = path if path.is_dir() else path.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UnsupportedCheckpoint(f"no config.json in {folder} (a transformers CLIPModel folder holds config.json "
                                    f"and one of {', '.join(WEIGHT_FILES)})")
    if path.is_dir():
        found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
        if not found:
            raise UnsupportedCheckpoint(f"{folder} has config.json but no weights ({', '.join(WEIGHT_FILES)})")
        path = found[0]
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise UnsupportedCheckpoint(f"{config_path} is not valid JSON ({err})") from None
    state_dict = convert_state_dict(tensors if tensors is not None else _read_tensors(path))
    options = {"activation": check_config(config, state_dict), **_preprocessing(folder)}
    return state_dict, options
