"""``python -m tools.constraints``: write ``constraints.txt``, the exact environment the tests passed in.

It pins, at their installed versions, the packages of ``requirements-dev.txt`` and everything they require,
found through the installed packages' metadata (extras and environment markers evaluated here). Whatever else
is installed on the machine is left out. ``.ci/run`` and the README's test command install with
``pip install -c constraints.txt -r requirements-dev.txt``; regenerate the file after a change of versions, on a
machine where the suite has just passed.
"""
from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: Path):
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            yield from _requirements(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            yield Requirement(line)


def closure(roots) -> dict[str, str]:
    """``{name: installed version}`` of ``roots`` (Requirements) and everything they require, with extras."""
    found: dict[str, str] = {}
    todo = [(r, tuple(r.extras)) for r in roots]
    seen = set()
    while todo:
        req, extras = todo.pop()
        if (_key(req.name), extras) in seen:
            continue
        seen.add((_key(req.name), extras))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"error: {req.name} is not installed; install requirements-dev.txt first")
        found[dist.metadata["Name"]] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or ("",))):
                todo.append((sub, tuple(sub.extras)))
    return found


def main() -> int:
    pins = closure(list(_requirements(REPO / "requirements-dev.txt")))
    header = ("# The environment the test suite passed in: requirements-dev.txt and everything it requires, at the\n"
              f"# versions installed (Python {platform.python_version()}, {platform.system()} "
              f"{platform.machine()}). Written by `python -m tools.constraints`; used as\n"
              "# `python3 -m pip install -c constraints.txt -r requirements-dev.txt` (.ci/run, README \"Tests\").\n")
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: _key(kv[0]))]
    (REPO / "constraints.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {REPO / 'constraints.txt'}: {len(lines)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
