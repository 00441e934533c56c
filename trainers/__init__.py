"""Prompt-learning methods for CLIP.

Importing this package registers every method in ``dassl.engine.TRAINER_REGISTRY`` and its config keys in
:data:`CONFIG_DEFAULTS`; :func:`extend_cfg` adds all of those keys to a Dassl config, as the CoOp family's
``train.py`` does by hand.
"""
from .config import CONFIG_DEFAULTS, extend_cfg, register_config  # noqa: F401

# Method modules register themselves on import (trainer class + config block).
from . import _methods  # noqa: F401,E402
