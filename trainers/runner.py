"""One run of ``train.py``: the folder, its lock and log, the trainer, training or evaluation, and the exit status.

:func:`main` is ``train.py``'s whole command line (``python train.py ...``); :func:`run` does the work for parsed
arguments. Compared with the CoOp family's ``train.py``, all deliberate:

* ``--seed 0`` works (the original ignored it). A negative ``--seed`` (the default -1) leaves ``SEED`` as the
  config files set it; ``SEED`` -1 still means "do not seed".
* Every input is checked before the output folder is created or anything is printed to it: the trainer and dataset
  names, config keys, types and values, the backbone, ``--model-dir``/``--resume``
  (:func:`trainers.api.build_cfg`). A problem found while the trainer is built (an unreadable backbone, dataset file
  or checkpoint) removes the folder again if this run created it, so nothing is left that looks like a run to
  resume. Each prints one ``error: ...`` line; exit status 2.
* One run per output folder: ``<OUTPUT_DIR>/run.lock`` (pid, host, command) is held while the run writes there.
* The terminal shows a short header (method, dataset, backbone, precision, device, output folder, log file); the
  full argument, config and environment dump goes to ``log.txt`` as in Dassl (``--print-config`` shows it on the
  terminal too). Tracebacks of crashes are written to the log file as well.
* The run describes itself: ``<OUTPUT_DIR>/config.yaml`` holds the fully resolved config (written atomically once
  the trainer is built, before training), and ``result.json`` (written at the very end) points to it.
* Ctrl-C during training exits with status 130 and says how to resume.
* On a CPU, glibc keeps freed activation buffers for reuse (``CPU_REUSE_MEMORY``, default True).

On the real Dassl.pytorch the features its engine lacks (``trainers.compat.MISSING``) are skipped with one notice.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
import sys

import torch

from dassl.utils import Logger, collect_env_info, set_random_seed, setup_logger

from .api import build_trainer, cfg_from_args, method_precision, parse_args
from .checkpoints import CONFIG_FILE, saved_epochs
from .compat import MISSING, RunLock, UserError, atomic_write, distributed, write_run_result



def print_args(args, cfg, file=None):
    print("***************", file=file)
    print("** Arguments **", file=file)
    print("***************", file=file)
    for key in sorted(args.__dict__.keys()):
        print(f"{key}: {args.__dict__[key]}", file=file)
    print("************", file=file)
    print("** Config **", file=file)
    print("************", file=file)
    print(cfg, file=file)


def short_header(cfg, log_path):
    """The few lines the terminal shows instead of the full dump (which goes to the log file)."""
    device = "cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu"
    prec = method_precision(cfg)
    parts = [f"{cfg.TRAINER.NAME} on {cfg.DATASET.NAME or '?'}"]
    if cfg.MODEL.BACKBONE.NAME:
        parts.append(f"backbone {cfg.MODEL.BACKBONE.NAME}")
    if prec:
        parts.append(f"precision {prec}{' (CPU_HALF)' if cfg.get('CPU_HALF') else ''}")
    parts.append(f"device {device}")
    parts.append(f"seed {cfg.SEED}")
    lines = [", ".join(parts), f"output: {cfg.OUTPUT_DIR}"]
    if log_path:
        lines.append(f"log: {log_path} (full config and environment there; --print-config shows them here)")
    return "\n".join(lines)


def check_dirs(args, cfg):
    if args.eval_only and args.model_dir and not osp.isdir(args.model_dir) and not osp.isfile(args.model_dir):
        raise UserError(f'model directory not found: "{args.model_dir}" (given by --model-dir); pass the '
                        "--output-dir of a finished training run")
    if cfg.RESUME and not osp.isdir(cfg.RESUME):
        raise UserError(f'resume directory not found: "{cfg.RESUME}" (given by --resume / RESUME); pass the '
                        "--output-dir of an earlier run, or leave it out (checkpoints in the output directory are "
                        "resumed automatically)")


def load_for_evaluation(trainer, model_dir, epoch):
    """``trainer.load_model`` for ``--eval-only``. For a trainer written for Dassl, a missing checkpoint
    (``FileNotFoundError``) is one line naming the epochs that were saved, and one that does not fit is one line
    too; the methods of this project resolve and check the checkpoint themselves
    (:func:`trainers.checkpoints.resolve_checkpoint`)."""
    try:
        trainer.load_model(model_dir, epoch=epoch)
    except FileNotFoundError as err:
        if isinstance(err, UserError):
            raise
        saved = sorted({e for name in trainer.get_model_names() for e in saved_epochs(osp.join(model_dir, name))},
                       key=lambda e: (len(e), e))
        hint = (f"pass one of the saved epochs with --load-epoch: {', '.join(saved)}" if saved else
                "no checkpoint was saved there; train first")
        raise UserError(f"checkpoint not found ({err}); {hint}") from err
    except (RuntimeError, KeyError, ValueError) as err:  # a checkpoint of another shape or kind
        if isinstance(err, UserError):
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise UserError(f'the checkpoint in --model-dir "{model_dir}" does not fit trainer {trainer.cfg.TRAINER.NAME} '
                        f"with this configuration ({first[:300]}); use the config file and options of the training "
                        "run") from err


def write_config(cfg, out_dir) -> str:
    """``<out_dir>/config.yaml``: the resolved config, written atomically; returns its path."""
    path = osp.join(out_dir, CONFIG_FILE)
    atomic_write(path, lambda f: f.write(cfg.dump()))
    return path


def reuse_cpu_memory(cfg):
    if (torch.cuda.is_available() and cfg.USE_CUDA) or not cfg.get("CPU_REUSE_MEMORY", True):
        return
    from clip.host_memory import reuse_freed_memory

    reuse_freed_memory()


def run(args) -> int:
    """Run the command described by the parsed ``args``; returns the exit status."""
    if MISSING:
        print(f"Note: this Dassl has no {' and no '.join(MISSING)}; running without.", file=sys.stderr)
    cfg = cfg_from_args(args)
    if not cfg.TRAINER.NAME:
        raise UserError("no trainer: name the method with --trainer (trainers.list_methods() lists them)")
    check_dirs(args, cfg)
    distributed.setup(cfg)  # torchrun --nproc-per-node N: join the other processes (nothing otherwise)
    if cfg.SEED >= 0:  # before the log file opens, as the CoOp family's train.py
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    reuse_cpu_memory(cfg)

    out_dir = cfg.OUTPUT_DIR
    created = not osp.isdir(out_dir)
    # torchrun: rank 0 alone holds the folder's lock and writes log.txt
    lock = RunLock(out_dir).acquire() if RunLock is not None and distributed.is_main_process() else None
    try:
        return _run_locked(args, cfg, out_dir, created)
    finally:
        if lock is not None:
            lock.release()


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
        print(f"** System info **\n{collect_env_info()}\n")
    else:
        sys.stdout.console.write(short_header(cfg, log_path) + "\n")
        print_args(args, cfg, file=log_file)
        log_file.write("Collecting env info ...\n")
        log_file.write(f"** System info **\n{collect_env_info()}\n\n")

    try:
        trainer = build_trainer(cfg, seed=False)  # seeded above
        if args.eval_only:
            load_for_evaluation(trainer, args.model_dir, args.load_epoch)
    except UserError:
        if distributed.is_main_process():
            _forget_failed_start(out_dir, created)
        raise
    run_info = getattr(trainer, "run_info", None)
    if run_info is None:
        run_info = trainer.run_info = {}
    run_info.update(config_file=args.config_file or None, dataset_config_file=args.dataset_config_file or None)
    if distributed.is_main_process():
        write_config(cfg, out_dir)
        run_info.setdefault("result_extras", {})["resolved_config"] = CONFIG_FILE

    if args.eval_only:
        if distributed.is_main_process() and hasattr(trainer, "init_writer"):  # the trackers: scalars at step 0
            trainer.init_writer(osp.join(out_dir, "tensorboard"))
        try:
            trainer.test()
        finally:
            if hasattr(trainer, "close_writer"):
                trainer.close_writer()
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


#: what a run that failed while starting may have left in its folder
_OURS = ("log.txt", "run.lock", CONFIG_FILE)


def _forget_failed_start(out_dir, created):
    """After bad input found while building: remove the folder if this run created it and it holds only this run's
    log and lock, so that nothing looks like a run to resume."""
    if not created or not osp.isdir(out_dir):
        return
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
        return f'interrupted: run the same command with --resume "{output_dir}" to continue from the last saved epoch'
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
            print(f"The run failed; the traceback below is also in {path}", file=sys.stderr)


def main(argv=None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run, and return the exit status (0; 2 for bad input; 130 when
    training was interrupted)."""
    stdout, finished = sys.stdout, False
    try:
        status = run(parse_args(sys.argv[1:] if argv is None else argv))
        finished = True
        return status
    except UserError as err:
        _report(f"error: {err}")
        return 2
    except Exception as err:
        lost = distributed.lost_process_message(err)  # torchrun: another process died (None otherwise)
        if lost is None:
            _log_traceback()
            raise
        _report(f"error: {lost}")
        return 1
    finally:
        distributed.shutdown(finished)
        logger, sys.stdout = sys.stdout, stdout
        if logger is not stdout and isinstance(logger, Logger):
            logger.close()


__all__ = ["main", "run", "write_config"]
