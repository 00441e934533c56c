"""The project's config keys, each declared once, and the checks of their values.

- :func:`extend_cfg` adds to a Dassl default config (this project's engine or the real Dassl) every method's block
  ``cfg.TRAINER.<NAME>`` (registered with the method, :mod:`trainers.registry`), the other blocks methods own
  (CasPL's ``KD``, ProGrad's ``LOSS``, PromptKD's ``TRAINER.MODAL``), and the project's own keys
  (:func:`project_keys`).
- Keys several methods share with one meaning are declared once here: ``PREC`` (every method block) and the
  context keys of the two reference families: a learned context started from a phrase
  (:func:`phrase_context_keys`) and deep prompts in both encoders (:func:`deep_prompt_keys`).
- :func:`check_values` checks the values of the Dassl keys the methods use (ranges and choices); each method checks
  its own block (``PromptTrainer.check_config``). Both run while the config is built, before a run folder exists.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional

import torch
from yacs.config import CfgNode as CN

from clip.precision import PRECISIONS

from .compat import OPTIMIZERS, SCHEDULERS, UserError, check_trackers

#: block path (``TRAINER.COOP``, ``KD``) -> (function adding its keys to a node, owning method or None)
BLOCKS: "OrderedDict[str, tuple]" = OrderedDict()


def register_block(path: str, keys: Callable, method: Optional[str] = None) -> None:
    """Register the config block at ``path``: ``keys(node)`` fills a fresh node (or returns a plain value, for a
    key such as ``TRAINER.MODAL``). A method's own block also gets ``PREC`` first."""
    head, _, last = path.rpartition(".")
    if not last.isupper() or (head and head != "TRAINER"):
        raise UserError(f"config block {path!r}: a block is TRAINER.<UPPER_CASE> or a top-level UPPER_CASE key")
    if path in BLOCKS and BLOCKS[path][0] is not keys:
        raise UserError(f"config block {path} is registered twice ({BLOCKS[path][1] or 'a block'} and "
                        f"{method or 'a block'})")
    BLOCKS[path] = (keys, method)


def make_block(path: str):
    keys, method = BLOCKS[path]
    node = CN()
    if method is not None:
        node.PREC = "fp16"  # fp32, fp16, bf16 or amp (the references' precision by default; CPU: see CPU_HALF)
    value = keys(node)
    return node if value is None else value


def phrase_context_keys(c, n_ctx: int = 16, ctx_init: str = "", csc: Optional[bool] = False,
                      position: Optional[str] = "end"):
    """The learned-context keys of the CoOp family: ``CTX_INIT`` is a phrase whose every word is learned (then
    ``N_CTX`` is ignored), else ``N_CTX`` random vectors."""
    c.N_CTX = n_ctx  # learned context vectors (ignored when CTX_INIT is set: its number of words is used)
    c.CTX_INIT = ctx_init  # initialise the context from this phrase, e.g. "a photo of a"
    if csc is not None:
        c.CSC = csc  # class-specific context (one set of N_CTX vectors per class)
    if position is not None:
        c.CLASS_TOKEN_POSITION = position  # end, middle or front
    return c


def deep_prompt_keys(c, n_text: int = 2, n_vision: int = 2, depth_text: int = 9, depth_vision: int = 9,
              ctx_init: str = "a photo of a"):
    """The keys of deep prompts in both encoders (the IVLP family): ``CTX_INIT``'s first ``N_CTX_TEXT`` tokens are
    learned (when ``N_CTX_TEXT <= 4``), else ``N_CTX_TEXT`` random vectors."""
    c.N_CTX_VISION = n_vision  # vision prompt tokens per layer
    c.N_CTX_TEXT = n_text  # text context tokens per layer
    c.CTX_INIT = ctx_init  # text prompt; its first N_CTX_TEXT tokens are learned (if N_CTX_TEXT <= 4)
    c.PROMPT_DEPTH_VISION = depth_vision  # vision layers 0 .. depth-1 get prompts (0: none)
    c.PROMPT_DEPTH_TEXT = depth_text  # text layers 0 .. depth-1 get prompts
    return c


def project_keys(cfg: CN) -> None:
    """The keys this project adds to Dassl's (the real Dassl has none of them)."""
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (CoOp's base-to-new split)
    cfg.OPTIM.EPS = 1e-8  # the Adam family's eps (torch's default; some references' configs set 1e-3)
    cfg.CPU_HALF = False  # run fp16 and amp for real on a CPU instead of falling back to fp32
    cfg.CPU_REUSE_MEMORY = True  # on a CPU, keep freed activation buffers for reuse (clip.host_memory)
    cfg.COMPILE_STEP = "off"  # torch.compile the prompted CLIP: off, eager, inductor or cudagraphs (COMPILE_STEPS)
    cfg.TEST.SAVE_PREDICTIONS = False  # write predictions.csv (each test image's top classes) beside result.json
    cfg.TRACKER = "tensorboard"  # where scalars go: comma-separated tensorboard, wandb, mlflow; none: nowhere


#: ``COMPILE_STEP`` -> the arguments of ``nn.Module.compile`` (in place: state-dict keys unchanged). ``eager``
#: traces only (dynamo, no code generation: a check of the plumbing, exact); ``inductor`` generates fused kernels
#: (float rounding changes slightly); ``cudagraphs`` is inductor with CUDA graphs (``mode="reduce-overhead"``,
#: CUDA only). Off by default: on a CPU inductor compiles for minutes, and on a GPU it is kept off until
#: ``bench.gpu_check`` has measured it faster and exact.
COMPILE_STEPS = {"off": None, "eager": dict(backend="eager"), "inductor": dict(backend="inductor"),
                 "cudagraphs": dict(backend="inductor", mode="reduce-overhead")}


def extend_cfg(cfg: CN) -> CN:
    """Add the project's keys and every registered block to a Dassl default config (in place) and return it.

    Keys already present (for example when a user's own ``train.py`` added them first) are left as they are.
    """
    fresh = CN()
    fresh.DATASET, fresh.OPTIM, fresh.TEST = CN(), CN(), CN()
    project_keys(fresh)
    for section, node in fresh.items():
        if isinstance(node, CN):
            for key, value in node.items():
                if key not in cfg[section]:
                    cfg[section][key] = value
        elif section not in cfg:
            cfg[section] = node
    for path in BLOCKS:
        head, _, last = path.rpartition(".")
        parent = cfg.TRAINER if head else cfg
        if last not in parent:
            parent[last] = make_block(path)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------
def _fail(key, value, allowed):
    raise UserError(f"{key} is {value!r}; {allowed}")


def check_precision(cfg, block: str) -> None:
    prec = cfg.TRAINER[block].PREC
    if prec not in PRECISIONS:
        _fail(f"TRAINER.{block}.PREC", prec, f"choose one of {', '.join(PRECISIONS)} (fp16 and amp fall back to "
                                             "fp32 on a CPU unless CPU_HALF True)")


#: the shared prompt-size keys and their smallest value (where a method block has them)
PROMPT_SIZES = {"N_CTX": 1, "N_CTX_TEXT": 0, "N_CTX_VISION": 0, "PROMPT_DEPTH": 1, "PROMPT_DEPTH_TEXT": 0,
                "PROMPT_DEPTH_VISION": 0}


def check_prompt_sizes(node, path: str) -> None:
    """The shared prompt-size keys of a block (``N_CTX``, ``PROMPT_DEPTH_*``, ...) are whole numbers in range."""
    for key, low in PROMPT_SIZES.items():
        if key in node:
            check_range(node[key], f"{path}.{key}", low, None, integer=True)


def check_choice(cfg_node, key: str, path: str, choices) -> None:
    if cfg_node[key] not in choices:
        _fail(path, cfg_node[key], f"choose one of {', '.join(map(str, choices))}")


def check_range(value, key: str, low=None, high=None, integer: bool = False, what: str = "") -> None:
    """``low <= value <= high`` (either bound may be None); ``integer``: a whole number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = {(True, True): f"between {low} and {high}", (True, False): f"at least {low}",
                  (False, True): f"at most {high}", (False, False): "a number"}[(low is not None, high is not None)]
        _fail(key, value, f"it must be {'a whole number ' if integer else ''}{bounds}{what}")


#: Dassl keys the methods read: (low, high, integer, note)
RANGES: Dict[str, tuple] = {
    "OPTIM.LR": (0, None, False, ""),
    "OPTIM.MAX_EPOCH": (1, None, True, " (epochs to train)"),
    "OPTIM.WEIGHT_DECAY": (0, None, False, ""),
    "OPTIM.MOMENTUM": (0, 1, False, ""),
    "OPTIM.EPS": (0, None, False, ""),
    "OPTIM.WARMUP_EPOCH": (-1, None, True, " (-1 or 0: no warm-up)"),
    "OPTIM.WARMUP_CONS_LR": (0, None, False, ""),
    "OPTIM.WARMUP_MIN_LR": (0, None, False, ""),
    "DATALOADER.TRAIN_X.BATCH_SIZE": (1, None, True, ""),
    "DATALOADER.TEST.BATCH_SIZE": (1, None, True, ""),
    "DATALOADER.NUM_WORKERS": (0, None, True, ""),
    "DATASET.NUM_SHOTS": (-1, None, True, " (-1: every image)"),
    "TRAIN.PRINT_FREQ": (1, None, True, ""),
    "TRAIN.CHECKPOINT_FREQ": (0, None, True, " (0: only the last epoch)"),
    "SEED": (-1, None, True, " (-1: not seeded)"),
}


def check_values(cfg, training: bool = True) -> None:
    """Ranges and choices of the Dassl keys the methods use, before anything is built (one :class:`UserError`).
    ``training``: the run trains (an evaluation-only run may keep ``OPTIM.MAX_EPOCH`` at any value)."""
    for key, (low, high, integer, note) in RANGES.items():
        if key == "OPTIM.MAX_EPOCH" and not training:
            continue
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if last not in node:
            continue
        value = node[last]
        if key == "OPTIM.LR" and value is not None and value <= 0:
            _fail(key, value, "the learning rate must be positive")
        check_range(value, key, low, high, integer, note)
    if cfg.DATASET.NUM_SHOTS == 0:
        _fail("DATASET.NUM_SHOTS", 0, "give the images per class (1, 2, 4, 8, 16, ...), or -1 for every image")
    for key in ("CHECKPOINT_ITERS",):
        if key in cfg.TRAIN:
            check_range(cfg.TRAIN[key], f"TRAIN.{key}", 0, None, True, " (0: only at epoch ends)")
    check_choice(cfg.OPTIM, "WARMUP_TYPE", "OPTIM.WARMUP_TYPE", ("constant", "linear"))
    if OPTIMIZERS is not None:
        check_choice(cfg.OPTIM, "NAME", "OPTIM.NAME", OPTIMIZERS)
    if SCHEDULERS is not None:
        check_choice(cfg.OPTIM, "LR_SCHEDULER", "OPTIM.LR_SCHEDULER", SCHEDULERS)
    check_choice(cfg.DATASET, "SUBSAMPLE_CLASSES", "DATASET.SUBSAMPLE_CLASSES", ("all", "base", "new"))
    if "TRACKER" in cfg and check_trackers is not None:  # None on the real Dassl (tensorboard only)
        check_trackers(cfg.TRACKER)
    check_choice(cfg.TEST, "FINAL_MODEL", "TEST.FINAL_MODEL", ("last_step", "best_val"))
    if "COMPILE_STEP" in cfg:
        check_choice(cfg, "COMPILE_STEP", "COMPILE_STEP", tuple(COMPILE_STEPS))
        if cfg.COMPILE_STEP == "cudagraphs" and not (cfg.USE_CUDA and torch.cuda.is_available()):
            _fail("COMPILE_STEP", "cudagraphs", "CUDA graphs need a GPU (USE_CUDA True and CUDA available); use "
                  "inductor or eager on a CPU")
    size = tuple(cfg.INPUT.SIZE)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        _fail("INPUT.SIZE", size, "give (height, width) in pixels, e.g. (224, 224)")
