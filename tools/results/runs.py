"""Find finished runs under an output folder: ``result.json`` first, a finished ``log.txt`` otherwise.

A run is a folder holding ``result.json`` (written by the engine only when the run has finished its final
evaluation, see ``.notes/RESULT_JSON.md``) or Dassl logs. Without ``result.json`` a folder counts only when its
newest complete log shows a finished run: a training log with a result block after the end-of-training line, or
an eval-only log with a result block (see :mod:`tools.dassl_log`). Every run records which of the two it came
from (``source``: ``json`` or ``log``), and the tables say so.

Runs are identified by their fields (method, config, dataset, seed, subsample, shots, eval-only, model_dir), not
by folder names. Folder names are used for one thing only: a path component naming a protocol (``base2new``,
``crossdataset``/``xd``, ``dg``, ``fewshot``) keeps a run out of the other protocols' tables, which matters where
two protocols produce runs with the same fields (an ImageNet 16-shot training run is both a few-shot result and
the cross-dataset source).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tools.dassl_log import LOG_NAME, newest_complete_log

from .names import canonical_dataset

RESULT_FILE = "result.json"

_HINTS = {
    "base2new": "base2new", "b2n": "base2new", "base_to_new": "base2new", "base2novel": "base2new",
    "crossdataset": "crossdataset", "cross_dataset": "crossdataset", "xd": "crossdataset",
    "dg": "dg", "domain_generalization": "dg", "domain_generalisation": "dg",
    "fewshot": "fewshot", "few_shot": "fewshot",
}
_PRUNE = {"tensorboard", "__pycache__"}


@dataclass
class Run:
    """One finished run, from its result.json or its log."""

    path: Path  # the run folder as found
    file: Path  # result.json, or the log read
    source: str  # "json" or "log"
    method: str
    config: str | None
    dataset: str  # canonical key (tools.results.names.DATASETS)
    seed: int | None
    subsample: str  # "base", "new" or "all"
    shots: int | None
    epochs: int | None
    eval_only: bool
    accuracy: float
    macro_f1: float | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    model_dir: str | None = None
    output_dir: str | None = None
    finished_at: str | None = None
    hint: str | None = None  # protocol named by a folder on the run's path
    record: dict = field(default_factory=dict, repr=False)

    @property
    def variant(self) -> tuple[str, str | None]:
        return (self.method, self.config)

    def locations(self) -> list[tuple[str, ...]]:
        """Path components under which this run may be referred to (found path, recorded output_dir)."""
        out = [_parts(str(self.path.resolve()))]
        if self.output_dir:
            out.append(_parts(self.output_dir))
        return out


@dataclass
class Collection:
    runs: list[Run]
    unfinished: list[dict]  # {"path", "why"}: folders with a log or result file but no finished run
    notes: list[str]


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in Path(os.path.normpath(path)).parts if p not in (".", "/", ""))


def refers_to(model_dir: str | None, run: Run) -> bool:
    """Does a ``--model-dir`` value name this run's folder? Either path may be relative: the shorter must be a
    tail of the longer, at least two components long (``<...>/seed1`` alone is too common to count)."""
    if not model_dir:
        return False
    ref = _parts(model_dir)
    for loc in run.locations():
        k = min(len(ref), len(loc))
        if k >= 2 and ref[-k:] == loc[-k:]:
            return True
    return False


def protocol_hint(parts: list[tuple[str, ...]]) -> str | None:
    found = {_HINTS[p.lower()] for ps in parts for p in ps if p.lower() in _HINTS}
    return found.pop() if len(found) == 1 else None


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _stem(path: str | None) -> str | None:
    return Path(path).stem if path else None


def _subsample(v) -> str:
    return str(v).lower() if v not in (None, "") else "all"


def _from_json(folder: Path, rel: tuple[str, ...], rec: dict) -> Run:
    hint = protocol_hint([rel, _parts(rec["output_dir"]) if rec.get("output_dir") else ()])
    return Run(
        path=folder, file=folder / RESULT_FILE, source="json",
        method=str(rec["method"]), config=rec.get("config"),
        dataset=canonical_dataset(rec.get("dataset") or rec.get("dataset_config")),
        seed=_int(rec.get("seed")), subsample=_subsample(rec.get("subsample")), shots=_int(rec.get("shots")),
        epochs=_int(rec.get("epochs")), eval_only=bool(rec.get("eval_only")), accuracy=float(rec["accuracy"]),
        macro_f1=_float(rec.get("macro_f1")), train_time_s=_float(rec.get("train_time_s")),
        eval_time_s=_float(rec.get("eval_time_s")), model_dir=rec.get("model_dir") or None,
        output_dir=rec.get("output_dir"), finished_at=rec.get("finished_at"), hint=hint, record=rec,
    )


def _from_log(folder: Path, rel: tuple[str, ...]):
    """(Run, None) from the newest finished log, or (None, why)."""
    log, skipped = newest_complete_log(folder)
    if log is None:
        return None, f"no result.json and no finished log ({len(skipped)} unfinished log(s))"
    a, c = log.args, log.cfg
    method = c.get("TRAINER.NAME") or a.get("trainer")
    dataset = canonical_dataset(c.get("DATASET.NAME") or _stem(a.get("dataset_config_file")))
    if not method or not dataset:
        return None, f"{log.path.name}: finished, but its arguments/config dump do not name the method and dataset"
    output_dir = a.get("output_dir") or c.get("OUTPUT_DIR") or None
    load_epoch = _int(a.get("load_epoch"))
    run = Run(
        path=folder, file=log.path, source="log", method=method, config=_stem(a.get("config_file")),
        dataset=dataset, seed=_int(c.get("SEED", a.get("seed"))),
        subsample=_subsample(c.get("DATASET.SUBSAMPLE_CLASSES")),
        shots=_int(c.get("DATASET.NUM_SHOTS")),
        epochs=load_epoch if log.eval_only else _int(c.get("OPTIM.MAX_EPOCH")),
        eval_only=log.eval_only, accuracy=log.metrics["accuracy"], macro_f1=log.metrics.get("macro_f1"),
        # "Elapsed" covers training and the final test; an eval-only run trains for 0 s (as in result.json).
        train_time_s=0.0 if log.eval_only else log.elapsed_s,
        model_dir=a.get("model_dir") or None, output_dir=output_dir,
        hint=protocol_hint([rel, _parts(output_dir) if output_dir else ()]),
        record={"log": str(log.path), "skipped_newer_logs": [str(p) for p in skipped]},
    )
    return run, None


def _is_run_folder(files: set[str]) -> bool:
    return RESULT_FILE in files or any(f == LOG_NAME or f.startswith(LOG_NAME + "-") for f in files)


def collect(root: str | Path, exclude: str | Path | None = None) -> Collection:
    """Every finished run under ``root`` (``exclude``: a folder to skip, e.g. where tables are written)."""
    root = Path(root)
    excl = Path(exclude).resolve() if exclude else None
    runs, unfinished, notes = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not d.startswith(".")
                             and (excl is None or (folder / d).resolve() != excl))
        files = set(filenames)
        if not _is_run_folder(files):
            continue
        rel = (root.resolve().name,) + _parts(os.path.relpath(folder, root))
        run, why = None, None
        if RESULT_FILE in files:
            try:
                with open(folder / RESULT_FILE, encoding="utf-8") as f:
                    rec = json.load(f)
                if rec.get("status", "finished") != "finished" or rec.get("accuracy") is None:
                    why = f"result.json status={rec.get('status')!r}, accuracy={rec.get('accuracy')!r}"
                elif not rec.get("method") or not (rec.get("dataset") or rec.get("dataset_config")):
                    why = "result.json does not name the method and dataset"
                elif rec.get("split") not in (None, "test"):
                    why = f"result.json is on split {rec.get('split')!r}, not test"
                else:
                    run = _from_json(folder, rel, rec)
            except (OSError, ValueError, KeyError, TypeError) as e:
                why = f"unreadable result.json ({type(e).__name__}: {e})"
            if run is None:
                notes.append(f"{folder}: {why}; not used")
        if run is None and RESULT_FILE not in files:
            run, why = _from_log(folder, rel)
        if run is None:
            unfinished.append({"path": str(folder), "why": why})
        else:
            runs.append(run)
    return Collection(runs=runs, unfinished=unfinished, notes=notes)
