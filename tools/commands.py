"""The console commands of an installed project (``[project.scripts]`` of pyproject.toml).

Each is the module's own command line, as ``python train.py ...`` or ``python -m tools.results ...`` from a
checkout: ``mpl-train``, ``mpl-sweep``, ``mpl-results``, ``mpl-inspect``, ``mpl-predict``, ``mpl-prepare``,
``mpl-imagefolder``, ``mpl-parse-test-res``.

The project imports its packages by their own names (``clip``, ``dassl``, ``datasets``, ...), which openai-clip,
the real Dassl and Hugging Face's datasets use too. The wheel installs the project as one folder, ``mpl_clip/``,
so that none of their files is overwritten; a command puts that folder (a checkout's root, for an editable
install) first on ``sys.path`` before it imports anything of the project, so the project's packages are the ones
it runs. If a package of the same name was imported before from elsewhere (only possible when these functions
are called from other Python code), the command stops with one ``error:`` line instead of mixing the two.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ["ROOT", "use_project_packages", "train", "sweep", "results", "inspect", "predict", "prepare",
           "imagefolder", "parse_test_res"]

#: the folder that holds clip/, dassl/, datasets/, trainers/, tools/, configs/ and scripts/
ROOT = Path(__file__).resolve().parents[1]
#: the project's top-level names that other distributions use too
SHARED_NAMES = ("clip", "dassl", "datasets")


class ForeignPackageError(RuntimeError):
    """A package of one of the project's names was already imported from another distribution."""


def use_project_packages() -> None:
    """Make ``import clip`` (``dassl``, ``datasets``, ``trainers``, ``tools``) import the project's packages."""
    for name in SHARED_NAMES:
        module = sys.modules.get(name)
        where = getattr(module, "__file__", None) if module is not None else None
        if where is not None and ROOT not in Path(where).resolve().parents:
            raise ForeignPackageError(f"the module {name!r} was already imported from {where}, another "
                                      f"distribution's; run this command in a process of its own")
    if not sys.path or Path(sys.path[0] or ".").resolve() != ROOT:
        sys.path.insert(0, str(ROOT))


def _run(module: str, call=lambda mod: mod.main()) -> None:
    try:
        use_project_packages()
    except ForeignPackageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(call(importlib.import_module(module)))


def train():
    _run("train")


def sweep():
    _run("tools.sweep.__main__")


def results():
    _run("tools.results.__main__")


def inspect():
    _run("tools.inspect")


def predict():
    _run("tools.predict")


def prepare():
    _run("datasets.prepare")


def imagefolder():
    _run("datasets.imagefolder")


def _parse_test_res(module) -> int:
    module.main(module.build_parser().parse_args())
    return 0


def parse_test_res():
    _run("parse_test_res", _parse_test_res)
