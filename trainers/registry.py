"""A method's identity, written once: :func:`register_method` and :func:`list_methods`; and the extensions that
plug into any method (:class:`Extension`, :func:`register_extension`).

Everything about a method that is not code follows from one registration on its trainer class::

    @register_method(keys=kgcoop_keys, scripts={"base2new": "vit_b16_ep100_ctxv1"},
                     counts=[Count("vit_b16_ep100_ctxv1", 2_048)])
    class KgCoOp(PromptTrainer): ...

- the trainer name (``--trainer``): the class name, registered in Dassl's ``TRAINER_REGISTRY``;
- the config block ``cfg.TRAINER.<NAME>`` (the name in upper case) with ``PREC`` and the method's ``keys``;
- the config folder ``configs/trainers/<name>/``, which must hold the demo's ``tiny_digits.yaml`` and every config
  named below;
- the protocol scripts' default configs (``scripts``);
- where frozen prompt sets of an extension sit beside the method's own prompts (``frozen_order``);
- an earlier phase the scripts run first (``setup``: PromptKD's teacher) and how generic code makes one;
- the learnable-parameter counts at ViT-B/16 (``counts``): the README's table and the tests read them from here.

A registration is checked when it happens (so when ``trainers`` is imported): a duplicate name, a missing config
folder, demo config or named config, or a block that does not match the folder is one :class:`UserError` naming
the method.
"""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from dassl.engine import TRAINER_REGISTRY

from .compat import UserError
from .config import register_block
from .prompts import ADAPT

#: the folder of method configs (``configs/trainers``)
CONFIG_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "trainers")
#: a frozen set's place in a method's ``frozen_order``
FROZEN = "frozen"


@dataclass(frozen=True)
class Count:
    """A row of the learnable-parameter table: the count at ViT-B/16 with ``config`` (and ``opts``), for
    ``classes`` classes (ImageNet's 500 base classes; it matters only for class-dependent parameters)."""

    config: str
    count: int
    opts: Tuple[str, ...] = ()
    classes: int = 500


@dataclass(frozen=True)
class EarlierRun:
    """An earlier run a method reads (PromptKD's teacher): made by ``trainer``; ``run_key`` names its folder and
    ``backbone_key`` its CLIP in this method's config. ``script``: what the protocol scripts run first."""

    trainer: str
    run_key: str
    backbone_key: str
    script: str


@dataclass(frozen=True)
class Method:
    name: str
    cls: type
    block: str
    config_dir: str
    learner_name: str
    scripts: Mapping[str, str]
    frozen_order: Tuple[Tuple[str, ...], Tuple[str, ...]]
    earlier_run: Optional[EarlierRun]
    counts: Tuple[Count, ...]
    aliases: Tuple[str, ...]
    trains: bool

    @property
    def config_folder(self) -> str:
        return osp.join(CONFIG_ROOT, self.config_dir)

    def config_path(self, name: str) -> str:
        return osp.join(self.config_folder, f"{name}.yaml")


METHODS: "OrderedDict[str, Method]" = OrderedDict()


def register_method(*, keys: Optional[Callable] = None, block: Optional[str] = None, learner: str = "prompt_learner",
                    config_dir: Optional[str] = None, scripts: Optional[Mapping[str, str]] = None,
                    frozen_order=((ADAPT, FROZEN), (FROZEN, ADAPT)), earlier_run: Optional[EarlierRun] = None,
                    counts: Sequence[Count] = (), aliases: Sequence[str] = (), trains: bool = True):
    """Class decorator: register a trainer as a method (see the module docstring).

    Args:
        keys: ``fn(node)`` that adds the method's own keys to its config block (``PREC`` is already there);
            None for a method that reads another method's block (``block``), as zero-shot CLIP reads CoOp's.
        block: the config block, default the class name in upper case.
        learner: the registered model's name, which is also its checkpoint folder (the references' names).
        config_dir: the config folder under ``configs/trainers``, default the class name.
        scripts: default config names of the protocol scripts, by key (``base2new``, ``crossdataset``,
            ``fewshot``, ``digits``; ``<key>@<dataset>``; ``fewshot:<shots>[@<dataset>]``).
        frozen_order: (text order, vision order) of the method's own set (``"adapt"``) and an extension's frozen
            sets (``"frozen"``), e.g. text ``[SOS][adapt][frozen]..`` and vision ``[CLS][patches][frozen][adapt]``.
        earlier_run: see :class:`EarlierRun`.
        counts: learnable parameters at ViT-B/16 (:class:`Count` rows).
        aliases: other names the scripts accept (``zsclip``).
        trains: False for evaluation-only methods.
    """
    def deco(cls):
        name = cls.__name__
        method = Method(
            name=name, cls=cls, block=block or name.upper(), config_dir=config_dir or name, learner_name=learner,
            scripts=dict(scripts or {}), frozen_order=(tuple(frozen_order[0]), tuple(frozen_order[1])), earlier_run=earlier_run,
            counts=tuple(counts), aliases=tuple(aliases), trains=trains)
        check_method(method, owns_block=keys is not None)
        if keys is not None:
            register_block(f"TRAINER.{method.block}", keys, method=name)
        cls.METHOD = method
        TRAINER_REGISTRY.register(cls)
        METHODS[name] = method
        return cls

    return deco


def check_method(method: Method, owns_block: bool) -> None:
    """The checks of a registration (one clear error naming the method)."""
    def fail(why):
        raise UserError(f"method {method.name} ({method.cls.__module__}): {why}")

    if method.name in METHODS or method.name in TRAINER_REGISTRY.registered_names():
        fail(f"the name is registered twice (also by {getattr(METHODS.get(method.name), 'cls', None)})")
    if owns_block and method.block != method.config_dir.upper():
        fail(f"its config block TRAINER.{method.block} does not match its config folder "
             f"configs/trainers/{method.config_dir} (the block is the folder's name in upper case)")
    if not osp.isdir(method.config_folder):
        fail(f"no config folder {method.config_folder}")
    demo = method.scripts.get("digits", "tiny_digits")
    named = {demo, *method.scripts.values(), *(c.config for c in method.counts)}
    missing = sorted(n for n in named if not osp.isfile(method.config_path(n)))
    if missing:
        fail(f"configs/trainers/{method.config_dir}/ has no {', '.join(m + '.yaml' for m in missing)} (the demo's "
             f"{demo}.yaml and every config the registration names must exist)")
    for order in method.frozen_order:
        if sorted(order) != sorted((ADAPT, FROZEN)):
            fail(f"frozen_order {method.frozen_order} must place {ADAPT!r} and {FROZEN!r} once in each encoder")


def list_methods() -> List[Method]:
    """Every registered method, by name."""
    return [METHODS[n] for n in sorted(METHODS)]


def method_of(name: str) -> Method:
    """The method registered as ``name`` (a trainer name or alias, any letter case)."""
    wanted = str(name).lower()
    for method in METHODS.values():
        if wanted in {method.name.lower(), *(a.lower() for a in method.aliases)}:
            return method
    raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")


# ----------------------------------------------------------------------------------------------------------
# Extensions
# ----------------------------------------------------------------------------------------------------------
class Extension:
    """Something that plugs into any method through the contract, switched on by its config (CasPL's boosting
    prompts beside a method, DePT's head on a method's features). Every hook has a neutral default.

    - :meth:`frozen_sets`: frozen prompt sets beside the method's own, placed by the method's ``frozen_order``;
    - :meth:`learner_modules`: modules trained with the method's prompt learner (they become its children, so
      they are optimised, saved and loaded with it), each with a learning-rate multiplier
      (:meth:`lr_multipliers`);
    - :meth:`loss`: the training loss on top of the method's (:class:`~trainers.base.LossOutput` in and out);
    - :meth:`eval_logits`: the evaluation logits on top of the method's;
    - :meth:`result_extras`: what the run's ``result.json`` records.

    An extension also names, per method, the configs the protocol scripts use with it (:attr:`scripts`; the
    scripts run it with ``VARIANT=<name in lower case>``) and the learnable counts with it (:attr:`counts`): the
    methods themselves know nothing of their extensions.
    """

    #: the name results tables show after the method's (``MaPLe + CasPL``); in lower case, the scripts' VARIANT
    name: str = ""
    #: method -> the protocol scripts' configs with this extension (the keys of a method's ``scripts``)
    scripts: Mapping[str, Mapping[str, str]] = {}
    #: method -> learnable counts at ViT-B/16 with this extension (:class:`Count` rows)
    counts: Mapping[str, Sequence[Count]] = {}

    def enabled(self, cfg) -> bool:
        return False

    def check_config(self, cfg) -> None:
        """Config-only checks, before anything is built or written (raise :class:`UserError`)."""

    def frozen_sets(self, trainer, classnames, clip_model) -> Dict:
        return {}

    def learner_modules(self, trainer, classnames, clip_model) -> Dict:
        return {}

    def lr_multipliers(self, cfg) -> Dict[str, float]:
        return {}

    def loss(self, trainer, batch, out, result):
        return result

    def eval_logits(self, trainer, out, logits):
        return logits

    def result_extras(self, trainer) -> Dict:
        return {}


EXTENSIONS: "OrderedDict[str, Extension]" = OrderedDict()


def register_extension(extension: Extension) -> Extension:
    """Register an extension; its configs must exist (``configs/trainers/<method>/<config>.yaml``)."""
    where = f"extension {extension.name!r} ({type(extension).__module__})"
    if not extension.name or extension.name in EXTENSIONS:
        raise UserError(f"{where}: a name is needed, once")
    named = {(m, c) for m, configs in extension.scripts.items() for c in configs.values()}
    named |= {(m, c.config) for m, counts in extension.counts.items() for c in counts}
    missing = sorted(f"configs/trainers/{m}/{c}.yaml" for m, c in named
                     if not osp.isfile(osp.join(CONFIG_ROOT, m, f"{c}.yaml")))
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)}")
    EXTENSIONS[extension.name] = extension
    return extension


def extension_named(name: str) -> Extension:
    """The extension named ``name`` (any letter case)."""
    for extension in EXTENSIONS.values():
        if extension.name.lower() == str(name).lower():
            return extension
    raise KeyError(f"unknown extension {name!r}; registered: {', '.join(EXTENSIONS)}")


def all_counts() -> List[Tuple[str, Count]]:
    """Every registered learnable count, as (method, count): the methods' own, then each extension's."""
    rows = [(m.name, c) for m in list_methods() for c in m.counts]
    return rows + [(m, c) for e in EXTENSIONS.values() for m, counts in e.counts.items() for c in counts]


def enabled_extensions(cfg) -> List[Extension]:
    return [e for e in EXTENSIONS.values() if e.enabled(cfg)]
