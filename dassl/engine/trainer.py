"""Trainers: the generic container and loop (``TrainerBase``), its single-model version with data, evaluation and
checkpoints (``SimpleTrainer``), and the loops over labelled data (``TrainerX``) or labelled + unlabelled data
(``TrainerXU``).

A method subclasses ``TrainerX`` and implements ``build_model`` (register its modules with ``register_model``) and
``forward_backward(batch)`` (returning a dict of losses to log); it steps its scheduler itself with
``update_lr()`` on the last batch of an epoch. The lifecycle, log lines and checkpoint files follow Dassl 0.6.3.
Beyond Dassl, ``before_optimizer_step(names)`` is a hook between the backward pass and the optimizer step (see
its docstring), for methods that change gradients (ProGrad's gradient projection).

Beyond Dassl, every checkpoint also stores the random states (Python, NumPy, torch, CUDA), the states of
generators owned by the training loaders (if any) and the best validation result, so a resumed run continues bit
for bit; a finished run writes ``<OUTPUT_DIR>/result.json`` (see :mod:`dassl.engine.run_result`); progress bars
are shown only when stdout is a terminal.

Crash safety (not in Dassl, see "Runs that survive anything" in the README):

* ``TRAIN.CHECKPOINT_LAST`` (default on): after every epoch that writes no numbered checkpoint, each registered
  model is saved to ``<name>/model-last.pth.tar`` (atomically; the ``checkpoint`` pointer names it), so a run
  killed at any moment loses at most the epoch in progress. A numbered save replaces it (the file is removed).
* ``TRAIN.CHECKPOINT_ITERS = N``: also every N iterations within an epoch. Such a checkpoint records the batches
  done and the random state at the start of the epoch; resuming replays the epoch's draw of the data order
  (without loading the skipped images), skips those batches and continues with the random state of the moment
  of the save, so with ``DATALOADER.NUM_WORKERS 0`` the run continues bit for bit. With workers the order is
  the same but the augmentations of the rest of that one epoch differ (the workers restart with fresh seeds).
* A resumed run opens tensorboard with ``purge_step`` at its first new iteration, so events a killed attempt
  wrote after its last checkpoint are dropped and the curves continue without duplicate steps.
"""
import datetime
import errno
import os
import os.path as osp
import sys
import threading
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from dassl.evaluation import build_evaluator
from dassl.modeling import build_backbone, build_head
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    AverageMeter,
    CheckpointNotFoundError,
    FileWriteError,
    MetricMeter,
    UserError,
    count_num_param,
    get_rng_state,
    load_checkpoint,
    load_pretrained_weights,
    remove_stale_temporary_files,
    resume_from_checkpoint,
    save_checkpoint,
    set_rng_state,
    tolist_if_not,
    write_error,
)

from . import distributed, predictions, scalar_sinks
from .run_result import write_run_result

__all__ = ["SimpleNet", "TrainerBase", "SimpleTrainer", "TrainerX", "TrainerXU"]


def _stdout_is_tty():
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def _progress(iterable, desc):
    """A tqdm bar on stderr when stdout is a terminal; otherwise the iterable itself."""
    if not _stdout_is_tty():
        return iterable
    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _print_line(line):
    """Print a log line to stdout (and so to log.txt) without breaking an active progress bar."""
    if _stdout_is_tty():
        tqdm.write(line, file=sys.stdout)
    else:
        print(line)


def _batch_size(batch):
    """Number of samples in a batch (dict with ``label``/``img``, or a tuple/list of tensors); 0 if unknown."""
    if isinstance(batch, dict):
        for key in ("label", "img"):
            if key in batch:
                return _batch_size(batch[key])
        return 0
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() > 0 else 1
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        return first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else len(batch)
    return 0


def _first_line(err):
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _quiet_tensorboard_thread():
    """Tensorboard writes its events in a thread; when the file system refuses them (disk full, folder deleted)
    that thread dies with a traceback on stderr, and the training thread gets the same error at its next write,
    where :meth:`TrainerBase.write_scalar` turns it into one line. So the thread's traceback is left out (its
    ``OSError`` only; anything else, and every other thread, keeps Python's handling)."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


#: seconds between evaluation progress lines when stdout is not a terminal (a log file, Slurm, nohup)
EVAL_PROGRESS_EVERY_S = 30.0


class _ProgressLines:
    """When stdout is not a terminal (no progress bar), a line every :data:`EVAL_PROGRESS_EVERY_S` seconds during an
    evaluation: ``Evaluate on the *test* set: 12,800/50,000 images (25.6%), 61 s``."""

    def __init__(self, split, loader):
        self.split = split
        self.active = not _stdout_is_tty()
        try:
            self.total = len(loader.sampler) if getattr(loader, "sampler", None) is not None else len(loader.dataset)
        except TypeError:
            self.total = None
        self.start = self.last = time.time()

    def update(self, done):
        if not self.active:
            return
        now = time.time()
        if now - self.last < EVAL_PROGRESS_EVERY_S:
            return
        self.last = now
        of = "/{:,} images ({:.1f}%)".format(self.total, 100.0 * done / self.total) if self.total else " images"
        print("Evaluate on the *{}* set: {:,}{}, {:.0f} s".format(self.split, done, of, now - self.start), flush=True)


class _SkippingLoader:
    """``loader`` for one epoch whose first ``skip`` batches are left out, then ``rng_state`` restored.

    The loader's batch sampler is given a sampler that draws the epoch's order exactly as the loader's own
    sampler does (it *is* that sampler), drops the indices of the skipped batches and restores ``rng_state``
    before the first remaining index, i.e. before the first remaining image is loaded and augmented.
    """

    def __init__(self, loader, skip, rng_state):
        self.loader, self.skip, self.rng_state = loader, skip, rng_state

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batch_sampler = self.loader.batch_sampler
        if batch_sampler is None or not hasattr(batch_sampler, "sampler"):
            raise RuntimeError("resuming within an epoch needs a loader built with a sampler and a batch size")
        inner = batch_sampler.sampler
        batch_sampler.sampler = _SkippingSampler(inner, self.skip * batch_sampler.batch_size, self.rng_state)
        try:
            yield from self.loader
        finally:
            batch_sampler.sampler = inner


class _SkippingSampler:
    def __init__(self, sampler, skip, rng_state):
        self.sampler, self.skip, self.rng_state = sampler, skip, rng_state

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        indices = iter(self.sampler)
        for _ in range(self.skip):
            next(indices)
        set_rng_state(self.rng_state)
        yield from indices


class SimpleNet(nn.Module):
    """Backbone, optional MLP head and linear classifier (the default model of ``SimpleTrainer.build_model``).

    Input shape: images ``(B, 3, H, W)``. Output shape: logits ``(B, num_classes)``; features ``(B, fdim)``
    when there is no classifier or ``return_feature=True`` (then ``(logits, features)``).
    """

    def __init__(self, cfg, model_cfg, num_classes, **kwargs):
        super().__init__()
        self.backbone = build_backbone(
            model_cfg.BACKBONE.NAME, verbose=cfg.VERBOSE, pretrained=model_cfg.BACKBONE.PRETRAINED, **kwargs
        )
        fdim = self.backbone.out_features

        self.head = None
        if model_cfg.HEAD.NAME and model_cfg.HEAD.HIDDEN_LAYERS:
            self.head = build_head(
                model_cfg.HEAD.NAME,
                verbose=cfg.VERBOSE,
                in_features=fdim,
                hidden_layers=model_cfg.HEAD.HIDDEN_LAYERS,
                activation=model_cfg.HEAD.ACTIVATION,
                bn=model_cfg.HEAD.BN,
                dropout=model_cfg.HEAD.DROPOUT,
                **kwargs,
            )
            fdim = self.head.out_features

        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(fdim, num_classes)
        self._fdim = fdim

    @property
    def fdim(self):
        return self._fdim

    def forward(self, x, return_feature=False):
        f = self.backbone(x)
        if self.head is not None:
            f = self.head(f)
        if self.classifier is None:
            return f
        y = self.classifier(f)
        if return_feature:
            return y, f
        return y


class TrainerBase:
    """Holds the registered models, optimizers and schedulers, and runs the epoch loop with its hooks."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        """Register a module (with its optimizer and scheduler, which may be None) under ``name``.

        Registered modules are the ones saved, loaded, resumed and switched between train/eval mode.
        """
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        assert name not in self._models, "Found duplicate model names"
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        """All registered names (in registration order), or the given name(s) after checking they exist."""
        names_real = list(self._models.keys())
        if names is not None:
            names = tolist_if_not(names)
            for name in names:
                assert name in names_real
            return names
        return names_real

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------------------------
    def _checkpoint_extras(self):
        """State saved beside the weights so that a resumed run continues exactly (not read by the original)."""
        generators = OrderedDict()
        for attr in ("train_loader_x", "train_loader_u"):
            loader = getattr(self, attr, None)
            if loader is None:
                continue
            for owner_name, owner in (("", loader), (".sampler", getattr(loader, "sampler", None))):
                gen = getattr(owner, "generator", None)
                if isinstance(gen, torch.Generator):
                    generators[attr + owner_name + ".generator"] = gen.get_state()
        extras = {"rng_state": get_rng_state(), "generator_states": generators}
        extras.update(getattr(self, "_position_extras", None) or {})
        best = getattr(self, "best_result", None)
        if best is not None:
            extras["best_result"] = float(best)
        return extras

    def _restore_checkpoint_extras(self, checkpoint):
        """Restore what :meth:`_checkpoint_extras` saved (checkpoints of the original Dassl have none of it)."""
        if checkpoint.get("rng_state") is not None:
            set_rng_state(checkpoint["rng_state"])
        for path, state in (checkpoint.get("generator_states") or {}).items():
            attr, *rest = path.split(".")
            owner = getattr(self, attr, None)
            for part in rest[:-1]:
                owner = getattr(owner, part, None)
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.set_state(state.cpu())
        if checkpoint.get("best_result") is not None and hasattr(self, "best_result"):
            self.best_result = checkpoint["best_result"]
        self._resume_position = None
        if checkpoint.get("batches_done"):
            self._resume_position = {
                "batches_done": int(checkpoint["batches_done"]),
                "epoch_rng_state": checkpoint["epoch_rng_state"],
                "rng_state": checkpoint["rng_state"],
                "epoch_meters": checkpoint.get("epoch_meters") or {},
            }

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every registered model to ``directory/<name>/`` (``model.pth.tar-<epoch + 1>`` by default).

        A write the file system refuses (no space left, a read-only or vanished folder) is one
        :class:`~dassl.utils.FileWriteError` that also says where a rerun resumes from.
        """
        if not distributed.is_main_process():  # torchrun: rank 0 writes, the others wait until the files exist
            return distributed.barrier()
        self._check_output_dir(directory)
        try:
            self._save_models(epoch, directory, is_best, val_result, model_name)
        except FileWriteError as err:
            raise err.with_fix("{}; {}".format(err.fix, self._rerun_hint(directory))) from None
        distributed.barrier()

    def _save_models(self, epoch, directory, is_best, val_result, model_name):
        names = self.get_model_names()
        extras = self._checkpoint_extras()
        for name in names:
            model_dict = self._models[name].state_dict()
            optim_dict = self._optims[name].state_dict() if self._optims[name] is not None else None
            sched_dict = self._scheds[name].state_dict() if self._scheds[name] is not None else None
            state = {
                "state_dict": model_dict,
                "epoch": epoch + 1,
                "optimizer": optim_dict,
                "scheduler": sched_dict,
                "val_result": val_result,
            }
            state.update(extras)
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)
        if model_name != "model-best.pth.tar" and osp.abspath(directory) == osp.abspath(self.output_dir):
            self._saved = (epoch + 1, int((extras.get("batches_done") or 0)))

    def _check_output_dir(self, directory=None):
        """Once training has begun, its output folder must still be there: a folder deleted (or unmounted) during
        the run is one error, rather than made again without the log and the earlier checkpoints."""
        directory = directory or getattr(self, "output_dir", None)
        if directory and getattr(self, "_saved", None) is not None and not osp.isdir(directory):
            raise FileWriteError('the output folder "{}" no longer exists (deleted or unmounted during the run)'.format(
                directory), "its checkpoints went with it, so a rerun of the same command starts again",
                path=directory, error_number=errno.ENOENT)

    def _rerun_hint(self, directory):
        """What a rerun of the same command does, for a failed save: resume from the last checkpoint saved."""
        saved = getattr(self, "_saved", None)
        if not saved or not saved[0] and not saved[1]:
            return 'no checkpoint was saved in "{}" yet, so the run starts again'.format(directory)
        epoch, batches = saved
        where = "epoch {}".format(epoch) if not batches else "batch {} of epoch {}".format(batches, epoch + 1)
        return "the run resumes from its checkpoint after {}".format(where)

    def resume_model_if_exist(self, directory):
        """Resume every registered model from ``directory/<name>/`` if all of them have a checkpoint.

        Returns the epoch to start from (0 when there is nothing to resume).
        """
        names = self.get_model_names()
        file_missing = False
        for name in names:
            # a folder without its "checkpoint" pointer holds nothing finished (the pointer is written last)
            if not osp.isfile(osp.join(directory, name, "checkpoint")):
                file_missing = True
                break
        if file_missing:
            print("No checkpoint found, train from scratch")
            return 0

        print("Found checkpoint at {} (will resume training)".format(directory))
        start_epoch = 0
        checkpoint = None
        positions = set()
        for name in names:
            path = osp.join(directory, name)
            try:
                start_epoch, checkpoint = resume_from_checkpoint(
                    path, self._models[name], self._optims[name], self._scheds[name], return_checkpoint=True
                )
            except (RuntimeError, KeyError, ValueError) as err:
                if isinstance(err, UserError):
                    raise
                raise UserError(
                    'the checkpoint in "{}" does not fit this run\'s {} model ({}); resume with the configuration '
                    "that wrote it, or choose another --output-dir".format(path, name, _first_line(err))
                ) from err
            positions.add((start_epoch, int(checkpoint.get("batches_done") or 0)))
        if len(positions) > 1:
            raise UserError(
                'the checkpoints in "{}" were saved at different points ({}), the run was killed while saving; '
                "delete the newer model-last.pth.tar files and their checkpoint pointers to resume from the older "
                "point".format(directory, sorted(positions))
            )
        if checkpoint is not None:
            self._restore_checkpoint_extras(checkpoint)
        return start_epoch

    def load_model(self, directory, epoch=None):
        """Load ``model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) of every registered model from ``directory``."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar"
        if epoch is not None:
            model_file = "model.pth.tar-" + str(epoch)
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise CheckpointNotFoundError('No model at "{}"'.format(model_path))
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            loaded_epoch = checkpoint["epoch"]
            val_result = checkpoint.get("val_result")
            val_str = "{:.1f}".format(val_result) if val_result is not None else "None"
            print("Load {} to {} (epoch={}, val_result={})".format(model_path, name, loaded_epoch, val_str))
            self._models[name].load_state_dict(state_dict)
            self.loaded_epoch = loaded_epoch

    # ----------------------------------------------------------------------------------------------------------
    # Modes, learning rate, tensorboard
    # ----------------------------------------------------------------------------------------------------------
    def set_model_mode(self, mode="train", names=None):
        """``train()`` or ``eval()`` the registered models only (frozen encoders outside them keep their mode)."""
        names = self.get_model_names(names)
        for name in names:
            if mode == "train":
                self._models[name].train()
            elif mode in ["test", "eval"]:
                self._models[name].eval()
            else:
                raise KeyError(mode)

    def update_lr(self, names=None):
        """Step the schedulers of the registered models (the trainer calls this once per epoch)."""
        names = self.get_model_names(names)
        for name in names:
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def init_writer(self, log_dir, purge_step=None):
        """Open the run's trackers (``cfg.TRACKER``, default tensorboard in ``log_dir``; see
        :mod:`dassl.engine.scalar_sinks`). ``purge_step`` (not in Dassl): tensorboard events at this step or later
        that an earlier, killed attempt wrote are dropped, so a resumed run continues the same curves."""
        if self._writer is None and distributed.is_main_process():
            self._writer = scalar_sinks.open_sinks(getattr(self, "cfg", None), log_dir, purge_step)
            if self._writer is not None and "tensorboard" in self._writer.names:
                _quiet_tensorboard_thread()

    def close_writer(self):
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # a tracker that cannot write its last scalars is one warning

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is None:
            return  # e.g. in eval-only mode, no writer is initialized
        try:
            self._writer.add_scalar(tag, scalar_value, global_step)
        except OSError as err:  # the file system refused tensorboard's event file: one line, as for checkpoints
            self._writer = None
            self._check_output_dir()
            path = os.fsdecode(err.filename) if err.filename else osp.join(self.output_dir, "tensorboard")
            problem = write_error(err, path)
            if problem is None:
                raise
            raise problem.with_fix("{}; {}".format(problem.fix, self._rerun_hint(self.output_dir))) from None

    # ----------------------------------------------------------------------------------------------------------
    # Loop and hooks
    # ----------------------------------------------------------------------------------------------------------
    def train(self, start_epoch, max_epoch):
        """Generic training loop: ``before_train``, per epoch ``before_epoch/run_epoch/after_epoch``, ``after_train``."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        try:
            self.before_train()
            for self.epoch in range(self.start_epoch, self.max_epoch):
                self.before_epoch()
                self.run_epoch()
                self.after_epoch()
            self.after_train()
        finally:
            self.close_writer()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None):
        names = self.get_model_names(names)
        for name in names:
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        names = self.get_model_names(names)
        for name in names:
            if self._optims[name] is not None:
                self._optims[name].step()

    def before_optimizer_step(self, names=None):
        """Hook (not in Dassl): called once per training step when the gradients of the models ``names`` (default:
        all registered) are complete, right before their optimizers step. Override it to change gradients
        (gradient surgery, clipping, logging); the default does nothing.

        The gradients it sees are final: unscaled when a ``GradScaler`` is used (a trainer unscales before calling
        it; a step the scaler skips for inf/NaN stays skipped, whatever the hook does), summed over processes under
        torchrun (DDP reduces them during backward), and not yet touched by weight decay or momentum (the optimizer
        applies those inside ``step()``). ``model_backward_and_update`` calls it; a trainer with its own update
        sequence calls it between backward and ``model_update``.
        """

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.before_optimizer_step(names)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """A trainer with data loaders, a model, an evaluator, checkpoints and tensorboard logging.

    ``__init__`` calls, in this order: ``check_cfg(cfg)``, picks the device (CUDA if available and
    ``cfg.USE_CUDA``, else CPU), ``build_data_loader()``, ``build_model()`` and builds the evaluator.
    """

    def __init__(self, cfg):
        super().__init__()
        #: Facts about the run that only the caller knows (config file paths), used for result.json.
        self.run_info = {}
        self.check_cfg(cfg)

        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")

        # Save as attributes some frequently used variables
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR

        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.distributed = distributed.attach(self)  # torchrun: DDP over the learned modules (None otherwise)
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Hook to check the config (e.g. that a choice is valid) before anything is built."""
        pass

    def build_data_loader(self):
        """Create the data loaders (``train_loader_x``, ``train_loader_u``, ``val_loader``, ``test_loader``).

        Override to use a custom ``DataManager`` (e.g. custom transforms).
        """
        from dassl.data import DataManager

        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u  # optional, can be None
        self.val_loader = dm.val_loader  # optional, can be None
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname  # dict {label: classname}
        self.dm = dm

    def build_model(self):
        """Build a :class:`SimpleNet` with its optimizer and scheduler, registered as ``model``."""
        cfg = self.cfg
        print("Building model")
        self.model = SimpleNet(cfg, cfg.MODEL, self.num_classes)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        print("# params: {:,}".format(count_num_param(self.model)))
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

        device_count = torch.cuda.device_count()
        if device_count > 1 and self.device.type == "cuda" and not distributed.is_distributed():
            print("Detected {} GPUs (use nn.DataParallel)".format(device_count))
            self.model = nn.DataParallel(self.model)

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        self._resume_position = None
        self.remove_stale_temporary_files()
        self.start_epoch = self.resume_model_if_exist(directory)
        position = getattr(self, "_resume_position", None)
        self._saved = (self.start_epoch, position["batches_done"] if position else 0)

        # Initialize the trackers (tensorboard by default)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        self.init_writer(writer_dir, purge_step=self._first_new_step())

        # Remember the starting time (for computing the elapsed time)
        self.time_start = time.time()
        self.train_images_seen = 0

    def after_train(self):
        self.train_time = time.time() - self.time_start
        print("Finish training")

        do_test = not self.cfg.TEST.NO_TEST
        if do_test:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
            if distributed.is_main_process():
                write_run_result(self, eval_only=False)

        # Show elapsed time
        elapsed = round(time.time() - self.time_start)
        elapsed = str(datetime.timedelta(seconds=elapsed))
        print("Elapsed: {}".format(elapsed))

        # Close writer
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        meet_checkpoint_freq = (
            (self.epoch + 1) % self.cfg.TRAIN.CHECKPOINT_FREQ == 0 if self.cfg.TRAIN.CHECKPOINT_FREQ > 0 else False
        )

        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            is_best = curr_result > self.best_result
            if is_best:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")

        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
            self.remove_last_checkpoint()
        elif self.cfg.TRAIN.get("CHECKPOINT_LAST", False):
            self.save_last_checkpoint()

    # ----------------------------------------------------------------------------------------------------------
    # Crash safety (not in Dassl): the rolling "model-last.pth.tar" and the resume position within an epoch
    # ----------------------------------------------------------------------------------------------------------
    LAST_CHECKPOINT = "model-last.pth.tar"

    def save_last_checkpoint(self, batches_done=0, epoch_rng_state=None, epoch_meters=None):
        """Save every registered model to ``<name>/model-last.pth.tar`` (atomically, pointer updated).

        ``batches_done == 0``: the epoch ``self.epoch`` is finished (the file records epoch ``self.epoch + 1``,
        as a numbered checkpoint would). ``batches_done > 0``: saved within epoch ``self.epoch`` after that many
        batches; the file records epoch ``self.epoch`` (the one to resume) and the position.
        """
        if batches_done:
            self._position_extras = {
                "batches_done": int(batches_done),
                "epoch_rng_state": epoch_rng_state,
                "epoch_meters": epoch_meters or {},
            }
            epoch = self.epoch - 1
        else:
            epoch = self.epoch
        try:
            self.save_model(epoch, self.output_dir, model_name=self.LAST_CHECKPOINT)
        finally:
            self._position_extras = None

    def remove_stale_temporary_files(self):
        """Remove what checkpoint and result writes that were killed midway left in this run's own folders (the
        output folder and each model's folder): files named like :func:`dassl.utils.atomic_write`'s temporary
        files (``.<name>.<hex>.tmp``), nothing else. The run holds the folder's lock, so no other process is
        writing them."""
        if not distributed.is_main_process():
            return
        folders = [self.output_dir] + [osp.join(self.output_dir, name) for name in self.get_model_names()]
        removed = [path for folder in folders for path in remove_stale_temporary_files(folder)]
        if removed:
            print("Removed {} temporary file(s) left by an interrupted write: {}".format(
                len(removed), ", ".join(osp.relpath(p, self.output_dir) for p in removed)))

    def remove_last_checkpoint(self):
        """Remove the rolling checkpoints once a numbered checkpoint (which the pointers now name) supersedes them."""
        for name in self.get_model_names():
            path = osp.join(self.output_dir, name, self.LAST_CHECKPOINT)
            if osp.isfile(path):
                os.remove(path)

    def _steps_per_epoch(self):
        loader = getattr(self, "train_loader_x", None)
        return len(loader) if loader is not None else 0

    def _first_new_step(self):
        """The first tensorboard step this run writes, when an earlier attempt may have written it too (a resumed
        run, or a restart in a folder that has event files); ``None`` for a first attempt: nothing to purge."""
        position = getattr(self, "_resume_position", None)
        done = position["batches_done"] if position else 0
        if not self.start_epoch and not done:
            events = osp.join(self.output_dir, "tensorboard")
            earlier = osp.isdir(events) and any(f.startswith("events.") for f in os.listdir(events))
            return 0 if earlier else None
        return self.start_epoch * self._steps_per_epoch() + done

    def _epoch_batches(self, loader):
        """Iterate ``loader`` for the current epoch; returns ``(first batch index, iterable)``.

        Right after a resume from a within-epoch checkpoint, the epoch's draw is replayed from the random state
        saved at its start: the loader draws its seeds and the sampler its order as they did, the batches done are
        skipped (their indices only, no image is loaded), and the random state of the moment of the save is
        restored before the first remaining batch is loaded.
        """
        position = getattr(self, "_resume_position", None)
        self._resume_position = None
        self._epoch_rng_state = get_rng_state()
        if not position:
            return 0, loader
        skip = position["batches_done"]
        set_rng_state(position["epoch_rng_state"])
        self._epoch_rng_state = position["epoch_rng_state"]
        self._resumed_meters = position["epoch_meters"]
        return skip, _SkippingLoader(loader, skip, position["rng_state"])

    def _after_iteration(self, log):
        """Save a within-epoch checkpoint every ``TRAIN.CHECKPOINT_ITERS`` iterations (not after the last one)."""
        every = self.cfg.TRAIN.get("CHECKPOINT_ITERS", 0)
        done = self.batch_idx + 1
        if every and every > 0 and done % every == 0 and done < self.num_batches:
            self.save_last_checkpoint(done, self._epoch_rng_state, log.losses_state())

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default ``cfg.TEST.SPLIT``; ``val`` falls back to test when there is no val set).

        Prints the evaluator's result block and returns its first value (accuracy).
        """
        self.set_model_mode("eval")
        self.evaluator.reset()

        if split is None:
            split = self.cfg.TEST.SPLIT

        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"  # in case val_loader is None
            data_loader = self.test_loader

        print("Evaluate on the *{}* set".format(split))

        start = time.time()
        num_images = 0
        recorder = predictions.recorder_for(self, split)  # TEST.SAVE_PREDICTIONS: predictions.csv
        lines = _ProgressLines(split, data_loader)  # a line every 30 s when stdout is not a terminal
        for batch_idx, batch in enumerate(_progress(data_loader, desc=split)):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output, label)
            num_images += _batch_size(label)
            if recorder is not None:
                recorder.add(batch, output)
            lines.update(num_images)
        if recorder is not None:
            written = recorder.write()
            if written:
                print("Per-image predictions: {}".format(written))

        results = self.evaluator.evaluate()
        num_images = int(distributed.sum_over_ranks([num_images])[0])

        for k, v in results.items():
            tag = "{}/{}".format(split, k)
            self.write_scalar(tag, v, self.last_train_step())

        self.last_evaluation = {
            "split": split,
            "results": results,
            "num_images": num_images,
            "time_s": time.time() - start,
        }
        return list(results.values())[0]

    def last_train_step(self):
        """The step of evaluation scalars: the last training iteration logged before (0 when none: an
        evaluation-only run), so test and train scalars share one axis."""
        return getattr(self, "_last_train_step", 0)

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        input = batch["img"]
        label = batch["label"]
        input = input.to(self.device, non_blocking=True)  # pinned memory: the copy overlaps the previous batch
        label = label.to(self.device, non_blocking=True)
        return input, label

    def get_current_lr(self, names=None):
        names = self.get_model_names(names)
        name = names[0]
        return self._optims[name].param_groups[0]["lr"]


class _EpochLogger:
    """Timing meters and the periodic iteration line of one training epoch."""

    def __init__(self, trainer, meters_state=None):
        self.trainer = trainer
        self.losses = MetricMeter()
        self.batch_time = AverageMeter()
        self.data_time = AverageMeter()
        for name, (val, avg, total, count) in (meters_state or {}).items():  # resumed within the epoch
            meter = self.losses.meters[name]
            meter.val, meter.avg, meter.sum, meter.count = val, avg, total, count

    def losses_state(self):
        """The running loss averages, saved with a within-epoch checkpoint (plain numbers)."""
        return {n: [float(m.val), float(m.avg), float(m.sum), int(m.count)] for n, m in self.losses.meters.items()}

    def log(self, loss_summary):
        t = self.trainer
        self.losses.update(loss_summary)

        meet_freq = (t.batch_idx + 1) % t.cfg.TRAIN.PRINT_FREQ == 0
        only_few_batches = t.num_batches < t.cfg.TRAIN.PRINT_FREQ
        if meet_freq or only_few_batches:
            nb_remain = 0
            nb_remain += t.num_batches - t.batch_idx - 1
            nb_remain += (t.max_epoch - t.epoch - 1) * t.num_batches
            eta_seconds = self.batch_time.avg * nb_remain
            eta = str(datetime.timedelta(seconds=int(eta_seconds)))

            info = []
            info += ["epoch [{}/{}]".format(t.epoch + 1, t.max_epoch)]
            info += ["batch [{}/{}]".format(t.batch_idx + 1, t.num_batches)]
            info += ["time {:.3f} ({:.3f})".format(self.batch_time.val, self.batch_time.avg)]
            info += ["data {:.3f} ({:.3f})".format(self.data_time.val, self.data_time.avg)]
            info += ["{}".format(self.losses)]
            info += ["lr {:.4e}".format(t.get_current_lr())]
            info += ["eta {}".format(eta)]
            _print_line(" ".join(info))

        n_iter = t.epoch * t.num_batches + t.batch_idx
        t._last_train_step = n_iter
        for name, meter in self.losses.meters.items():
            t.write_scalar("train/" + name, meter.avg, n_iter)
        t.write_scalar("train/lr", t.get_current_lr(), n_iter)


class TrainerXU(SimpleTrainer):
    """A base trainer using both labelled and unlabelled data (domain adaptation, semi-supervised learning).

    Each iteration calls ``forward_backward(batch_x, batch_u)``. The number of iterations per epoch follows
    ``TRAIN.COUNT_ITER``: ``train_x``, ``train_u`` or ``smaller_one``; an exhausted loader is restarted.
    """

    def run_epoch(self):
        self.set_model_mode("train")
        log = _EpochLogger(self)

        # Decide to iterate over labeled or unlabeled dataset
        len_train_loader_x = len(self.train_loader_x)
        len_train_loader_u = len(self.train_loader_u)
        if self.cfg.TRAIN.COUNT_ITER == "train_x":
            self.num_batches = len_train_loader_x
        elif self.cfg.TRAIN.COUNT_ITER == "train_u":
            self.num_batches = len_train_loader_u
        elif self.cfg.TRAIN.COUNT_ITER == "smaller_one":
            self.num_batches = min(len_train_loader_x, len_train_loader_u)
        else:
            raise ValueError

        train_loader_x_iter = iter(self.train_loader_x)
        train_loader_u_iter = iter(self.train_loader_u)

        end = time.time()
        for self.batch_idx in _progress(range(self.num_batches), desc="epoch {}".format(self.epoch + 1)):
            try:
                batch_x = next(train_loader_x_iter)
            except StopIteration:
                train_loader_x_iter = iter(self.train_loader_x)
                batch_x = next(train_loader_x_iter)

            try:
                batch_u = next(train_loader_u_iter)
            except StopIteration:
                train_loader_u_iter = iter(self.train_loader_u)
                batch_u = next(train_loader_u_iter)

            log.data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch_x, batch_u)
            log.batch_time.update(time.time() - end)
            self.train_images_seen = getattr(self, "train_images_seen", 0) + _batch_size(batch_x)
            log.log(loss_summary)
            end = time.time()

    def parse_batch_train(self, batch_x, batch_u):
        input_x = batch_x["img"]
        label_x = batch_x["label"]
        input_u = batch_u["img"]

        input_x = input_x.to(self.device)
        label_x = label_x.to(self.device)
        input_u = input_u.to(self.device)

        return input_x, label_x, input_u


class TrainerX(SimpleTrainer):
    """A base trainer using labelled data only (the base class of the CLIP prompt-learning trainers).

    ``self.batch_idx`` and ``self.num_batches`` are set before each ``forward_backward(batch)`` call.
    """

    def run_epoch(self):
        self.set_model_mode("train")
        self.num_batches = len(self.train_loader_x)
        self._resumed_meters = None
        first, loader = self._epoch_batches(self.train_loader_x)
        log = _EpochLogger(self, self._resumed_meters)

        end = time.time()
        batches = _progress(loader, desc="epoch {}/{}".format(self.epoch + 1, self.max_epoch))
        for self.batch_idx, batch in enumerate(batches, start=first):
            log.data_time.update(time.time() - end)
            step_images = _batch_size(batch)
            if getattr(self, "distributed", None) is None:
                loss_summary = self.forward_backward(batch)
            else:  # torchrun: this rank's shard; gradients and the summary are over the global batch
                loss_summary = self.distributed.step(self, batch, step_images)
                step_images = self.distributed.step_images
            log.batch_time.update(time.time() - end)
            self.train_images_seen = getattr(self, "train_images_seen", 0) + step_images
            log.log(loss_summary)
            self._after_iteration(log)
            end = time.time()

    def parse_batch_train(self, batch):
        input = batch["img"]
        label = batch["label"]
        domain = batch["domain"]

        input = input.to(self.device)
        label = label.to(self.device)
        domain = domain.to(self.device)

        return input, label, domain
