"""The trainer base of every prompt method: :class:`PromptTrainer` (a Dassl ``TrainerX``), and :class:`LossOutput`.

A method (one module, registered with :func:`~trainers.registry.register_method`) declares

* its **prompt learner** (:meth:`PromptTrainer.build_prompt_learner`): the one trainable module, and the only
  thing its checkpoints hold (with the class names it was trained on, :mod:`trainers.checkpoints`); tensors with
  one row per class are declared by the module (``class_dependent``);
* optionally **frozen prompt sets** of its own (:meth:`~PromptTrainer.build_frozen_sets`, loaded from an earlier
  run with :meth:`~PromptTrainer.load_frozen_set`), **frozen models** (:meth:`~PromptTrainer.teacher`), another
  prompted CLIP (:meth:`~PromptTrainer.build_clip_model`);
* its **loss** (:meth:`~PromptTrainer.loss`): it sees the batch and the one model output
  (:class:`~trainers.prompted_clip.ModelOutput`) and returns a :class:`LossOutput` -- the loss, the logits and
  named terms logged beside the loss (log.txt and tensorboard);
* optionally its **evaluation logits** (:meth:`~PromptTrainer.eval_logits`, from the same model output) and a
  **gradient hook** (:meth:`~PromptTrainer.adjust_gradients`, between backward and the optimizer step).

Nothing else: precision, freezing, the optimiser, the training step, evaluation with text features computed once,
checkpoints and their loading are written once here, and extensions (:class:`~trainers.registry.Extension`:
CasPL's boosting prompts, DePT's head) plug into every method through the same hooks. No state is kept on the
trainer between hooks: what the gradient hook needs travels in the :class:`LossOutput`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip import MASTER_DTYPE
from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint

from .checkpoints import FrozenSetOrigins, load_prompt_set, read_prompt_state, record_classes, resolve_checkpoint
from .compat import UserError
from .config import COMPILE_STEPS, check_precision, check_prompt_sizes
from .prompted_clip import ModelOutput, PromptedCLIP
from .prompts import ADAPT, count_learnable
from .registry import FROZEN, enabled_extensions


@dataclass
class LossOutput:
    """What a method's loss hook returns for one training batch.

    loss: the scalar that backward runs on. logits: (B, C), for the logged training accuracy.
    terms: named terms logged beside the loss (log.txt and tensorboard), e.g. ``{"kl": ..., "text": ...}``.
    ce: the cross-entropy on ``logits`` when the loss contains it with weight 1 (an extension such as DePT
        reweights it); None for losses without one.
    aux: what this method's :meth:`PromptTrainer.adjust_gradients` needs from this step (never logged).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    ce: Optional[torch.Tensor] = None
    aux: Dict[str, Any] = field(default_factory=dict)


def cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy computed in fp32 whatever the logits' precision."""
    return F.cross_entropy(logits.to(MASTER_DTYPE), label)


def load_clip(cfg, name: Optional[str] = None, key: str = "MODEL.BACKBONE.NAME") -> nn.Module:
    """Load the frozen CLIP named by ``name`` (default ``cfg.MODEL.BACKBONE.NAME``) on the CPU, in fp32.

    The name is a released model (``ViT-B/16``), a registered project model (``tiny-digits``) or a checkpoint
    path. Weights are cast to the run's precision later, once the prompt learner has read what it needs. ``key``
    is the config key that named it, for the error message.
    """
    name = name or cfg.MODEL.BACKBONE.NAME
    try:
        model, _ = clip.load(name, device="cpu", precision="fp32")
    except clip.DownloadError as err:  # offline or a bad checksum: the message says which file to put where
        raise UserError(f"CLIP backbone {name!r}: {err}") from err
    except (ValueError, FileNotFoundError) as err:  # neither a registered name nor a checkpoint file
        raise UserError(f"{key}: {err}; give a model name or the path of a CLIP checkpoint") from err
    return model.eval()


class ForClasses:
    """A trainer that can be built for given class names without reading a dataset (no data loaders): to
    predict with a trained run on new classes, to export its classifier, in tests. ``Trainer(cfg)`` reads the
    dataset as Dassl does; ``Trainer(cfg, classnames=[...])`` does not."""

    def __init__(self, cfg, classnames: Optional[Sequence[str]] = None):
        self._given_classnames = None if classnames is None else [str(c) for c in classnames]
        super().__init__(cfg)

    def build_data_loader(self):
        names = self._given_classnames
        if names is None:
            return super().build_data_loader()
        self.train_loader_x = self.train_loader_u = self.val_loader = self.test_loader = None
        self.num_classes, self.num_source_domains = len(names), 1
        self.lab2cname = dict(enumerate(names))
        self.dm = None

    @property
    def classnames(self):
        """The run's class names (its dataset's, or those it was built for)."""
        if self._given_classnames is not None:
            return list(self._given_classnames)
        return list(self.dm.dataset.classnames)


class PromptTrainer(ForClasses, TrainerX):
    """Dassl ``TrainerX`` for a frozen CLIP with prompt sets (see the module docstring for what a method declares).

    The registered model is the prompt learner, under the method's ``learner`` name (the references' names, so
    their folders and checkpoints keep working).
    """

    #: set by :func:`~trainers.registry.register_method`
    METHOD = None

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.METHOD.block]

    @classmethod
    def check_config(cls, cfg) -> None:
        """Config-only checks of the method's keys (and of enabled extensions'), run while the config is built,
        before a run folder exists; raise :class:`UserError`. Methods extend it (call ``super()``)."""
        check_precision(cfg, cls.METHOD.block)
        check_prompt_sizes(cfg.TRAINER[cls.METHOD.block], f"TRAINER.{cls.METHOD.block}")
        for extension in enabled_extensions(cfg):
            extension.check_config(cfg)

    def check_cfg(self, cfg):
        type(self).check_config(cfg)
        self.extensions = enabled_extensions(cfg)

    # -- what a method declares ----------------------------------------------------------------------------
    def build_prompt_learner(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_frozen_sets(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> Dict[str, nn.Module]:
        """The method's own frozen prompt sets by name (default none); load them with :meth:`load_frozen_set`."""
        return {}

    def frozen_sets(self, cfg, classnames, clip_model) -> Tuple[Dict[str, nn.Module], Optional[tuple], Optional[tuple]]:
        """Every frozen set -- the extensions' first, placed by the method's ``frozen_order``, then the method's own
        -- and the (text, vision) orders; None: the learner first, then the sets."""
        sets, placed = {}, []
        for extension in self.extensions:
            for name, module in extension.frozen_sets(self, classnames, clip_model).items():
                sets[name] = module
                placed.append(name)
        own = self.build_frozen_sets(cfg, classnames, clip_model)
        sets.update(own)
        if not placed:
            return sets, None, None

        def expand(order):
            out = []
            for name in order:
                out += placed if name == FROZEN else [name]
            return tuple(out) + tuple(own)

        text_order, vision_order = self.METHOD.frozen_order
        return sets, expand(text_order), expand(vision_order)

    def build_clip_model(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        learner = self.build_prompt_learner(cfg, classnames, clip_model)
        sets, text_order, vision_order = self.frozen_sets(cfg, classnames, clip_model)
        return PromptedCLIP(clip_model, learner, sets, text_order=text_order, vision_order=vision_order)

    def loss(self, batch: Dict[str, Any], out: ModelOutput) -> LossOutput:
        """The training loss of a batch (``batch["img"]``, ``batch["label"]`` on the device) from the model output.
        Default: cross-entropy on the logits."""
        ce = cross_entropy(out.logits, batch["label"])
        return LossOutput(ce, out.logits, ce=ce)

    def eval_logits(self, out: ModelOutput) -> torch.Tensor:
        """The evaluation logits from the model output. Default: ``out.logits``."""
        return out.logits

    def training_iterations(self) -> Optional[int]:
        """The run's length in optimizer steps, for a method whose reference counts iterations rather than epochs;
        None (the default): ``OPTIM.MAX_EPOCH`` epochs. With a count N, the run takes the epochs N steps need (and
        records them in ``OPTIM.MAX_EPOCH``), its last epoch stops at step N, and the schedule
        (:meth:`lr_scheduler`) steps after every iteration instead of every epoch."""
        return None

    def lr_scheduler(self, optim):
        """The learning-rate schedule (default: ``OPTIM``'s, by epoch)."""
        return build_lr_scheduler(optim, self.cfg.OPTIM)

    def adjust_gradients(self, result: LossOutput) -> None:
        """Between backward and the optimizer step, with final gradients: unscaled under amp (a step the GradScaler
        skips for inf/NaN stays skipped), summed over processes under torchrun, before weight decay and momentum.
        ``result``: this step's :class:`LossOutput` (its ``aux``). Default: nothing."""

    # -- helpers a method may use ----------------------------------------------------------------------------
    def load_frozen_set(self, name: str, module: nn.Module, source: str, model_name: str,
                        epoch: Optional[int] = None, sizes=None, what: Optional[str] = None) -> nn.Module:
        """Load the frozen set ``name`` from an earlier run and record its origin (checkpoint + result.json).
        ``sizes``: as :func:`~trainers.checkpoints.load_prompt_set`'s (named sizes, both values in the error)."""
        origin = load_prompt_set(module, source, model_name, epoch, what=what or f"frozen prompt set {name!r}",
                                 sizes=sizes)
        print(f'Frozen prompt set {name!r} from "{origin["path"]}" (epoch {origin["epoch"]}, '
              f'sha256 {origin["sha256"][:12]}...)')
        self.frozen_origins[name] = origin
        return module

    def result_extras(self) -> dict:
        """What this run adds to its ``result.json`` (``run_info["result_extras"]``, written at the end)."""
        if getattr(self, "run_info", None) is None:
            self.run_info = {}
        return self.run_info.setdefault("result_extras", {})

    def teacher(self, name: str, key: str = "MODEL.BACKBONE.NAME") -> nn.Module:
        """A frozen CLIP by model name or checkpoint path, loaded once per run in the run's precision and device.

        It lives in ``self.model.teachers`` (moved with the model, never in checkpoints). ``key``: the config key
        that named it (errors name it).
        """
        slot = self._teacher_slot(name)
        if slot not in self.model.teachers:
            print(f"Loading the frozen teacher CLIP {name!r}")
            model = load_clip(self.cfg, name, key)
            for p in model.parameters():
                p.requires_grad_(False)
            self.precision.cast_model(model)
            self.model.teachers[slot] = model.to(self.device).eval()
        return self.model.teachers[slot]

    def release_teacher(self, name: str) -> None:
        """Free a teacher loaded by :meth:`teacher` once nothing needs it any more (e.g. its outputs are cached)."""
        slot = self._teacher_slot(name)
        if slot in self.model.teachers:
            del self.model.teachers[slot]

    @staticmethod
    def _teacher_slot(name: str) -> str:
        return name.replace("/", "_").replace(".", "_")  # a module name: no dots

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self):
        cfg = self.cfg
        classnames = self.classnames
        self.precision = clip.resolve_precision(self.method_cfg.PREC, self.device,
                                                half_on_cpu=bool(cfg.get("CPU_HALF", False)))
        self.frozen_origins: Dict[str, dict] = {}

        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__} prompts for {len(classnames)} classes")
        # The prompt sets read fp32 embeddings; CLIP is cast to the run's precision afterwards.
        self.model = self.build_clip_model(cfg, classnames, clip_model)
        learner = self.model.prompt_learner
        multipliers = self.attach_extension_modules(learner, classnames, self.model.clip_model)
        self.precision.cast_model(self.model.clip_model)

        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith("prompt_learner."))
        record_classes(learner, classnames)
        if self.frozen_origins:
            learner.add_module("frozen_set_origins", FrozenSetOrigins(self.frozen_origins))
            self.result_extras()["frozen_sets"] = dict(self.frozen_origins)
        for extension in self.extensions:
            self.result_extras().update(extension.result_extras(self))
        if self.extensions:
            self.result_extras()["extensions"] = [e.name for e in self.extensions]
        names = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {names}")
        print(f"Number of learnable parameters: {count_learnable(self.model):,}")

        self.model.to(self.device)
        self.model.refresh_text_dependency()
        compile_kw = COMPILE_STEPS[cfg.get("COMPILE_STEP", "off")]
        if compile_kw is not None:  # compiled in place: the same module, the same state-dict keys
            print(f"Compiling the model's forward (COMPILE_STEP {cfg.COMPILE_STEP}: {compile_kw})")
            self.model.compile(**compile_kw)
        self.optim = self.build_optimizer(learner, multipliers)
        self._iterations = self._plan_iterations()
        self.sched = self.lr_scheduler(self.optim)
        self.register_model(self.METHOD.learner_name, learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_grad_scaler else None

    def _plan_iterations(self) -> Optional[int]:
        """:meth:`training_iterations`, and the epochs they take recorded (None without a count or a loader)."""
        iterations = self.training_iterations()
        loader = getattr(self, "train_loader_x", None)
        if iterations is None or loader is None:
            return None
        self._full_train_loader = loader
        epochs = -(-int(iterations) // max(len(loader), 1))
        frozen = self.cfg.is_frozen()
        self.cfg.defrost()
        self.cfg.OPTIM.MAX_EPOCH = self.max_epoch = epochs
        if frozen:
            self.cfg.freeze()
        self._iterations_note = f"{iterations} iterations of {len(loader)} batches per epoch: {epochs} epoch(s)"
        return int(iterations)

    def before_train(self):
        """The training length of an iteration-counted run, printed when training starts (not by eval-only runs)."""
        super().before_train()
        if getattr(self, "_iterations", None):
            print(self._iterations_note)

    def before_epoch(self):
        """With an iteration count, the last epoch's loader stops at the count."""
        super().before_epoch()
        if getattr(self, "_iterations", None):
            full = self._full_train_loader
            left = self._iterations - self.epoch * len(full)
            self.train_loader_x = full if left >= len(full) else _FirstBatches(full, self, left)

    def attach_extension_modules(self, learner: nn.Module, classnames, clip_model) -> Dict[str, float]:
        """Add the enabled extensions' modules to the learner (trained, saved and loaded with it); returns their
        learning-rate multipliers by child name."""
        multipliers = {}
        for extension in self.extensions:
            for name, module in extension.learner_modules(self, classnames, clip_model).items():
                learner.add_module(name, module)
            multipliers.update(extension.lr_multipliers(self.cfg))
        return multipliers

    def build_optimizer(self, learner: nn.Module, multipliers: Dict[str, float]):
        """``cfg.OPTIM``'s optimizer over the learner; the children named in ``multipliers`` get ``LR x`` their
        multiplier (their own parameter group). ``OPTIM.EPS`` applies on either engine (the real Dassl's
        ``build_optimizer`` does not read it)."""
        cfg = self.cfg.OPTIM
        if multipliers:
            special = {name: list(getattr(learner, name).parameters()) for name in multipliers}
            taken = {id(p) for params in special.values() for p in params}
            groups = [{"params": [p for p in learner.parameters() if id(p) not in taken]}]
            groups += [{"params": params, "lr": cfg.LR * float(multipliers[name])} for name, params in special.items()]
            optim = build_optimizer(learner, cfg, param_groups=groups)
        else:
            optim = build_optimizer(learner, cfg)
        for group in optim.param_groups:
            if "eps" in group:
                group["eps"] = float(cfg.EPS)
        return optim

    # -- training -----------------------------------------------------------------------------------------
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        batch = {**batch, "img": image, "label": label}
        with self.precision.autocast(self.device):
            out = self.model(image)
            result = self.loss(batch, out)
            for extension in self.extensions:
                result = extension.loss(self, batch, out, result)
        self.model_zero_grad()
        if self.scaler is not None:
            self.detect_anomaly(result.loss)
            self.scaler.scale(result.loss).backward()
            optims = [optim for optim in self._optims.values() if optim is not None]
            for optim in optims:  # the hook sees true gradients; a step with inf/NaN stays skipped by step()
                self.scaler.unscale_(optim)
            self.adjust_gradients(result)
            for optim in optims:
                self.scaler.step(optim)
            self.scaler.update()
        else:
            self.model_backward(result.loss)
            self.adjust_gradients(result)
            self.model_update()
        summary = {"loss": result.loss.item(),
                   "acc": compute_accuracy(result.logits.to(MASTER_DTYPE), label)[0].item()}
        summary.update({name: float(torch.as_tensor(value).detach()) for name, value in result.terms.items()})
        if getattr(self, "_iterations", None) or (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    # -- evaluation ---------------------------------------------------------------------------------------
    def model_inference(self, image):
        with self.precision.autocast(self.device):
            out = self.model(image)
            logits = self.eval_logits(out)
            for extension in self.extensions:
                logits = extension.eval_logits(self, out, logits)
        return logits.to(MASTER_DTYPE)

    @contextlib.contextmanager
    def evaluating(self):
        """The evaluation path (``test()`` and prediction on new images): the model in eval mode, no gradients, the
        run's precision, prompts and text features computed once for the block; call :meth:`model_inference`
        inside it."""
        self.set_model_mode("eval")
        with torch.no_grad(), self.precision.autocast(self.device), self.model.frozen_text_features():
            yield

    def test(self, split=None):
        with self.evaluating():
            return super().test(split)

    # -- checkpoints --------------------------------------------------------------------------------------
    def load_model(self, directory, epoch=None):
        """Load the learner of the run in ``directory`` (its checkpoint by :func:`~trainers.checkpoints.resolve_checkpoint`:
        the given epoch; else ``model-best.pth.tar`` when the run kept one, else the epoch its ``result.json``
        records, else its newest save).

        Accepts this project's checkpoints (the learner's parameters only) and the original repositories' (read by
        :func:`~trainers.checkpoints.read_prompt_state` with the method's declarations: :meth:`convert_reference_state`,
        :meth:`convert_state`, :attr:`REFERENCE_UNUSED`; their folders by :attr:`REFERENCE_FOLDERS`).
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            path, _ = resolve_checkpoint(directory, name, epoch, what="--model-dir", folders=self.REFERENCE_FOLDERS)
            checkpoint = load_checkpoint(path)
            state = read_prompt_state(checkpoint, path, type(self), backbone=self.model.clip_model,
                                      what="checkpoint")
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint.get("epoch")})')
            module = self._models[name]
            try:
                missing, unexpected = module.load_state_dict(state, strict=False)
            except RuntimeError as err:  # shapes that differ (another prompt size or depth)
                first = str(err).strip().splitlines()
                raise UserError(f'the checkpoint "{path}" does not fit this {type(self).__name__} configuration '
                                f"({' '.join(first[1:2] or first[:1]).strip()[:300]}); use the config file and "
                                "options of the training run") from err
            missing = [k for k in missing if not k.endswith("_extra_state")]
            if missing or unexpected:
                unexpected = [f"{k} {tuple(state[k].shape) if torch.is_tensor(state[k]) else ''}".strip()
                              for k in sorted(unexpected)]
                raise UserError(
                    f'the checkpoint "{path}" does not match this {type(self).__name__} configuration: missing '
                    f"{sorted(missing)}, unexpected {unexpected}; use the trainer, config file and options of the "
                    "training run (prompt depth, context length, add/remove counts)")
            self.loaded_epoch = checkpoint.get("epoch")

    #: what the original repository's checkpoints hold that its code never uses: ``{pattern: why}`` (fnmatch
    #: patterns on the prompt learner's names; set aside with one log line, see ``read_prompt_state``)
    REFERENCE_UNUSED: Dict[str, str] = {}
    #: the checkpoint folders the original repository's runs wrote, when they differ from the learner's name
    REFERENCE_FOLDERS: Tuple[str, ...] = ()

    @staticmethod
    def convert_state(state: dict) -> dict:
        """Map a reference checkpoint's parameter names to this method's (identity by default)."""
        return state

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        """Map a whole checkpoint before the prompt learner's entries are taken out (identity by default).

        For references that keep learned tensors outside ``prompt_learner`` (IVLP's and VPT's prompts live in the
        encoders' blocks): rename them to ``prompt_learner.<name>``.
        """
        return state_dict


class _FirstBatches:
    """A training loader cut after ``count`` batches of the epoch (a resumed epoch's skipped batches included)."""

    def __init__(self, loader, trainer, count: int):
        self.loader, self.trainer, self.count = loader, trainer, count

    def __len__(self):
        return self.count

    @property
    def batch_sampler(self):
        return self.loader.batch_sampler

    def __iter__(self):
        if self.count <= 0:
            return
        for batch in self.loader:
            yield batch
            if self.trainer.batch_idx + 1 >= self.count:
                return


__all__ = ["PromptTrainer", "ForClasses", "LossOutput", "cross_entropy", "load_clip", "ADAPT"]
