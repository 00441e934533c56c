"""Read test results from Dassl logs and print the mean and spread over seeds.

Compatible with the CoOp/MaPLe ``parse_test_res.py``: same arguments, same output lines. Given::

    my_experiment/
        seed1/log.txt
        seed2/log.txt
        seed3/log.txt

``python parse_test_res.py output/my_experiment`` prints one ``file: ... accuracy: X%.`` line per seed and then
``* accuracy: MEAN% +- STD%`` (population std over seeds, as ``np.std``), or ``+- 1.96*std/sqrt(n)`` with
``--ci95``. ``--multi-exp`` treats each sub-folder of the directory as one such experiment and also prints the
average over experiments. ``--keyword`` picks the metric (``accuracy``, ``error``, ``macro_f1``).

Differences from the reference, all of which only make more logs parse:

- A training log counts after either end-of-training line, ``Finish training`` (what Dassl prints) or
  ``Finished training`` (what the reference waited for), so training logs parse without ``--test-log``.
- An eval-only log (its arguments say ``eval_only: True``) counts after ``=> result`` without ``--test-log``.
  ``--test-log`` still forces ``=> result`` for every log, as in the reference.
- Each seed folder may hold ``log.txt-<timestamp>`` files (Dassl writes one when ``log.txt`` exists): the newest
  log that reached a result is used, so a re-run supersedes the first run and a crashed re-run does not hide it.
  The ``file:`` line names the log used; skipped logs are listed on stderr.
- Sub-folders without a log are skipped with a note on stderr (the reference stopped with an assertion). When
  the directory holds no seed folders but a log of its own, that log is read.

When no log yields the metric, it exits with ``Nothing found in <directory>`` (status 1).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import OrderedDict, defaultdict

from tools.dassl_log import end_signals, log_candidates, metrics_after, read_lines


def compute_ci95(res):
    return 1.96 * _pstd(res) / math.sqrt(len(res))


def _mean(values):
    return math.fsum(values) / len(values)


def _pstd(values):
    """Population standard deviation, as ``np.std``."""
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def parse_log_dir(run_dir, keyword, test_log=False):
    """(log path, value) from the newest log in ``run_dir`` that has the metric, plus the newer logs skipped."""
    skipped = []
    for path in log_candidates(run_dir):
        lines = read_lines(path)
        found = metrics_after(lines, [keyword], end_signals(lines, test_log))
        if keyword in found:
            return str(path), found[keyword], skipped
        skipped.append(str(path))
    return None, None, skipped


def parse_function(keyword, directory="", args=None):
    print(f"Parsing files in {directory}")
    run_dirs = [os.path.join(directory, d) for d in listdir_nohidden(directory, sort=True)]
    run_dirs = [d for d in run_dirs if os.path.isdir(d)]
    if not any(log_candidates(d) for d in run_dirs) and log_candidates(directory):
        run_dirs = [directory]

    outputs = []
    for run_dir in run_dirs:
        fpath, value, skipped = parse_log_dir(run_dir, keyword, args.test_log)
        for s in skipped:
            print(f"note: skipped {s} (no '{keyword}' result after the end signal)", file=sys.stderr)
        if fpath is None:
            if not skipped:
                print(f"note: no log.txt in {run_dir}", file=sys.stderr)
            continue
        outputs.append(OrderedDict([("file", fpath), (keyword, value)]))

    if not outputs:
        sys.exit(f"Nothing found in {directory}")

    metrics_results = defaultdict(list)
    for output in outputs:
        msg = ""
        for key, value in output.items():
            if isinstance(value, float):
                msg += f"{key}: {value:.2f}%. "
            else:
                msg += f"{key}: {value}. "
            if key != "file":
                metrics_results[key].append(value)
        print(msg)

    output_results = OrderedDict()
    print("===")
    print(f"Summary of directory: {directory}")
    for key, values in metrics_results.items():
        avg = _mean(values)
        std = compute_ci95(values) if args.ci95 else _pstd(values)
        print(f"* {key}: {avg:.2f}% +- {std:.2f}%")
        output_results[key] = avg
    print("===")
    return output_results


def main(args):
    if args.multi_exp:
        final_results = defaultdict(list)
        for directory in listdir_nohidden(args.directory, sort=True):
            directory = os.path.join(args.directory, directory)
            if not os.path.isdir(directory):
                continue
            results = parse_function(args.keyword, directory=directory, args=args)
            for key, value in results.items():
                final_results[key].append(value)
        print("Average performance")
        for key, values in final_results.items():
            print(f"* {key}: {_mean(values):.2f}%")
    else:
        parse_function(args.keyword, directory=args.directory, args=args)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95%% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs (after '=> result')")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
