"""Config blocks of the project's methods, kept beside each method and merged into one Dassl config.

Each method module declares its ``cfg.TRAINER.<KEY>`` block with :func:`register_config`; :func:`extend_cfg`
adds every registered block (plus ``DATASET.SUBSAMPLE_CLASSES`` and ``OPTIM.EPS``) to a config, so YAML files and
command-line ``KEY VALUE`` pairs that name them are accepted.
"""
from collections import OrderedDict
from typing import Callable, Dict

from yacs.config import CfgNode as CN

#: ``TRAINER.<key>`` -> function returning a fresh CfgNode of that method's defaults.
CONFIG_DEFAULTS: "OrderedDict[str, Callable[[], CN]]" = OrderedDict()
#: top-level blocks (``cfg.<key>``) that a reference keeps outside ``TRAINER``, e.g. CasPL's ``cfg.KD``.
TOP_LEVEL_DEFAULTS: "OrderedDict[str, Callable[[], CN]]" = OrderedDict()


def register_config(key: str, top_level: bool = False):
    """Decorator: register ``fn() -> CfgNode`` as the defaults of ``cfg.TRAINER.<key>``.

    >>> @register_config("MYMETHOD")
    ... def _defaults():
    ...     node = CN(); node.N_CTX = 4; return node
    """
    if not key.isupper():
        raise ValueError(f"config key {key!r} must be upper case, like the CoOp family's (TRAINER.COOP, TRAINER.MAPLE)")

    table = TOP_LEVEL_DEFAULTS if top_level else CONFIG_DEFAULTS

    def deco(fn: Callable[[], CN]) -> Callable[[], CN]:
        if key in table and table[key] is not fn:
            raise KeyError(f"config block {'' if top_level else 'TRAINER.'}{key} is registered twice")
        table[key] = fn
        return fn

    return deco


def extend_cfg(cfg: CN) -> CN:
    """Add the project's keys to a Dassl default config (in place) and return it.

    Keys already present (for example when a user's own ``train.py`` added them first) are left as they are.
    """
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new
    if "EPS" not in cfg.OPTIM:  # the real Dassl has no such key (this project's engine does)
        cfg.OPTIM.EPS = 1e-8  # Adam-family eps (TCP's configs set 1e-3)
    for key, make in CONFIG_DEFAULTS.items():
        if key not in cfg.TRAINER:
            cfg.TRAINER[key] = make()
    for key, make in TOP_LEVEL_DEFAULTS.items():
        if key not in cfg:
            cfg[key] = make()
    return cfg
