"""The library API: configs and trainers from Python, the way ``train.py`` builds them.

    >>> from trainers.api import build_cfg, build_trainer
    >>> cfg = build_cfg(trainer="CoOp", config_file="configs/trainers/CoOp/tiny_digits.yaml",
    ...                 dataset_config_file="configs/datasets/digits.yaml", root="data", output_dir="out",
    ...                 seed=1, opts=["DATASET.NUM_SHOTS", 16, "DATASET.SUBSAMPLE_CLASSES", "base"])
    >>> trainer = build_trainer(cfg)
    >>> trainer.train()

:func:`build_cfg` takes ``train.py``'s flags as keyword arguments (``config_file=``, ``eval_only=``, ...) and/or a
list of command-line words (``build_cfg(["--trainer", "CoOp", ..., "DATASET.NUM_SHOTS", "16"])``). The config is
merged in ``train.py``'s order -- Dassl's defaults, the project's keys and method blocks
(:func:`trainers.config.extend_cfg`), the dataset YAML, the method YAML, the flags, then ``KEY VALUE`` pairs -- and
checked before it is returned: unknown keys, values of the wrong type, values out of range, unknown trainer,
dataset or backbone names, and each method's own checks are one :class:`UserError` (``train.py`` prints it as one
``error:`` line, exit status 2) before anything is written. Config files are YAML only (yacs would run a ``.py``
config as code).
"""
from __future__ import annotations

import argparse
import difflib
import os.path as osp
from typing import Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

import datasets  # noqa: F401  (registers the benchmark datasets)
from dassl.config import get_cfg_default
from dassl.engine import TRAINER_REGISTRY

from .compat import DATASET_REGISTRY, UserError
from .config import check_values, extend_cfg

DESCRIPTION = "Train or evaluate a prompt-learning method for CLIP (the reference repositories' command line)."


def build_parser() -> argparse.ArgumentParser:
    """``train.py``'s command line (CoOp's flags)."""
    parser = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1,
                        help="a value >= 0 fixes the seed (0 included); negative: keep the config's SEED")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file (YAML)")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--print-config", action="store_true",
                        help="also print the arguments, config and environment on the terminal (they are always in "
                             "log.txt)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return parser


def parse_args(argv: Sequence[str] = (), **flags) -> argparse.Namespace:
    """``train.py``'s arguments from command-line words and/or flags by name (``config_file="..."``,
    ``eval_only=True``, ``opts=[KEY, VALUE, ...]``)."""
    words = [str(w) for w in argv]
    opts = [str(o) for o in flags.pop("opts", ()) or ()]
    args = build_parser().parse_args(words)
    for name, value in flags.items():
        if not hasattr(args, name):
            raise TypeError(f"unknown flag {name!r}; train.py's flags are {sorted(vars(args))}")
        setattr(args, name, value)
    args.opts = list(args.opts or []) + opts
    return args


def build_cfg(argv: Sequence[str] = (), check: bool = True, **flags) -> CN:
    """The frozen, checked config of a run (see the module docstring). ``check=False``: the config as its sources
    say, unchecked (to read a reference config's sizes without the files a run would need)."""
    return cfg_from_args(parse_args(argv, **flags), check=check)


def cfg_from_args(args: argparse.Namespace, check: bool = True) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_config_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        merge_config_file(cfg, args.config_file, "--config-file")
    apply_flags(cfg, args)
    merge_config_opts(cfg, args.opts)
    backbone_normalisation(cfg)
    if check:
        check_cfg(cfg, training=not args.eval_only)
    cfg.freeze()
    return cfg


def check_cfg(cfg, training: bool = True) -> None:
    """Every check that needs only the config: values, names, the backbone, the method's own keys."""
    check_values(cfg, training=training)
    check_names(cfg)
    if cfg.TRAINER.NAME:
        check = getattr(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), "check_config", None)
        if check is not None:
            check(cfg)


def run_cfg(run_dir: str, opts: Sequence[str] = ()) -> CN:
    """The config of an earlier run, from the ``config.yaml`` it wrote (merged into today's defaults, so a key that
    no longer exists is one error), with ``opts`` (``KEY VALUE`` pairs, e.g. ``USE_CUDA False``) on top."""
    from .checkpoints import CONFIG_FILE, read_run_config

    saved = read_run_config(run_dir)
    if saved is None:
        raise UserError(f'"{run_dir}" holds no {CONFIG_FILE}: it is not a run folder, or a run from before runs '
                        "recorded their config")
    cfg = get_cfg_default()
    extend_cfg(cfg)
    try:
        cfg.merge_from_other_cfg(saved)
    except (KeyError, AssertionError, ValueError, TypeError) as err:
        raise _config_error(cfg, f"{run_dir}/{CONFIG_FILE}", err) from err
    merge_config_opts(cfg, [str(o) for o in opts])
    check_cfg(cfg, training=False)
    cfg.freeze()
    return cfg


def build_trainer(cfg, seed: bool = True):
    """The trainer ``cfg.TRAINER.NAME`` on ``cfg`` (random state seeded from ``cfg.SEED`` first, when >= 0)."""
    from dassl.engine import build_trainer as dassl_build_trainer
    from dassl.utils import set_random_seed

    if seed and cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    return dassl_build_trainer(cfg)


# ----------------------------------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------------------------------
def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _config_error(cfg, source, err):
    """A yacs merge error as one line naming the source and the key."""
    msg = str(err.args[0]) if err.args else str(err)
    for prefix in ("Non-existent config key: ", "Non-existent key: "):
        if msg.startswith(prefix):
            key = msg[len(prefix):].strip()
            close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return UserError(f"{source}: unknown config key {key}{hint}; only keys that exist in the defaults can be set")
    return UserError(f"{source}: {msg}")


def merge_config_file(cfg, path, flag):
    """``cfg.merge_from_file(path)`` for a YAML file, with one-line errors for a missing file, a bad key or value."""
    if not osp.isfile(path):
        raise UserError(f'config file not found: "{path}" (given by {flag}); check the path')
    if not str(path).lower().endswith((".yaml", ".yml")):
        raise UserError(f'config file "{path}" (given by {flag}) is not a .yaml file: config files are data, and '
                        "yacs would run any other kind as Python code; write it as YAML")
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as err:
        raise _config_error(cfg, f"config file {path}", err) from err


def merge_config_opts(cfg, opts):
    """``cfg.merge_from_list(opts)`` (trailing ``KEY VALUE`` pairs) with one-line errors."""
    if not opts:
        return
    if len(opts) % 2 != 0:
        raise UserError(f"command-line options must be KEY VALUE pairs, got an odd number of items: {' '.join(opts)}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError, TypeError) as err:
        raise _config_error(cfg, "command-line options", err) from err


def apply_flags(cfg, args):
    """Apply the command-line flags to ``cfg`` (each flag only when given)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None and args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def backbone_normalisation(cfg):
    """A backbone registered with its own mean/std (open_clip's, see clip/openclip.py) normalises the data with
    them where the config kept OpenAI's CLIP values (every method's config does); a config's own values stay."""
    import clip
    from clip.transforms import OPENAI_MEAN, OPENAI_STD

    options = clip.pretrained_options(cfg.MODEL.BACKBONE.NAME)
    for key, openai, name in (("PIXEL_MEAN", OPENAI_MEAN, "mean"), ("PIXEL_STD", OPENAI_STD, "std")):
        if name in options and all(abs(a - b) < 1e-6 for a, b in zip(cfg.INPUT[key], openai)):
            cfg.INPUT[key] = list(options[name])


# ----------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------
def _unknown_name(kind, flag, name, available):
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" (do you mean {close[0]}?)" if close else ""
    return UserError(f"unknown {kind} {name!r} ({flag}){hint}; registered: {', '.join(available)}")


def check_names(cfg):
    """The trainer (when named), dataset and backbone names exist (before the output folder is created)."""
    avail = list(TRAINER_REGISTRY.registered_names())
    if cfg.TRAINER.NAME and cfg.TRAINER.NAME not in avail:
        # same wording as Dassl's check_availability, which users and tests know
        close = difflib.get_close_matches(cfg.TRAINER.NAME, avail, n=1, cutoff=0.0)
        raise UserError(f"unknown trainer [{cfg.TRAINER.NAME}] (--trainer / TRAINER.NAME; do you mean "
                        f"[{close[0] if close else ''}]?); registered: {', '.join(avail)}")
    if DATASET_REGISTRY is not None and cfg.DATASET.NAME:
        names = list(DATASET_REGISTRY.registered_names())
        if cfg.DATASET.NAME not in names:
            raise _unknown_name("dataset", "DATASET.NAME, set by --dataset-config-file", cfg.DATASET.NAME, names)
    check_backbone(cfg)


def check_backbone(cfg):
    """For this project's trainers, ``MODEL.BACKBONE.NAME`` is a CLIP model name or an existing, non-empty file.
    (Its content is read when the trainer is built; a bad file is then one clear error too.)"""
    name = cfg.MODEL.BACKBONE.NAME
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME) if cfg.TRAINER.NAME else None
    if not name or getattr(trainer, "METHOD", None) is None:
        return
    import clip

    if name in clip.available_models():
        return
    path = osp.expanduser(name)
    if not osp.isfile(path):
        raise UserError(f"MODEL.BACKBONE.NAME: unknown model {name!r}: not a file, and not one of "
                        f"{clip.available_models()}; give a model name or the path of a CLIP checkpoint")
    if osp.getsize(path) == 0:
        raise UserError(f'MODEL.BACKBONE.NAME: "{path}" is an empty file; give the path of a CLIP checkpoint')


def method_precision(cfg) -> Optional[str]:
    """``TRAINER.<block>.PREC`` of the run's method (None for trainers that are not registered methods)."""
    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME) if cfg.TRAINER.NAME in TRAINER_REGISTRY else None
    method = getattr(cls, "METHOD", None)
    if method is None:
        return None
    return cfg.TRAINER[method.block].get("PREC")


__all__ = ["build_cfg", "build_trainer", "run_cfg", "build_parser", "parse_args", "cfg_from_args", "check_cfg",
           "method_precision", "load_run"]


def load_run(run_dir: str, **options):
    """The classifier of a finished run: :func:`trainers.predict.load_run` (options: ``device``, ``precision``,
    ``batch_size``, ``progress``)."""
    from .predict import load_run as _load_run

    return _load_run(run_dir, **options)
