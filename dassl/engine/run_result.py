"""``<OUTPUT_DIR>/result.json``: the machine-readable record of a finished run (schema 1).

The file is written atomically and only after the run's final evaluation, so its presence means "this run
finished"; ``log_file`` names the log of the attempt that finished (a resumed run's is ``log.txt-<timestamp>``). Every key is always present (``null`` when unknown). The engine knows no method names: the learnable
parameter count comes from the registered models, the precision from ``trainer.precision`` (an object with
``.effective``, or a string) or else from ``cfg.TRAINER.<NAME>.PREC``.
"""
import datetime
import functools
import json
import os.path as osp
import platform
import subprocess
import sys

import torch

from dassl.utils import atomic_write, mkdir_if_missing

__all__ = ["build_run_result", "write_run_result", "RESULT_FILE"]

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1


@functools.lru_cache(maxsize=1)
def _project_version():
    """Git commit of the checkout holding this package, else the package version."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        sha = out.stdout.strip()
        if sha:
            return sha
    except (OSError, subprocess.SubprocessError):
        pass
    import dassl

    return dassl.__version__


def _versions():
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": tv,
        "project": _project_version(),
    }


def _stem(path):
    return osp.splitext(osp.basename(path))[0] if path else None


def _device_name(device):
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return "cuda:{} ({})".format(index, torch.cuda.get_device_name(index))
    return str(device)


def _precision(trainer):
    precision = getattr(trainer, "precision", None)
    if precision is not None:
        return str(getattr(precision, "effective", precision))
    cfg = trainer.cfg
    node = cfg.TRAINER.get(str(cfg.TRAINER.NAME).upper())
    if isinstance(node, dict) and "PREC" in node:
        return str(node["PREC"])
    return None


def _learnable_params(trainer):
    seen = set()
    total = 0
    for model in trainer._models.values():
        if model is None:
            continue
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _log_file():
    """The log file of the attempt that finished (``log.txt`` or a later ``log.txt-<timestamp>``), if any."""
    path = getattr(sys.stdout, "fpath", None)
    return path if isinstance(path, str) else None


def _classnames(trainer):
    """The run's class names in label order (``lab2cname``), or None."""
    lab2cname = getattr(trainer, "lab2cname", None)
    if not lab2cname:
        return None
    return [str(lab2cname[i]) for i in sorted(lab2cname)]


def _float_or_none(x):
    return None if x is None else float(x)


def _rate(images, seconds):
    if not images or not seconds or seconds <= 0:
        return None
    return images / seconds


def build_run_result(trainer, eval_only=False, model_dir=None, loaded_epoch=None):
    """The result record of ``trainer``'s last evaluation, as a dict in schema order."""
    cfg = trainer.cfg
    info = getattr(trainer, "run_info", None) or {}
    evaluation = getattr(trainer, "last_evaluation", None) or {}
    results = evaluation.get("results") or {}

    if eval_only:
        epochs = loaded_epoch if loaded_epoch is not None else getattr(trainer, "loaded_epoch", None)
        train_time = 0.0
        train_rate = None
    else:
        epochs = cfg.OPTIM.MAX_EPOCH
        train_time = getattr(trainer, "train_time", None)
        train_rate = _rate(getattr(trainer, "train_images_seen", 0), train_time)

    eval_time = evaluation.get("time_s")
    num_test = evaluation.get("num_images")
    record = {
        "schema": SCHEMA_VERSION,
        "status": "finished",
        "method": cfg.TRAINER.NAME,
        "config": _stem(info.get("config_file")),
        "dataset": cfg.DATASET.NAME,
        "dataset_config": _stem(info.get("dataset_config_file")),
        "seed": cfg.SEED,
        "subsample": cfg.DATASET.get("SUBSAMPLE_CLASSES"),
        "shots": cfg.DATASET.NUM_SHOTS,
        "epochs": epochs,
        "eval_only": bool(eval_only),
        "split": evaluation.get("split"),
        "accuracy": _float_or_none(results.get("accuracy")),
        "macro_f1": _float_or_none(results.get("macro_f1")),
        "error": _float_or_none(results.get("error_rate")),
        "num_test": num_test,
        "num_classes": getattr(trainer, "num_classes", None),
        "classnames": _classnames(trainer),
        "train_time_s": _float_or_none(train_time),
        "eval_time_s": _float_or_none(eval_time),
        "train_images_per_s": train_rate,
        "eval_images_per_s": _rate(num_test, eval_time),
        "learnable_params": _learnable_params(trainer),
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "device": _device_name(getattr(trainer, "device", None)),
        "precision": _precision(trainer),
        "model_dir": model_dir if eval_only else None,
        "output_dir": cfg.OUTPUT_DIR,
        "log_file": _log_file(),
        "versions": _versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    # what a trainer adds about itself (e.g. the origin of frozen prompt sets: path and SHA256)
    for key, value in (info.get("result_extras") or {}).items():
        record.setdefault(key, value)
    return record


def write_run_result(trainer, eval_only=False, model_dir=None, loaded_epoch=None):
    """Write ``<OUTPUT_DIR>/result.json`` atomically; returns its path."""
    record = build_run_result(trainer, eval_only=eval_only, model_dir=model_dir, loaded_epoch=loaded_epoch)
    out_dir = trainer.cfg.OUTPUT_DIR
    mkdir_if_missing(out_dir)
    path = osp.join(out_dir, RESULT_FILE)

    def _dump(f):
        json.dump(record, f, indent=2)
        f.write("\n")

    atomic_write(path, _dump)
    return path
