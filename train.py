"""Train or evaluate a prompt-learning method: the CoOp family's command line.

Usage (same flags as CoOp's and MaPLe's ``train.py``)::

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml \
        --output-dir output/coop/oxford_pets/seed1 DATASET.NUM_SHOTS 16

    python train.py ... --eval-only --model-dir output/coop/oxford_pets/seed1 --load-epoch 50

The config is merged in this order, later sources winning: Dassl's defaults, the project's keys
(``trainers.extend_cfg``), the dataset YAML, the method YAML, the flags, then trailing ``KEY VALUE`` pairs.
Unknown keys and values of the wrong type are refused.

Differences from the original, all deliberate:

* ``--seed 0`` works (the original ignored it). A negative ``--seed`` (the default -1) leaves ``SEED`` as the
  config files set it; ``SEED`` -1 still means "do not seed".
* Problems with the input (a missing config file, an unknown config key, a missing checkpoint, dataset folder or
  ``--resume`` folder, an unknown trainer name) print one ``error: ...`` line and exit with status 2.
* Ctrl-C during training exits with status 130 and says how to resume.
* A finished run writes ``<OUTPUT_DIR>/result.json`` (see ``dassl/engine/run_result.py``).
* Every input is checked before the output folder is created or anything is printed to it: the trainer and
  dataset names, the config keys and values, the backbone, ``--model-dir``/``--resume``. A failure while the
  trainer is built (an unreadable backbone, dataset file or checkpoint) removes the folder again if this run
  created it, so nothing is left that looks like a run to resume.
* One run per output folder: ``<OUTPUT_DIR>/run.lock`` (pid, host, command) is held while the run writes there;
  a second run into the same folder stops at once naming the first (``dassl.utils.RunLock``).
* The terminal shows a short header (method, dataset, backbone, precision, device, output folder, log file);
  the full argument, config and environment dump goes to ``log.txt`` as in Dassl (``--print-config`` shows it on
  the terminal too). Tracebacks of crashes are written to the log file as well.
* ``CPU_HALF True`` (a key of this project) runs fp16 and amp for real on a CPU instead of falling back to fp32.
* On a CPU, glibc keeps freed activation buffers for reuse (``clip.host_memory``: up to 9% faster for methods
  whose sequence length changes from layer to layer, such as MPL); ``CPU_REUSE_MEMORY False`` (a key of this
  project) leaves glibc's defaults, which return freed memory to the system sooner.

It also runs on the real Dassl.pytorch: the project's engine features it lacks (``result.json``, the run lock,
one-line errors) are then skipped with a one-line notice.
"""
import argparse
import difflib
import importlib
import os
import os.path as osp
import sys

import torch
import yaml

from dassl.config import get_cfg_default
from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.utils import Logger, collect_env_info, listdir_nohidden, set_random_seed, setup_logger

REPO_ROOT = osp.dirname(osp.realpath(__file__))

# Features of this project's engine that the real Dassl.pytorch lacks: use them when present.
_MISSING = []
try:
    from dassl.engine.run_result import write_run_result
except ImportError:
    write_run_result = None
    _MISSING.append("result.json")
try:
    from dassl.engine import distributed
except ImportError:  # the real Dassl: one process
    class distributed:  # noqa: N801  (stands in for the module)
        @staticmethod
        def is_main_process():
            return True

        @staticmethod
        def setup(cfg):
            return None

        @staticmethod
        def shutdown():
            return None

        @staticmethod
        def lost_process_message(err):
            return None

    _MISSING.append("torchrun support")
try:
    from dassl.utils import RunLock
except ImportError:
    RunLock = None
    _MISSING.append("output-folder lock")
try:
    from dassl.utils import UserError
except ImportError:
    class UserError(Exception):
        """A problem with the user's input, explained by the message."""
try:
    from dassl.data.datasets import DATASET_REGISTRY
except ImportError:
    DATASET_REGISTRY = None


def _import_project_package(name):
    """Import the project's package ``name`` (it registers trainers or datasets); fail clearly if it is absent."""
    import importlib

    expected = osp.join(REPO_ROOT, name, "__init__.py")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        module = None
    where = getattr(module, "__file__", None)
    if where is None or osp.realpath(where) != expected:
        found = "" if module is None else " (found {!r} instead)".format(where or getattr(module, "__path__", name))
        print(
            "error: the project's `{}` package is missing: expected {}{}. "
            "Run train.py from a complete checkout of the repository.".format(name, expected, found),
            file=sys.stderr,
        )
        raise SystemExit(2)
    return module


trainers = _import_project_package("trainers")  # registers the methods in TRAINER_REGISTRY
_import_project_package("datasets")  # registers the benchmark datasets in DATASET_REGISTRY


def _user_error_classes():
    """On the real Dassl the project's packages define their own UserError: catch all of them."""
    classes = [UserError]
    for module in ("trainers.common", "datasets.errors"):
        try:
            cls = getattr(importlib.import_module(module), "UserError", None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and cls not in classes:
            classes.append(cls)
    return tuple(classes)


USER_ERRORS = _user_error_classes()


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument(
        "--resume", type=str, default="", help="checkpoint directory (from which the training resumes)"
    )
    parser.add_argument(
        "--seed", type=int, default=-1, help="a value >= 0 fixes the seed (0 included); negative: keep the config's SEED"
    )
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument(
        "--print-config", action="store_true",
        help="also print the arguments, config and environment on the terminal (they are always in log.txt)",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line"
    )
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        full = prefix + k
        keys.append(full)
        if isinstance(v, dict):
            keys += _all_keys(v, full + ".")
    return keys


def _config_error(cfg, source, err):
    """Turn a yacs merge error into a one-line :class:`UserError` naming the source and the key."""
    msg = str(err.args[0]) if err.args else str(err)
    for prefix in ("Non-existent config key: ", "Non-existent key: "):
        if msg.startswith(prefix):
            key = msg[len(prefix):].strip()
            close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
            hint = " (did you mean {}?)".format(close[0]) if close else ""
            return UserError(
                "{}: unknown config key {}{}; only keys that exist in the defaults can be set".format(source, key, hint)
            )
    return UserError("{}: {}".format(source, msg))


def merge_config_file(cfg, path, flag):
    """``cfg.merge_from_file(path)`` with one-line errors for a missing file, a bad key or a bad value."""
    if not osp.isfile(path):
        raise UserError('config file not found: "{}" (given by {}); check the path'.format(path, flag))
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as err:
        raise _config_error(cfg, "config file {}".format(path), err) from err


def merge_config_opts(cfg, opts):
    """``cfg.merge_from_list(opts)`` (trailing ``KEY VALUE`` pairs) with one-line errors."""
    if not opts:
        return
    if len(opts) % 2 != 0:
        raise UserError(
            "command-line options must be KEY VALUE pairs, got an odd number of items: {}".format(" ".join(opts))
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError, TypeError) as err:
        raise _config_error(cfg, "command-line options", err) from err


def reset_cfg(cfg, args):
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


def setup_cfg(args):
    """Build the frozen run config: defaults, project keys, dataset YAML, method YAML, flags, ``KEY VALUE`` opts."""
    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    if "CPU_HALF" not in cfg:
        # run fp16 and amp for real on a CPU instead of falling back to fp32 (clip.precision.set_half_on_cpu)
        cfg.CPU_HALF = False
    if "CPU_REUSE_MEMORY" not in cfg:
        # on a CPU, keep freed activation buffers for reuse (clip.host_memory.reuse_freed_memory)
        cfg.CPU_REUSE_MEMORY = True
    if args.dataset_config_file:
        merge_config_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        merge_config_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    merge_config_opts(cfg, args.opts)
    backbone_normalisation(cfg)
    cfg.freeze()
    return cfg


def backbone_normalisation(cfg):
    """A backbone registered with its own mean/std (open_clip's, see clip/openclip.py) normalises the data with
    them where the config kept OpenAI's CLIP values (every method's config does); a config's own values stay."""
    import clip
    from clip.transforms import OPENAI_MEAN, OPENAI_STD

    options = clip.pretrained_options(cfg.MODEL.BACKBONE.NAME)
    for key, openai, name in (("PIXEL_MEAN", OPENAI_MEAN, "mean"), ("PIXEL_STD", OPENAI_STD, "std")):
        if name in options and all(abs(a - b) < 1e-6 for a, b in zip(cfg.INPUT[key], openai)):
            cfg.INPUT[key] = list(options[name])


def print_args(args, cfg, file=None):
    print("***************", file=file)
    print("** Arguments **", file=file)
    print("***************", file=file)
    for key in sorted(args.__dict__.keys()):
        print("{}: {}".format(key, args.__dict__[key]), file=file)
    print("************", file=file)
    print("** Config **", file=file)
    print("************", file=file)
    print(cfg, file=file)


def _precision_name(cfg):
    node = cfg.TRAINER.get(str(cfg.TRAINER.NAME).upper())
    return node.get("PREC") if isinstance(node, dict) else None


def short_header(cfg, log_path):
    """The few lines the terminal shows instead of the full dump (which goes to the log file)."""
    device = "cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu"
    prec = _precision_name(cfg)
    parts = ["{} on {}".format(cfg.TRAINER.NAME, cfg.DATASET.NAME or "?")]
    if cfg.MODEL.BACKBONE.NAME:
        parts.append("backbone {}".format(cfg.MODEL.BACKBONE.NAME))
    if prec:
        parts.append("precision {}{}".format(prec, " (CPU_HALF)" if cfg.get("CPU_HALF") else ""))
    parts.append("device {}".format(device))
    parts.append("seed {}".format(cfg.SEED))
    lines = [", ".join(parts), "output: {}".format(cfg.OUTPUT_DIR)]
    if log_path:
        lines.append("log: {} (full config and environment there; --print-config shows them here)".format(log_path))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Input checks (fail before any work, with one line saying what to do)
# ----------------------------------------------------------------------------------------------------------------
def check_dirs(args, cfg):
    if args.eval_only and args.model_dir and not osp.isdir(args.model_dir):
        raise UserError(
            'model directory not found: "{}" (given by --model-dir); pass the --output-dir of a finished '
            "training run".format(args.model_dir)
        )
    if cfg.RESUME and not osp.isdir(cfg.RESUME):
        raise UserError(
            'resume directory not found: "{}" (given by --resume / RESUME); pass the --output-dir of an earlier run, '
            "or leave it out (checkpoints in the output directory are resumed automatically)".format(cfg.RESUME)
        )


def _unknown_name(kind, flag, name, available):
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = " (do you mean {}?)".format(close[0]) if close else ""
    return UserError("unknown {} {!r} ({}){}; registered: {}".format(kind, name, flag, hint, ", ".join(available)))


def check_names(cfg):
    """The trainer, dataset and backbone names exist (before the output folder is created)."""
    avail = list(TRAINER_REGISTRY.registered_names())
    if cfg.TRAINER.NAME not in avail:
        # same wording as Dassl's check_availability, which users and tests know
        close = difflib.get_close_matches(cfg.TRAINER.NAME, avail, n=1, cutoff=0.0)
        raise UserError(
            "unknown trainer [{}] (--trainer / TRAINER.NAME; do you mean [{}]?); registered: {}".format(
                cfg.TRAINER.NAME, close[0] if close else "", ", ".join(avail))
        )
    if DATASET_REGISTRY is not None and cfg.DATASET.NAME:
        names = list(DATASET_REGISTRY.registered_names())
        if cfg.DATASET.NAME not in names:
            raise _unknown_name("dataset", "DATASET.NAME, set by --dataset-config-file", cfg.DATASET.NAME, names)
    check_backbone(cfg)


def check_backbone(cfg):
    """For this project's trainers, ``MODEL.BACKBONE.NAME`` is a CLIP model name or an existing, non-empty file.
    (Its content is read when the trainer is built; a bad file is then one clear error too.)"""
    name = cfg.MODEL.BACKBONE.NAME
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if not name or not getattr(trainer, "__module__", "").startswith("trainers."):
        return
    import clip

    if name in clip.available_models():
        return
    path = osp.expanduser(name)
    if not osp.isfile(path):
        raise UserError(
            "MODEL.BACKBONE.NAME: unknown model {!r}: not a file, and not one of {}; give a model name or the "
            "path of a CLIP checkpoint".format(name, clip.available_models())
        )
    if osp.getsize(path) == 0:
        raise UserError('MODEL.BACKBONE.NAME: "{}" is an empty file; give the path of a CLIP checkpoint'.format(path))


def _epochs_available(model_dir):
    prefix = "model.pth.tar-"
    epochs = [f[len(prefix):] for f in listdir_nohidden(model_dir) if f.startswith(prefix)]
    return sorted(epochs, key=lambda e: (len(e), e))


def check_checkpoints(trainer, model_dir, epoch):
    """Check that every registered model has the checkpoint ``load_model(model_dir, epoch)`` will read."""
    if not model_dir:
        return
    fname = "model-best.pth.tar" if epoch is None else "model.pth.tar-{}".format(epoch)
    for name in trainer.get_model_names():
        folder = osp.join(model_dir, name)
        if not osp.isdir(folder):
            raise UserError(
                'no "{}" folder in the model directory "{}": it was not written by trainer {}; check --model-dir '
                "and --trainer".format(name, model_dir, trainer.cfg.TRAINER.NAME)
            )
        path = osp.join(folder, fname)
        if not osp.isfile(path):
            epochs = _epochs_available(folder)
            if epochs:
                hint = "pass one of the saved epochs with --load-epoch: {}".format(", ".join(epochs))
            else:
                hint = "no checkpoint was saved there; train first"
            if epoch is None:
                hint = "without --load-epoch the best-validation model is loaded; " + hint
            raise UserError('checkpoint not found: "{}"; {}'.format(path, hint))


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------
def run(args):
    """Run the command described by the parsed ``args``; returns the exit status."""
    if _MISSING:
        print("Note: this Dassl has no {}; running without.".format(" and no ".join(_MISSING)), file=sys.stderr)
    cfg = setup_cfg(args)
    check_dirs(args, cfg)
    check_names(cfg)
    distributed.setup(cfg)  # torchrun --nproc-per-node N: join the other processes (nothing otherwise)

    if cfg.SEED >= 0:
        print("Setting fixed seed: {}".format(cfg.SEED))
        set_random_seed(cfg.SEED)
    _set_half_on_cpu(cfg)
    _reuse_cpu_memory(cfg)

    out_dir = cfg.OUTPUT_DIR
    created = not osp.isdir(out_dir)
    # torchrun: rank 0 alone holds the folder's lock and writes log.txt
    lock = RunLock(out_dir).acquire() if RunLock is not None and distributed.is_main_process() else None
    try:
        return _run_locked(args, cfg, out_dir, created)
    finally:
        if lock is not None:
            lock.release()


def _set_half_on_cpu(cfg):
    try:
        from clip.precision import set_half_on_cpu
    except ImportError:
        return
    set_half_on_cpu(bool(cfg.get("CPU_HALF", False)))


def _reuse_cpu_memory(cfg):
    on_gpu = torch.cuda.is_available() and cfg.USE_CUDA
    if on_gpu or not cfg.get("CPU_REUSE_MEMORY", True):
        return
    try:
        from clip.host_memory import reuse_freed_memory
    except ImportError:
        return
    reuse_freed_memory()


def _run_locked(args, cfg, out_dir, created):
    logger = setup_logger(out_dir) if distributed.is_main_process() else None
    log_path = getattr(logger, "fpath", None) or getattr(sys.stdout, "fpath", None)
    log_file = getattr(sys.stdout, "file", None)

    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    # The full dump goes to the log file (as in Dassl); the terminal gets a short header unless asked for more.
    if not distributed.is_main_process():
        pass  # torchrun: the other ranks print nothing of their own
    elif args.print_config or log_file is None:
        print_args(args, cfg)
        print("Collecting env info ...")
        print("** System info **\n{}\n".format(collect_env_info()))
    else:
        sys.stdout.console.write(short_header(cfg, log_path) + "\n")
        print_args(args, cfg, file=log_file)
        log_file.write("Collecting env info ...\n")
        log_file.write("** System info **\n{}\n\n".format(collect_env_info()))

    try:
        trainer = build_trainer(cfg)
        if args.eval_only:
            check_checkpoints(trainer, args.model_dir, args.load_epoch)
            _load_for_eval(trainer, args)
    except USER_ERRORS:
        if distributed.is_main_process():
            _forget_failed_start(out_dir, created)
        raise
    run_info = getattr(trainer, "run_info", None)
    if run_info is None:
        run_info = trainer.run_info = {}
    run_info.update(config_file=args.config_file or None, dataset_config_file=args.dataset_config_file or None)

    if args.eval_only:
        trainer.test()
        if write_run_result is not None and distributed.is_main_process():
            write_run_result(trainer, eval_only=True, model_dir=args.model_dir or None, loaded_epoch=args.load_epoch)
        return 0

    if not args.no_train:
        try:
            trainer.train()
        except KeyboardInterrupt:
            _report(_interrupted_message(trainer, cfg.OUTPUT_DIR))
            return 130
    return 0


def _load_for_eval(trainer, args):
    """``trainer.load_model`` with one clear error when the checkpoint does not fit the model."""
    try:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
    except USER_ERRORS:
        raise
    except (RuntimeError, KeyError, ValueError) as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise UserError(
            'the checkpoint in --model-dir "{}" does not fit trainer {} with this configuration ({}); use the '
            "config file and options of the training run".format(args.model_dir, trainer.cfg.TRAINER.NAME,
                                                                   first[:300])
        ) from err


_OURS = ("log.txt", "run.lock")


def _forget_failed_start(out_dir, created):
    """After bad input found while building: remove the folder if this run created it and it holds only this run's
    log and lock, so that nothing looks like a run to resume."""
    if not created or not osp.isdir(out_dir):
        return
    import shutil

    entries = [e for e in os.listdir(out_dir) if not e.startswith(".")]
    if all(e.startswith(_OURS) for e in entries):
        _close_log()
        shutil.rmtree(out_dir, ignore_errors=True)


def _close_log():
    logger = sys.stdout
    if isinstance(logger, Logger):
        sys.stdout = logger.console
        logger.close()


def _interrupted_message(trainer, output_dir):
    saved = [n for n in trainer.get_model_names() if osp.isfile(osp.join(output_dir, n, "checkpoint"))]
    if saved and len(saved) == len(trainer.get_model_names()):
        return 'interrupted: run the same command with --resume "{}" to continue from the last saved epoch'.format(
            output_dir
        )
    return ("interrupted: no checkpoint was saved yet (one is saved after every epoch, and every N iterations with "
            "TRAIN.CHECKPOINT_ITERS N); the same command starts again")


def _report(message):
    """Print a one-line message on stderr, and into the log file when one is open."""
    print(message, file=sys.stderr)
    log_file = getattr(sys.stdout, "file", None) if isinstance(sys.stdout, Logger) else None
    if log_file is not None:
        log_file.write(message + "\n")
        sys.stdout.flush()


def _log_traceback():
    """Write the traceback of the exception being handled into the log file (stderr is not teed there)."""
    import traceback

    log_file = getattr(sys.stdout, "file", None) if isinstance(sys.stdout, Logger) else None
    if log_file is not None:
        log_file.write(traceback.format_exc())
        log_file.flush()
        path = getattr(sys.stdout, "fpath", None)
        if path:
            print("The run failed; the traceback below is also in {}".format(path), file=sys.stderr)


def main(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``), run, and return the exit status (0; 2 for bad input; 130 when
    training was interrupted)."""
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    try:
        return run(args)
    except USER_ERRORS as err:
        _report("error: {}".format(err))
        return 2
    except Exception as err:
        lost = distributed.lost_process_message(err)  # torchrun: another process died (None otherwise)
        if lost is None:
            _log_traceback()
            raise
        _report("error: {}".format(lost))
        return 1
    finally:
        distributed.shutdown()
        logger, sys.stdout = sys.stdout, stdout
        if logger is not stdout and isinstance(logger, Logger):
            logger.close()


if __name__ == "__main__":
    sys.exit(main())
