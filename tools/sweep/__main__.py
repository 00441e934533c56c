"""``python -m tools.sweep SPEC.yaml [--dry-run] [--executor local|slurm] [resource flags]``.

Expands the spec (methods x datasets x seeds x protocol) into the protocol scripts' jobs, skips the finished
ones (``result.json``), submits the rest as their dependencies finish, shows live progress (also in
``OUTPUT/sweeps/NAME/status.txt`` and ``state.json``), resubmits a failed job up to ``max_attempts`` times
(it resumes from its last checkpoint), lists the jobs that still failed with their log and last error line,
and prints the spec's tables through ``python -m tools.results``.

Exit status: 0 when every job finished, 1 when some failed, 2 for a bad spec or flag (nothing submitted), 3 when
Slurm refused a submission or could not be asked about the jobs (sbatch/squeue failed; one line with Slurm's own
words; what was submitted is in state.json, and the same command continues once Slurm works).
"""
from __future__ import annotations

import argparse
import sys

from . import driver, spec as specs
from .executors import LocalExecutor, SchedulerError, SlurmExecutor


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the sweep spec (YAML), e.g. configs/sweeps/demo.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and which are finished; run nothing")
    p.add_argument("--executor", choices=("local", "slurm"), help="override the spec's executor")
    p.add_argument("--output", help="output root (OUTPUT), overriding the spec")
    p.add_argument("--data", help="dataset root (DATA), overriding the spec")
    p.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    p.add_argument("--max-attempts", type=int, help="submissions per job and command (default 3)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between progress updates (default 5)")
    p.add_argument("--no-tables", action="store_true", help="do not print the tables at the end")
    g = p.add_argument_group("local executor")
    g.add_argument("--workers", type=int, help="concurrent jobs (default: one per visible GPU, else 1)")
    g = p.add_argument_group("slurm executor (override the spec's slurm: section)")
    g.add_argument("--partition")
    g.add_argument("--time", type=int, help="time limit per job, minutes (default 60)")
    g.add_argument("--gpus", type=int, help="GPUs per job")
    g.add_argument("--cpus", type=int, help="CPUs per job")
    g.add_argument("--mem", help="memory per job, e.g. 32GB")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--max-concurrent", type=int, help="running tasks per job array (default 256)")
    g.add_argument("--signal-delay", type=int, dest="signal_delay_s",
                   help="seconds before the time limit at which the job is checkpointed and requeued (default 90)")
    return p


def make_executor(spec, args, folder):
    if spec["executor"] == "local":
        workers = args.workers or spec["local"].get("workers")
        return LocalExecutor(folder / "logs", workers=int(workers) if workers else None)
    return SlurmExecutor(folder / "logs", job_name=spec["name"], **spec["slurm"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        spec = specs.load(args.spec, {"executor": args.executor, "output": args.output, "data": args.data,
                                      "seeds": args.seeds, "max_attempts": args.max_attempts})
        flags = {k: getattr(args, k) for k in specs.SECTION_VALUES["slurm"] if getattr(args, k) is not None}
        spec["slurm"] = specs.check_section("slurm", dict(spec["slurm"], **flags), "the command line")
        if args.workers is not None and args.workers < 1:
            raise specs.SpecError(f"--workers must be at least 1, got {args.workers}")
        jobs = specs.expand(spec)
    except specs.SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        driver.dry_run(jobs, spec)
        return 0
    folder = driver.sweep_dir(spec)
    try:
        executor = make_executor(spec, args, folder)
    except (RuntimeError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        counts = driver.Sweep(spec, jobs, executor, poll_s=args.poll).run()
    except SchedulerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if not args.no_tables and counts["done"]:
        driver.tables(spec)
    return 0 if counts["done"] == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
