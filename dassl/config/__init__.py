"""Configuration: Dassl's default yacs config (``get_cfg_default``) and ``clean_cfg``."""
from .defaults import _C as cfg_default

__all__ = ["get_cfg_default", "clean_cfg"]


def get_cfg_default():
    """Return a fresh, independent copy of the default config (a ``yacs.config.CfgNode``)."""
    return cfg_default.clone()


def clean_cfg(cfg, trainer):
    """Remove every ``cfg.TRAINER.<KEY>`` sub-config except ``NAME`` and ``trainer.upper()`` (in place)."""
    keep = {"NAME", trainer.upper()}
    for key in list(cfg.TRAINER.keys()):
        if key not in keep:
            cfg.TRAINER.pop(key, None)
