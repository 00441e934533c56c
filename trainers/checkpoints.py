"""Prompt-set checkpoints: which file a run's model is, what a checkpoint records, and loading it safely.

- :func:`resolve_checkpoint`: the one rule for "the checkpoint of a run" (``--eval-only --model-dir``,
  ``load_model``, frozen sets from earlier runs, PromptKD's teacher).
- :func:`read_prompt_state`: the one reader of a checkpoint's prompts, in this project's layout or an original
  repository's (renamed, what it saves but never uses set aside by the method's declarations, anything else
  refused; a whole-model file's frozen CLIP compared by shape with the run's).
- :func:`load_prompt_set`: an earlier run's prompt set, shape-checked, frozen, its origin (path, SHA256) returned.
- :class:`ClassRecord`: every learned checkpoint records the class names it was trained on
  (``trained_classes._extra_state``). A module declares which of its tensors have one row per class
  (``class_dependent``: a tuple of its state-dict keys); loading those onto another class list is one clear
  error (:func:`check_classes`, run by every ``load_state_dict`` of the learner, on either Dassl), unless the
  module says how to move them (``load_for_classes``, e.g. DePT's head). Class-independent parameters keep
  loading onto new classes.
- :class:`FrozenSetOrigins`: where a run's frozen prompt sets came from, inside its checkpoint.
- :func:`read_run_config`: the resolved config an earlier run wrote (``config.yaml``).
"""
from __future__ import annotations

import fnmatch
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from clip.download import sha256_of

from .compat import UserError

#: the learner's child that records its classes (its ``_extra_state`` holds the names)
CLASS_RECORD = "trained_classes"
#: the resolved config a run writes into its folder (``trainers.runner``)
CONFIG_FILE = "config.yaml"
BEST = "model-best.pth.tar"
NUMBERED = "model.pth.tar-"


def read_checkpoint_pointer(folder: str) -> Optional[str]:
    """The file Dassl's ``<folder>/checkpoint`` pointer names (the newest save), or None without a pointer."""
    pointer = osp.join(folder, "checkpoint")
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        return osp.join(folder, f.readline().strip())


def read_run_config(run_dir: str):
    """The resolved config an earlier run wrote (``config.yaml``), as a yacs node; None when it has none (a run
    from before the file existed)."""
    from yacs.config import CfgNode as CN

    path = osp.join(run_dir, CONFIG_FILE)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return CN.load_cfg(f)


def saved_epochs(folder: str) -> List[str]:
    if not osp.isdir(folder):
        return []
    epochs = [f[len(NUMBERED):] for f in os.listdir(folder) if f.startswith(NUMBERED)]
    return sorted(epochs, key=lambda e: (len(e), e))


def _checkpoint_files(folder: str) -> bool:
    return osp.isdir(folder) and any(f == BEST or f.startswith(NUMBERED) for f in os.listdir(folder))


def resolve_checkpoint(source: str, model_name: str, epoch: Optional[int] = None,
                       what: str = "run", folders: Sequence[str] = ()) -> Tuple[str, Optional[int]]:
    """The checkpoint file of a run folder (or the file itself) and its epoch.

    For a folder, ``<source>/<model_name>/`` (else the first of ``folders`` there: the folder names the original
    repositories' runs wrote, a method's ``REFERENCE_FOLDERS``): with an epoch, ``model.pth.tar-<epoch>``; without,
    the model the run deployed: ``model-best.pth.tar`` when it kept one (it selected on validation,
    ``TEST.FINAL_MODEL best_val``), else the epoch its ``result.json`` records (a finished run), else the newest
    save the ``checkpoint`` pointer names (an unfinished run), else -- a downloaded folder, which has neither --
    its last numbered save, said in one line. ``what`` names the source in errors (``--model-dir``,
    ``KD.BOOST_DIR``).
    """
    source = str(source)
    if osp.isfile(source):
        return source, epoch
    if not osp.isdir(source):
        raise UserError(f'{what}: no run folder or checkpoint file at "{source}"')
    names = [model_name] + [n for n in folders if n != model_name]
    found = [n for n in names if osp.isdir(osp.join(source, n))]
    if not found:
        if _checkpoint_files(source):
            parent = osp.dirname(osp.abspath(source))
            raise UserError(f'{what}: "{source}" is a checkpoint folder itself; give the folder above it '
                            f'("{parent}"), which holds the {" or ".join(names)} folder')
        quoted = " or ".join(f'"{n}"' for n in names)
        raise UserError(f'{what}: no {quoted} folder in "{source}", so it was not written by this method; check '
                        "the folder and the trainer")
    model_name = found[0]
    folder = osp.join(source, model_name)
    if epoch is None and osp.isfile(osp.join(folder, BEST)):
        return osp.join(folder, BEST), None
    if epoch is None:
        result = osp.join(source, "result.json")
        if osp.isfile(result):
            with open(result) as f:
                epoch = json.load(f).get("epochs")
    if epoch is not None:
        path = osp.join(folder, f"{NUMBERED}{epoch}")
    else:
        path = read_checkpoint_pointer(folder)
        if path is None:
            epochs = saved_epochs(folder)
            if not epochs:
                raise UserError(f'{what}: the run folder "{source}" holds no {model_name} checkpoint yet: finish '
                                "that run first, or give a checkpoint file")
            path = osp.join(folder, f"{NUMBERED}{epochs[-1]}")
            print(f'{what}: "{folder}" records no epoch to deploy (a downloaded folder): loading its last save, '
                  f"{NUMBERED}{epochs[-1]} (give an epoch to load another)")
    if not osp.isfile(path):
        epochs = saved_epochs(folder)
        hint = f"saved epochs: {', '.join(epochs)}" if epochs else "no numbered checkpoint was saved there"
        raise UserError(f'{what}: no checkpoint at "{path}" ({hint}); pass an epoch that was saved, or finish the '
                        "run first")
    return path, epoch


# ----------------------------------------------------------------------------------------------------------
# Reading a checkpoint: this project's and the original repositories' layouts
# ----------------------------------------------------------------------------------------------------------
#: buffers the original prompt learners save that depend on the class list (rebuilt here for the run's classes)
CLASS_LIST_BUFFERS = ("token_prefix", "token_suffix", "token_ids", "init_ctx")
#: the prefix of the prompt learner in the original repositories' whole-model files
WHOLE_MODEL_PROMPTS = "prompt_learner."
#: where a whole-model file keeps the frozen CLIP, and the name of the same weights in the CLIP here
FROZEN_CLIP = (("image_encoder.", "visual."), ("text_encoder.", ""), ("logit_scale", "logit_scale"))


def _shape(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


def _clip_name(key: str) -> Optional[str]:
    for prefix, here in FROZEN_CLIP:
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return here + key[len(prefix):] if prefix.endswith(".") else here
    return None


def read_prompt_state(checkpoint, path: str, declarations=None, backbone: Optional[nn.Module] = None,
                      what: str = "checkpoint") -> dict:
    """The prompt learner's state in a checkpoint (this project's or an original repository's); the one reader.

    ``declarations``: the method's trainer class (or None: this project's layout only), whose
    ``convert_reference_state`` (whole state dict) and ``convert_state`` (the learner's entries) rename the
    original layout, and whose ``REFERENCE_UNUSED`` (``{pattern: reason}``, fnmatch patterns on the learner's
    names, or on whole-file names outside the learner) names what the original code saves but never uses: set
    aside and named in one ``Not read from "<file>": ...`` line. Class-list buffers (:data:`CLASS_LIST_BUFFERS`)
    are rebuilt here and dropped. A whole-model file (keys under ``prompt_learner.``) also holds the frozen CLIP:
    each of its tensors must be one of ``backbone``'s with the same shape (prompts made on another CLIP are
    refused). Anything else is refused with one :class:`UserError` naming the key and its shape.
    Returns the learner's entries (names as the learner's state dict); the caller checks them against it.
    """
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f'the {what} "{path}" is not a checkpoint of this project or of the original repositories '
                        "(it holds no state_dict); give the run folder or checkpoint file the earlier run wrote")
    state = dict(checkpoint["state_dict"])
    convert_whole = getattr(declarations, "convert_reference_state", None)
    convert_learner = getattr(declarations, "convert_state", None)
    unused = dict(getattr(declarations, "REFERENCE_UNUSED", None) or {})
    method = getattr(declarations, "__name__", "this method")
    if convert_whole is not None:
        state = convert_whole(state)
    outside = {}
    if any(k.startswith(WHOLE_MODEL_PROMPTS) for k in state):
        outside = {k: v for k, v in state.items() if not k.startswith(WHOLE_MODEL_PROMPTS)}
        state = {k[len(WHOLE_MODEL_PROMPTS):]: v for k, v in state.items() if k.startswith(WHOLE_MODEL_PROMPTS)}
    if convert_learner is not None:
        state = convert_learner(state)

    set_aside: Dict[str, List[str]] = {}

    def declared(key: str) -> bool:
        for pattern in unused:
            if fnmatch.fnmatchcase(key, pattern):
                set_aside.setdefault(pattern, []).append(key)
                return True
        return False

    out = {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in CLASS_LIST_BUFFERS or declared(key):
            continue
        out[key] = value
    clip_state = backbone.state_dict() if backbone is not None else None
    for key, value in outside.items():
        if declared(key):
            continue
        name = _clip_name(key)
        if name is None or (clip_state is not None and name not in clip_state):
            raise UserError(f'the {what} "{path}" holds {key} {_shape(value)}, which neither {method} nor the frozen '
                            "CLIP reads and no declaration explains: it was not written by this method (give it to "
                            "the trainer that made it)")
        if clip_state is not None and torch.is_tensor(value) and tuple(value.shape) != tuple(clip_state[name].shape):
            raise UserError(f'the {what} "{path}" was made on another CLIP: its frozen {key} has shape '
                            f"{_shape(value)} there but {_shape(clip_state[name])} in this run's backbone; use the "
                            "backbone it was trained on (MODEL.BACKBONE.NAME)")
    if set_aside:
        named = "; ".join(f"{', '.join(keys) if len(keys) <= 3 else f'{pattern} ({len(keys)} tensors)'}: "
                          f"{unused[pattern]}"
                          for pattern, keys in set_aside.items())
        print(f'Not read from "{path}": {named}')
    return out


def load_prompt_set(module: nn.Module, source: str, model_name: str, epoch: Optional[int] = None,
                    what: str = "prompt set", declarations=None, sizes=None, backbone: Optional[nn.Module] = None,
                    folders: Sequence[str] = ()) -> Dict[str, object]:
    """Load a prompt set's parameters from an earlier run (folder or file), freeze it, and return its origin.

    Every parameter must be present with the same shape: a mismatch names the parameter and both shapes (a
    different prompt size or depth between the runs). ``declarations``, ``backbone``: as
    :func:`read_prompt_state`'s (a trainer class, so an original repository's checkpoint loads; the CLIP the
    prompts are used with). ``folders``: as :func:`resolve_checkpoint`'s. ``sizes``: a function from a state dict
    to named sizes (``{"KD.PROMPT_DEPTH_VISION": 12, ...}``); on a mismatch, the error names each differing size
    with both values first (e.g. a depth, whose difference shows in the tensors only as missing or extra layers).
    Returns ``{"path", "sha256", "epoch", "model"}``.
    """
    from dassl.utils import load_checkpoint

    path, epoch = resolve_checkpoint(source, model_name, epoch, what=what, folders=folders)
    checkpoint = load_checkpoint(path)
    state = read_prompt_state(checkpoint, path, declarations, backbone=backbone, what=what)
    own = module.state_dict()
    problems = []
    for name, value in own.items():
        if not torch.is_tensor(value):
            continue
        if name not in state:
            problems.append(f"{name} is missing")
        elif tuple(state[name].shape) != tuple(value.shape):
            problems.append(f"{name} has shape {tuple(state[name].shape)} there but {tuple(value.shape)} here")
    extra = [k for k, v in state.items() if torch.is_tensor(v) and k not in own]
    if problems or extra:
        named = []
        if sizes is not None:
            there, here = sizes(state), sizes(own)
            named = [f"{k} is {there[k]} there but {here[k]} here" for k in here if k in there and there[k] != here[k]]
        detail = "; ".join(named + problems + [f"{k} {_shape(state[k])} is not expected here" for k in extra])
        raise UserError(f'the {what} in "{path}" does not match this configuration: {detail}. Use the same prompt '
                        "sizes and depth as the run that made it")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for p in module.parameters():
        p.requires_grad_(False)
    return {"path": osp.abspath(path), "sha256": sha256_of(path),
            "epoch": checkpoint.get("epoch", epoch),
            "model": osp.basename(osp.dirname(path)) if osp.isdir(str(source)) else model_name}


class FrozenSetOrigins(nn.Module):
    """Records where a run's frozen prompt sets came from, inside the learner's checkpoint (``_extra_state``),
    so both Dassl engines save it and a checkpoint says which frozen prompts it was trained beside."""

    def __init__(self, origins: Optional[Dict[str, dict]] = None):
        super().__init__()
        self.origins = dict(origins or {})

    def get_extra_state(self):
        return {"origins": json.dumps(self.origins, sort_keys=True)}

    def set_extra_state(self, state):
        self.origins = json.loads(state.get("origins", "{}")) if isinstance(state, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# Class-aware checkpoints
# ----------------------------------------------------------------------------------------------------------
class ClassRecord(nn.Module):
    """The class names a learner is built for, saved in its checkpoints (``trained_classes._extra_state``).

    Loading keeps the run's own names: the check of a checkpoint's names against them happens before any tensor
    is copied (:func:`check_classes`)."""

    def __init__(self, classnames):
        super().__init__()
        self.classnames = [str(c) for c in classnames]

    def get_extra_state(self):
        return {"classnames": json.dumps(self.classnames)}

    def set_extra_state(self, state):
        pass


def class_dependent_keys(learner: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """``{state key: (owner path, owner)}`` of every tensor the learner's modules declare class-dependent."""
    out = {}
    for path, module in learner.named_modules():
        for key in tuple(getattr(module, "class_dependent", ()) or ()):
            out[f"{path}.{key}" if path else key] = (path, module)
    return out


def recorded_classes(state_dict: dict, prefix: str = "") -> Optional[List[str]]:
    """The class names a learner's checkpoint records (None for checkpoints that predate the record)."""
    record = state_dict.get(f"{prefix}{CLASS_RECORD}._extra_state")
    if isinstance(record, dict) and "classnames" in record:
        return list(json.loads(record["classnames"]))
    return None


def _short(names, limit=6):
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def check_classes(learner: nn.Module, state_dict: dict, prefix: str = "") -> None:
    """Before ``learner`` loads ``state_dict``: class-dependent tensors trained on other classes are refused (one
    :class:`UserError`) or moved by their module's ``load_for_classes(state_dict, prefix, trained, current)``,
    which edits the state dict in place. Nothing happens when the classes are the same, when the checkpoint holds
    no class-dependent tensor, or when it records no classes (a reference checkpoint: a notice is printed)."""
    record = getattr(learner, CLASS_RECORD, None)
    if record is None:
        return
    present = {k: owner for k, owner in class_dependent_keys(learner).items() if prefix + k in state_dict}
    if not present:
        return
    trained, current = recorded_classes(state_dict, prefix), record.classnames
    if trained is None:
        print(f"Note: the checkpoint records no class names; its class-dependent tensors "
              f"({', '.join(sorted(present))}) are loaded for this run's {len(current)} classes as they are")
        return
    if trained == current:
        return
    owners = {}
    for key, (path, module) in present.items():
        owners.setdefault(path, (module, []))[1].append(key)
    for path, (module, keys) in owners.items():
        move = getattr(module, "load_for_classes", None)
        if move is None:
            raise UserError(
                f"the checkpoint's {', '.join(sorted(keys))} hold one row per class of the {len(trained)} classes it "
                f"was trained on ({_short(trained)}), but this run has {len(current)} other classes "
                f"({_short(current)}): class-specific parameters cannot be applied to other classes. Evaluate on "
                "the classes it was trained on, or train without class-specific parameters (e.g. CSC False)")
        move(state_dict, f"{prefix}{path}." if path else prefix, trained, current)


def record_classes(learner: nn.Module, classnames) -> None:
    """Give ``learner`` its :class:`ClassRecord` and the check that runs before each of its loads."""
    learner.add_module(CLASS_RECORD, ClassRecord(classnames))

    def hook(module, state_dict, prefix, *args):
        check_classes(module, state_dict, prefix)

    learner._register_load_state_dict_pre_hook(hook, with_module=True)
