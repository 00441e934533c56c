"""Read Dassl ``log.txt`` files: the final result block, the arguments and config dump, the run's end.

A Dassl training log ends with::

    Finish training                 (Dassl >= 0.6.1; CoOp-era forks print "Finished training")
    Deploy the last-epoch model
    Evaluate on the *test* set
    => result
    * total: 1,500
    * correct: 1,415
    * accuracy: 94.3%               (one decimal since Dassl 0.6.2; older versions print two: 94.33%)
    * error: 5.7%
    * macro_f1: 94.1%
    Elapsed: 0:13:32

An eval-only log (``--eval-only``, its ``** Arguments **`` block says ``eval_only: True``) has the same result
block and no end-of-training line.

Which log file: Dassl never overwrites ``log.txt``; when it exists, a new run in the same folder writes
``log.txt-YYYY-mm-dd-HH-MM-SS`` instead. So ``log.txt`` is the oldest log and the timestamp orders the rest
(by name, not file time, which copying changes). :func:`log_candidates` lists them newest first, and readers take
the newest *complete* one (it reached the result block), so a re-run supersedes an older run and a newer attempt
that crashed does not hide the older finished one.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path

END_OF_TRAINING = ("Finish training", "Finished training")
RESULT_HEADER = "=> result"
LOG_NAME = "log.txt"

_TIMESTAMPED = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
_ELAPSED = re.compile(r"^Elapsed: (?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")
_TOTAL = re.compile(r"^\* total: ([\d,]+)$")
_CFG_LINE = re.compile(r"^( *)([A-Za-z0-9_]+):(?: (.*))?$")
_ARG_LINE = re.compile(r"^([a-z0-9_]+): ?(.*)$")


def metric_regex(keyword: str) -> re.Pattern:
    """The reference parser's pattern for ``* <keyword>: <number>%`` (one or two decimals, or any float)."""
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def log_candidates(run_dir: str | Path) -> list[Path]:
    """Dassl log files in ``run_dir``, newest first (``log.txt-<timestamp>`` by timestamp, ``log.txt`` last)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stamped = []
    for p in run_dir.iterdir():
        m = _TIMESTAMPED.match(p.name)
        if m and p.is_file():
            stamped.append((m.group(1), p))
    out = [p for _, p in sorted(stamped, reverse=True)]
    plain = run_dir / LOG_NAME
    if plain.is_file():
        out.append(plain)
    return out


def read_lines(path: str | Path) -> list[str]:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f]


def arguments(lines: list[str]) -> dict[str, str]:
    """The ``key: value`` lines of the ``** Arguments **`` block (raw strings)."""
    out: dict[str, str] = {}
    inside = False
    for line in lines:
        if line == "** Arguments **":
            inside = True
            continue
        if not inside:
            continue
        if line == "** Config **":
            break
        if line.startswith("*"):
            continue
        m = _ARG_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def config_dump(raw_lines: list[str]) -> dict[str, str]:
    """The yacs dump after ``** Config **`` as ``{"DATASET.NAME": "EuroSAT", ...}`` (raw strings).

    Needs the lines with their indentation (not stripped): nesting is two spaces per level.
    """
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    inside = False
    for raw in raw_lines:
        line = raw.rstrip("\n").rstrip()
        if line.strip() == "** Config **":
            inside = True
            continue
        if not inside:
            continue
        if line.startswith("*") and not stack:
            continue  # the banner under "** Config **"
        if line.startswith("Collecting env info") or line.startswith("** ") or line.startswith("Loading trainer"):
            break
        m = _CFG_LINE.match(line)
        if not m:
            continue  # continuation of a multi-line value
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m.group(2)])
        value = (m.group(3) or "").strip()
        out[key] = value
        if not value:
            stack.append((indent, m.group(2)))
    return out


def is_eval_only(lines: list[str]) -> bool:
    return arguments(lines).get("eval_only") == "True"


def end_signals(lines: list[str], test_log: bool = False) -> tuple[str, ...]:
    """Lines after which the result counts.

    ``--test-log`` (the reference flag): after ``=> result``. Otherwise after the end-of-training line, in either
    spelling, and for an eval-only log (which has none) after ``=> result``.
    """
    if test_log or is_eval_only(lines):
        return (RESULT_HEADER,)
    return END_OF_TRAINING


def metrics_after(lines: list[str], keywords: list[str], signals: tuple[str, ...]) -> dict[str, float]:
    """Values of ``* <keyword>: X%`` on lines after the first line equal to one of ``signals``.

    As in the reference parser, the last match after the signal wins (the final test follows any validation
    blocks).
    """
    regexes = {k: metric_regex(k) for k in keywords}
    found: dict[str, float] = {}
    go = False
    for line in lines:
        if line in signals:
            go = True
        if not go:
            continue
        for name, rx in regexes.items():
            m = rx.search(line)
            if m:
                try:
                    found[name] = float(m.group(1))
                except ValueError:
                    pass
    return found


def _elapsed_seconds(lines: list[str]) -> float | None:
    for line in reversed(lines):
        m = _ELAPSED.match(line)
        if m:
            days, h, mnt, s = m.groups()
            return _dt.timedelta(days=int(days or 0), hours=int(h), minutes=int(mnt), seconds=float(s)).total_seconds()
    return None


@dataclass
class DasslLog:
    """What a finished Dassl log tells about its run."""

    path: Path
    args: dict[str, str] = field(default_factory=dict)
    cfg: dict[str, str] = field(default_factory=dict)
    eval_only: bool = False
    finished: bool = False  # the accuracy line appears after the end signal
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, error, macro_f1 (percent)
    num_test: int | None = None
    elapsed_s: float | None = None  # "Elapsed:" of a training run: training plus the final test


def read_log(path: str | Path) -> DasslLog:
    path = Path(path)
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        raw = f.read().splitlines()
    lines = [line.strip() for line in raw]
    args = arguments(lines)
    eval_only = args.get("eval_only") == "True"
    signals = (RESULT_HEADER,) if eval_only else END_OF_TRAINING
    metrics = metrics_after(lines, ["accuracy", "error", "macro_f1"], signals)
    num_test = None
    go = False
    for line in lines:
        go = go or line in signals
        m = _TOTAL.match(line) if go else None
        if m:
            num_test = int(m.group(1).replace(",", ""))
    return DasslLog(
        path=path,
        args=args,
        cfg=config_dump(raw),
        eval_only=eval_only,
        finished="accuracy" in metrics,
        metrics=metrics,
        num_test=num_test,
        elapsed_s=None if eval_only else _elapsed_seconds(lines),
    )


def newest_complete_log(run_dir: str | Path) -> tuple[DasslLog | None, list[Path]]:
    """The newest finished log in ``run_dir`` and the newer logs skipped because they did not finish."""
    skipped: list[Path] = []
    for p in log_candidates(run_dir):
        log = read_log(p)
        if log.finished:
            return log, skipped
        skipped.append(p)
    return None, skipped
