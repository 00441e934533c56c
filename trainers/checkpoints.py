"""Prompt-set checkpoints: which file a run's model is, what a checkpoint records, and loading it safely.

- :func:`resolve_checkpoint`: the one rule for "the checkpoint of a run" (``--eval-only --model-dir``,
  ``load_model``, frozen sets from earlier runs, PromptKD's teacher).
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

import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

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


def resolve_checkpoint(source: str, model_name: str, epoch: Optional[int] = None,
                       what: str = "run") -> Tuple[str, Optional[int]]:
    """The checkpoint file of a run folder (or the file itself) and its epoch.

    For a folder, ``<source>/<model_name>/``: with an epoch, ``model.pth.tar-<epoch>``; without, the model the run
    deployed: ``model-best.pth.tar`` when it kept one (it selected on validation, ``TEST.FINAL_MODEL best_val``),
    else the epoch its ``result.json`` records (a finished run), else the newest save the ``checkpoint`` pointer
    names (an unfinished run). ``what`` names the source in errors (``--model-dir``, ``KD.BOOST_DIR``).
    """
    source = str(source)
    if osp.isfile(source):
        return source, epoch
    if not osp.isdir(source):
        raise UserError(f'{what}: no run folder or checkpoint file at "{source}"')
    folder = osp.join(source, model_name)
    if not osp.isdir(folder):
        raise UserError(f'{what}: no "{model_name}" folder in "{source}", so it was not written by this method; '
                        "check the folder and the trainer")
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
            raise UserError(f'{what}: the run folder "{source}" holds no {model_name} checkpoint yet: finish that '
                            "run first, or give a checkpoint file")
    if not osp.isfile(path):
        epochs = saved_epochs(folder)
        hint = f"saved epochs: {', '.join(epochs)}" if epochs else "no numbered checkpoint was saved there"
        raise UserError(f'{what}: no checkpoint at "{path}" ({hint}); pass an epoch that was saved, or finish the '
                        "run first")
    return path, epoch


def extract_prompt_state(state_dict: dict) -> dict:
    """The prompt learner's entries of a checkpoint, in either format.

    Reference checkpoints (MaPLe, MPL, IVLP) store the whole CustomCLIP: keep ``prompt_learner.*`` and strip
    the prefix. Class-dependent buffers (``token_prefix``/``token_suffix``) are dropped in both formats.
    """
    if any(k.startswith("prompt_learner.") for k in state_dict):
        state_dict = {k[len("prompt_learner."):]: v for k, v in state_dict.items() if k.startswith("prompt_learner.")}
    drop = ("token_prefix", "token_suffix", "token_ids", "init_ctx")
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in drop and not k.startswith("ZS_")}


def load_prompt_set(module: nn.Module, source: str, model_name: str, epoch: Optional[int] = None,
                    what: str = "prompt set", convert=None, sizes=None) -> Dict[str, object]:
    """Load a prompt set's parameters from an earlier run (folder or file), freeze it, and return its origin.

    Every parameter must be present with the same shape: a mismatch names the parameter and both shapes (a
    different prompt size or depth between the runs). ``convert``: a function applied to the checkpoint's whole
    state dict first (a trainer's ``convert_reference_state``, so a reference repository's checkpoint loads).
    ``sizes``: a function from a state dict to named sizes (``{"KD.PROMPT_DEPTH_VISION": 12, ...}``); on a
    mismatch, the error names each differing size with both values first (e.g. a depth, whose difference shows
    in the tensors only as missing or extra layers). Returns ``{"path", "sha256", "epoch", "model"}``.
    """
    from dassl.utils import load_checkpoint

    path, epoch = resolve_checkpoint(source, model_name, epoch, what=what)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f'the {what} "{path}" is not a checkpoint of this project or of the reference repositories '
                        "(it holds no state_dict); give the run folder or checkpoint file the earlier run wrote")
    state = checkpoint["state_dict"]
    state = extract_prompt_state(convert(state) if convert is not None else state)
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
        detail = "; ".join(named + problems + [f"{k} is not expected here" for k in extra])
        raise UserError(f'the {what} in "{path}" does not match this configuration: {detail}. Use the same prompt '
                        "sizes and depth as the run that made it")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for p in module.parameters():
        p.requires_grad_(False)
    return {"path": osp.abspath(path), "sha256": sha256_of(path),
            "epoch": checkpoint.get("epoch", epoch), "model": model_name}


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
