"""Train or evaluate a prompt-learning method: the CoOp family's command line.

Usage (same flags as CoOp's and MaPLe's ``train.py``)::

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml \
        --output-dir output/coop/oxford_pets/seed1 DATASET.NUM_SHOTS 16

    python train.py ... --eval-only --model-dir output/coop/oxford_pets/seed1 --load-epoch 50

The config is merged in this order, later sources winning: Dassl's defaults, the project's keys, the dataset YAML,
the method YAML, the flags, then trailing ``KEY VALUE`` pairs. This file is only the command line: the library
behind it is :mod:`trainers.api` (``build_cfg``, ``build_trainer``) and :mod:`trainers.runner` (one run: folder,
lock, log, training or evaluation; its docstring lists what differs from the original ``train.py``).
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.realpath(__file__))


def _project_packages_present():
    """Fail with one line when this is not a complete checkout (the packages are missing or shadowed)."""
    import importlib

    for name in ("trainers", "datasets"):
        expected = osp.join(REPO_ROOT, name, "__init__.py")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            module = None
        where = getattr(module, "__file__", None)
        if where is None or osp.realpath(where) != expected:
            found = "" if module is None else f" (found {where or getattr(module, '__path__', name)!r} instead)"
            print(f"error: the project's `{name}` package is missing: expected {expected}{found}. Run train.py "
                  "from a complete checkout of the repository.", file=sys.stderr)
            raise SystemExit(2)


_project_packages_present()
from datasets.errors import UserError  # noqa: E402

try:
    from trainers.runner import main  # noqa: E402  (importing trainers registers every method)
except UserError as err:  # a method's registration is wrong (a missing config folder, a name used twice, ...)
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)

if __name__ == "__main__":
    sys.exit(main())
