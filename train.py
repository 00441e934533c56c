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
"""
import argparse
import difflib
import os.path as osp
import sys

import torch
import yaml

from dassl.config import get_cfg_default
from dassl.engine import build_trainer, distributed
from dassl.engine.run_result import write_run_result
from dassl.utils import Logger, UserError, collect_env_info, listdir_nohidden, set_random_seed, setup_logger

REPO_ROOT = osp.dirname(osp.realpath(__file__))


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
    if args.dataset_config_file:
        merge_config_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        merge_config_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    merge_config_opts(cfg, args.opts)
    cfg.freeze()
    return cfg


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__.keys()):
        print("{}: {}".format(key, args.__dict__[key]))
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


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
    cfg = setup_cfg(args)
    check_dirs(args, cfg)
    distributed.setup(cfg)  # torchrun --nproc-per-node N: join the other processes (nothing otherwise)

    if cfg.SEED >= 0:
        print("Setting fixed seed: {}".format(cfg.SEED))
        set_random_seed(cfg.SEED)
    if distributed.is_main_process():  # torchrun: rank 0 writes log.txt
        setup_logger(cfg.OUTPUT_DIR)

    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    print_args(args, cfg)
    print("Collecting env info ...")
    print("** System info **\n{}\n".format(collect_env_info()))

    trainer = build_trainer(cfg)
    run_info = getattr(trainer, "run_info", None)
    if run_info is None:
        run_info = trainer.run_info = {}
    run_info.update(config_file=args.config_file or None, dataset_config_file=args.dataset_config_file or None)

    if args.eval_only:
        check_checkpoints(trainer, args.model_dir, args.load_epoch)
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        if distributed.is_main_process():
            write_run_result(trainer, eval_only=True, model_dir=args.model_dir or None,
                             loaded_epoch=args.load_epoch)
        return 0

    if not args.no_train:
        try:
            trainer.train()
        except KeyboardInterrupt:
            _report(_interrupted_message(trainer, cfg.OUTPUT_DIR))
            return 130
    return 0


def _interrupted_message(trainer, output_dir):
    saved = [n for n in trainer.get_model_names() if osp.isfile(osp.join(output_dir, n, "checkpoint"))]
    if saved and len(saved) == len(trainer.get_model_names()):
        return 'interrupted: run the same command with --resume "{}" to continue from the last saved epoch'.format(
            output_dir
        )
    return "interrupted: no checkpoint was saved yet (set TRAIN.CHECKPOINT_FREQ N to save every N epochs)"


def _report(message):
    """Print a one-line message on stderr, and into log.txt when a log file is open."""
    print(message, file=sys.stderr)
    if isinstance(sys.stdout, Logger) and sys.stdout.file is not None:
        sys.stdout.file.write(message + "\n")
        sys.stdout.flush()


def main(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``), run, and return the exit status (0; 2 for bad input; 130 when
    training was interrupted)."""
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    try:
        return run(args)
    except UserError as err:
        _report("error: {}".format(err))
        return 2
    except Exception as err:
        lost = distributed.lost_process_message(err)  # torchrun: another process died (None otherwise)
        if lost is None:
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
