"""Prompt-learning methods for CLIP, on one contract.

Importing this package imports every module in it, so each method registers itself (its trainer in Dassl's
``TRAINER_REGISTRY``, its config block, scripts and counts: :func:`register_method`) and each extension
(:func:`register_extension`): a new method is a new module here plus its configs, with no list to edit.
:func:`list_methods` lists them; :func:`extend_cfg` adds every config block to a Dassl config. The library API is
:mod:`trainers.api` (``build_cfg``, ``build_trainer``). The project's own CLIP checkpoints (``tiny-digits``) are
registered with ``clip`` by importing :mod:`pretrain`.

The contract, by module: :mod:`~trainers.prompts` (prompt sets and their composition), :mod:`~trainers.prompted_clip`
(the prompted CLIP), :mod:`~trainers.checkpoints` (class-aware checkpoints, earlier runs), :mod:`~trainers.base`
(the trainer base), :mod:`~trainers.registry` (a method's identity, extensions), :mod:`~trainers.config` (keys and
their checks), :mod:`~trainers.compat` (what the real Dassl lacks).
"""
import importlib as _importlib
import pkgutil as _pkgutil

import pretrain as _pretrain  # noqa: F401  (registers clip.load("tiny-digits"))

from .config import extend_cfg, register_block  # noqa: F401
from .registry import (Count, EarlierRun, Extension, all_counts, extension_named, list_methods,  # noqa: F401
                       method_of, register_extension, register_method)

#: the modules of this package, imported in alphabetical order (private ones, ``_*``, are skipped)
METHOD_MODULES = sorted(m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _name in METHOD_MODULES:
    _importlib.import_module(f"{__name__}.{_name}")
