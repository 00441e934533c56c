"""Does the fast tier catch deliberate faults? Each fault is applied to its own copy of the working tree, the fast
tier (``pytest -m "not slow" -x``) runs there, and the fault is *caught* when a test fails.

    python tests/mutations.py                    # every fault below; exit 1 if any is not caught
    python tests/mutations.py --only kg-sign     # some of them (names from --list)
    python tests/mutations.py --extra mine.json  # also your own: [{"name", "path", "old", "new", "why"}, ...]

A fault whose ``old`` text is no longer found exactly once is an error (exit 2), so the list cannot go stale in
silence. The unmodified copy is tested first (``--no-baseline`` skips that) so that a failing tree is not mistaken
for caught faults.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"]


class Refused(Exception):
    """Bad input: one line, exit 2."""


@dataclass(frozen=True)
class Fault:
    name: str
    path: str  # relative to the repository root
    old: str  # found exactly once in the file
    new: str
    why: str


FAULTS = [
    Fault("kg-sign", "trainers/kgcoop.py", "return LossOutput(ce + kg,", "return LossOutput(ce - kg,",
          "a loss term's sign: KgCoOp pushes its prompts away from the hand-written ones"),
    Fault("src-weight", "trainers/promptsrc.py", "reduction=\"mean\") * text_weight",
          "reduction=\"mean\") * text_weight * 100", "a loss weight: PromptSRC's text consistency term 100x"),
    Fault("prompt-order", "trainers/registry.py", "frozen_order=((ADAPT, FROZEN), (FROZEN, ADAPT))",
          "frozen_order=((FROZEN, ADAPT), (FROZEN, ADAPT))",
          "a prompt order swapped: a frozen (CasPL) text set placed before the method's own"),
    Fault("frozen-trainable", "trainers/base.py", 'param.requires_grad_(name.startswith("prompt_learner."))',
          'param.requires_grad_(name.startswith(("prompt_learner.", "frozen_sets.")))',
          "a frozen prompt set made trainable"),
    Fault("classes-ignored", "trainers/checkpoints.py", "    if trained == current:\n        return",
          "    if len(trained) == len(current):\n        return",
          "a class-dependent parameter loaded onto other classes of the same count"),
    Fault("checkpoint-drops", "dassl/engine/trainer.py", "model_dict = self._models[name].state_dict()",
          "model_dict = dict(list(self._models[name].state_dict().items())[1:])",
          "a checkpoint that drops a tensor"),
    Fault("no-lr-step", "trainers/base.py", "(self.batch_idx + 1) == self.num_batches:\n            self.update_lr()",
          "False:\n            self.update_lr()", "a skipped learning-rate scheduler step"),
]


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked files, ignored ones left out)."""
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src, target = REPO / rel, dest / rel
        if src.is_symlink() or src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():  # e.g. scripts/<method> -> _method
                os.symlink(os.readlink(src), target)
            else:
                shutil.copy2(src, target)


def mutated(tree: Path, fault: Fault) -> str:
    """The text of ``fault.path`` in ``tree`` with the fault applied."""
    path = tree / fault.path
    text = path.read_text() if path.is_file() else ""
    found = text.count(fault.old)
    if found != 1:
        raise Refused(f"fault {fault.name!r}: its text is found {found} times in {fault.path} (once is "
                         "needed); update the fault to the current code")
    return text.replace(fault.old, fault.new)


def run_tier(tree: Path, extra_args):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    proc = subprocess.run(PYTEST + list(extra_args), cwd=tree, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return proc.returncode, failed, time.time() - start, proc.stdout[-2000:] + proc.stderr[-2000:]


def load_faults(args):
    faults = list(FAULTS)
    for extra in args.extra:
        try:
            faults += [Fault(**item) for item in json.loads(Path(extra).read_text())]
        except (OSError, ValueError, TypeError) as err:
            raise Refused(f"{extra}: {err}; give a JSON list of objects with the keys name, path, old, "
                             "new and why")
    if args.only:
        known = {f.name for f in faults}
        unknown = sorted(set(args.only) - known)
        if unknown:
            raise Refused(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        faults = [f for f in faults if f.name in args.only]
    return faults


def main(argv=None) -> int:
    try:
        return judge(argv)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def judge(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=[], help="names of the faults to try")
    parser.add_argument("--extra", nargs="+", default=[], help="JSON files with more faults")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--no-baseline", action="store_true", help="do not test the unmodified copy first")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    faults = load_faults(args)
    if args.list:
        for f in faults:
            print(f"{f.name:18s} {f.path:28s} {f.why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        pristine = Path(tmp) / "pristine"
        copy_tree(pristine)
        for fault in faults:  # every fault must apply before anything runs
            mutated(pristine, fault)
        if not args.no_baseline:
            code, failed, seconds, tail = run_tier(pristine, args.pytest_args)
            print(f"baseline: {'passes' if code == 0 else 'FAILS'} ({seconds:.0f} s)", flush=True)
            if code != 0:
                print(tail, file=sys.stderr)
                print("error: the unmodified tree fails the fast tier; fix that before judging faults",
                      file=sys.stderr)
                return 2
        missed = []
        for fault in faults:
            tree = Path(shutil.copytree(pristine, Path(tmp) / fault.name, symlinks=True))
            (tree / fault.path).write_text(mutated(tree, fault))
            code, failed, seconds, tail = run_tier(tree, args.pytest_args)
            if code == 0:
                missed.append(fault)
                print(f"NOT CAUGHT  {fault.name:18s} {fault.why} ({seconds:.0f} s)", flush=True)
            else:
                by = failed[0] if failed else f"pytest exit {code}"
                print(f"caught      {fault.name:18s} by {by} ({seconds:.0f} s)", flush=True)
            shutil.rmtree(tree)
    print(f"{len(faults) - len(missed)} of {len(faults)} faults caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
