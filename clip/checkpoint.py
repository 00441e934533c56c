"""Reading CLIP checkpoint files and :func:`load`.

Accepted files: OpenAI's released TorchScript archives (their ``state_dict()`` is taken; the JIT model itself is
never used), plain state dicts saved with ``torch.save`` (read with ``weights_only=True``), optionally wrapped
as ``{"state_dict": ...}``, and ``.safetensors`` files. A Hugging Face ``transformers`` CLIPModel folder (or one of
its weight files, beside its ``config.json``) is converted by :mod:`clip.hf_transformers`.

A file that is not one of those -- empty, truncated, corrupt, another format, or the weights of another kind of
model -- raises :class:`CheckpointFileError` (a ``ValueError``) whose message names the file and what to do. The
message never passes on PyTorch's advice to retry with ``weights_only=False``: that would run arbitrary code from
an untrusted file, and a CLIP checkpoint never needs it.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from . import hf_transformers
from .model import CLIP, build_model
from .precision import Precision, resolve_precision
from .openclip import convert_state_dict
from .pretrained import pretrained_options, pretrained_path
from .transforms import image_transform

__all__ = ["load", "read_state_dict", "is_torchscript_archive", "CheckpointFileError"]

_WHAT_TO_DO = ("download it again (delete it from the CLIP cache and it is fetched again) or give the path of a "
               "released CLIP checkpoint")


class CheckpointFileError(ValueError):
    """A CLIP checkpoint file cannot be used; the message names the file and what to do."""


def _bad_file(path: Path, why: str) -> CheckpointFileError:
    return CheckpointFileError(f'"{path}" is not a usable CLIP checkpoint: {why}; {_WHAT_TO_DO}')


def is_torchscript_archive(path: Union[str, Path]) -> bool:
    """True for a TorchScript archive (a zip with code/ and constants.pkl), False for a torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """The CLIP state dict stored in ``path`` (TorchScript archive or plain state dict), on the CPU.

    Raises :class:`CheckpointFileError` for a file that cannot be read as one.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise _bad_file(path, f"it cannot be read ({err.strerror})") from None
    if size == 0:
        raise _bad_file(path, "the file is empty")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 flags TorchScript as deprecated (we only read weights); garbage warns about protocols
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            if is_torchscript_archive(path):
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                return load_file(str(path), device="cpu")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to decode the file: say so in our words
        raise _bad_file(path, _why_unreadable(path, err)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise _bad_file(path, "it holds neither a TorchScript CLIP archive nor a state dict of tensors")
    return obj


def _why_unreadable(path: Path, err: Exception) -> str:
    """A short reason, in our words (PyTorch's message may advise unsafe loading)."""
    names = _globals_asked(path, err) if isinstance(err, pickle.UnpicklingError) else []
    if names:
        return (f"it asks for the Python object(s) {', '.join(names)}, which a CLIP checkpoint never holds "
                "(unpickling them could run any code), so it is not read")
    if isinstance(err, ImportError):
        return f"reading it needs the {err.name or 'missing'} package (pip install {err.name or '...'})"
    if path.suffix == ".safetensors":
        return "it is not a readable safetensors file (truncated or corrupted)"
    if zipfile.is_zipfile(path):
        return "the archive is damaged (a truncated or corrupted download)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "the archive is truncated (an interrupted download or copy)"
    return "it is not a PyTorch checkpoint (unknown format)"


def _globals_asked(path: Path, err: Exception) -> list:
    """``module.name`` of the objects a file refused by the safe loader asks for (read without unpickling); empty
    when the refusal names none (random bytes read as pickle opcodes)."""
    if "Weights only load failed" not in str(err):
        return []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip archive: the refusal names the first one
        names = []
    named = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
    if named and named.group(1) not in names:
        names.insert(0, named.group(1))
    return names


def build_state_dict_model(state_dict: Dict[str, Tensor], path: Union[str, Path], **build_args) -> CLIP:
    """:func:`clip.build_model` with a :class:`CheckpointFileError` naming ``path`` when the weights do not
    describe a CLIP model (another architecture, missing or misshapen tensors)."""
    try:
        return build_model(state_dict, **build_args)
    except (KeyError, RuntimeError, ValueError, IndexError, AttributeError, TypeError) as err:
        raise _bad_file(Path(path), f"its tensors do not describe a CLIP model ({_one_line(err)})") from None


def _one_line(err: Exception, limit: int = 160) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return detail if len(detail) <= limit else detail[:limit - 3] + "..."


def load(name_or_path: Union[str, Path], device: Union[str, torch.device] = "cpu", jit: bool = False,
         download_root: Union[str, Path, None] = None,
         precision: Union[str, Precision, None] = None, activation: Optional[str] = None,
         mean=None, std=None, revision: Optional[str] = None, token: Union[str, bool, None] = None
         ) -> Tuple[CLIP, "object"]:
    """Load a CLIP model and its image preprocessing transform.

    Args:
        name_or_path: a registered name (see :func:`clip.available_models`), ``hf-hub:ORG/REPO`` (a transformers
            CLIPModel repository, through ``huggingface_hub``), a checkpoint file, or a transformers CLIPModel
            folder (``config.json`` + weights, e.g. a snapshot in the Hugging Face cache).
        device: where the model goes.
        jit: not supported (the TorchScript model is never used; its weights are).
        download_root: cache folder for downloads (default ``$CLIP_CACHE_DIR`` or ``~/.cache/clip``).
        precision: "fp32" | "fp16" | "bf16" | "amp" or a :class:`Precision`; None keeps OpenAI's behaviour
            (fp16 weights on CUDA, fp32 on CPU).
        activation: the MLP activation, ``"quick_gelu"`` or ``"gelu"``; default: the one registered with the name
            (open_clip's models, :mod:`clip.openclip`), else OpenAI's ``"quick_gelu"``. Give it for a local file
            of an open_clip model.
        mean, std: normalisation of the returned transform; default: the registered ones (a transformers
            folder's ``preprocessor_config.json``), else OpenAI's.
        revision, token: for names fetched from the Hugging Face hub through ``huggingface_hub`` (open_clip's
            names, ``hf-hub:``): a branch, tag or commit, and an access token for gated or private repositories
            (default: huggingface_hub's own, ``$HF_TOKEN`` or a saved login).

    Returns:
        ``(model, preprocess)``: the model in eval mode, and a PIL image -> tensor transform.
    """
    if jit:
        raise NotImplementedError("clip.load(jit=True) is not supported: this project rebuilds the model from the "
                                  "archive's weights; call clip.load(..., jit=False)")
    device = torch.device(device)
    if precision is None:
        precision = "fp16" if device.type == "cuda" else "fp32"
    if not isinstance(precision, Precision):
        precision = resolve_precision(precision, device)
    path = Path(name_or_path).expanduser()
    options = {} if path.exists() else pretrained_options(str(name_or_path))
    if not path.exists():
        path = pretrained_path(str(name_or_path), download_root, revision=revision, token=token)
    state_dict = None if path.is_dir() or path.name.endswith(".index.json") else read_state_dict(path)
    if state_dict is None or hf_transformers.is_transformers_state_dict(state_dict):
        try:
            state_dict, hf_options = hf_transformers.read_folder(path, state_dict)
        except (ValueError, OSError, RuntimeError) as err:  # unsupported, or a weight file that cannot be read
            raise CheckpointFileError(f'"{path}" is not a transformers CLIPModel checkpoint this project loads: '
                                      f"{_one_line(err)}") from None
        options = {**hf_options, **options}
    model = build_state_dict_model(convert_state_dict(state_dict), path,
                                   activation=activation or options.get("activation", "quick_gelu"))
    precision.cast_model(model)
    model.to(device)
    preprocess = {k: options[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in options}
    if mean is not None:
        preprocess["mean"] = mean
    if std is not None:
        preprocess["std"] = std
    return model, image_transform(model.visual.input_resolution, **preprocess)
