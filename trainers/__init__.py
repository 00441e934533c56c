"""Prompt-learning methods for CLIP.

Importing this package imports every module in it, so each method registers its trainer in
``dassl.engine.TRAINER_REGISTRY`` and its config block in :data:`CONFIG_DEFAULTS` by itself: a new method is a new
module here (plus its configs), with no list to edit. :func:`extend_cfg` adds all config blocks to a Dassl config,
as the CoOp family's ``train.py`` does by hand. The project's own CLIP checkpoints (``tiny-digits``) are
registered with ``clip`` by importing :mod:`pretrain`.
"""
import importlib as _importlib
import pkgutil as _pkgutil

import pretrain as _pretrain  # noqa: F401  (registers clip.load("tiny-digits"))

from .config import CONFIG_DEFAULTS, extend_cfg, register_config  # noqa: F401

#: the modules of this package, imported in alphabetical order (private ones, ``_*``, are skipped)
METHOD_MODULES = sorted(m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _name in METHOD_MODULES:
    _importlib.import_module(f"{__name__}.{_name}")
