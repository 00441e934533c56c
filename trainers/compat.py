"""What this project's engine has and the original Dassl.pytorch lacks, in one place.

The methods and ``train.py`` run on this project's ``dassl`` and, unchanged, on the real Dassl.pytorch. Whatever
they use beyond Dassl's public API comes from here: the real thing when the engine has it, otherwise a stand-in
that keeps the run working without the feature (:data:`MISSING` names what is skipped; ``train.py`` prints it in
one line).

- :class:`UserError`: input problems printed as one ``error:`` line (exit status 2).
- :data:`distributed`: torchrun support (one process on the real Dassl).
- :data:`RunLock`: one writer per output folder (None: no lock).
- :func:`write_run_result`: ``result.json`` (None: not written).
- :func:`atomic_write`: files that appear whole or not at all (the real Dassl: written in place).
- :data:`DATASET_REGISTRY`, :data:`OPTIMIZERS`, :data:`SCHEDULERS`: names to check before a run (None: not
  checked).
"""
from __future__ import annotations

from typing import List

#: features of this project's engine that the running Dassl lacks (human-readable, for a notice)
MISSING: List[str] = []

from datasets.errors import UserError  # dassl.utils.UserError, or the one stand-in for the real Dassl

try:
    from dassl.engine import distributed
except ImportError:  # the real Dassl: one process
    class distributed:  # noqa: N801  (stands in for the module)
        is_main_process = staticmethod(lambda: True)
        barrier = staticmethod(lambda: None)
        setup = staticmethod(lambda cfg: None)
        shutdown = staticmethod(lambda: None)
        lost_process_message = staticmethod(lambda err: None)

    MISSING.append("torchrun support")

try:
    from dassl.engine.run_result import write_run_result
except ImportError:
    write_run_result = None
    MISSING.append("result.json")

try:  # the TRACKER check (names and packages)
    from dassl.engine.scalar_sinks import check_trackers
except ImportError:  # the real Dassl's trainer writes tensorboard only and no predictions.csv
    check_trackers = None
    MISSING.append("TRACKER wandb/mlflow and TEST.SAVE_PREDICTIONS")

try:
    from dassl.utils import RunLock
except ImportError:
    RunLock = None
    MISSING.append("output-folder lock")

try:
    from dassl.utils import atomic_write
except ImportError:
    def atomic_write(path, write, binary=False):
        """The real Dassl has no atomic writes: ``write(f)`` fills the file in place."""
        with open(path, "wb" if binary else "w") as f:
            write(f)

try:
    from dassl.data.datasets import DATASET_REGISTRY
except ImportError:
    DATASET_REGISTRY = None

try:  # the optimizers and schedulers the engine builds (None: not checked before the run)
    from dassl.optim.lr_scheduler import AVAI_SCHEDS as SCHEDULERS
    from dassl.optim.optimizer import AVAI_OPTIMS as OPTIMIZERS
except ImportError:
    SCHEDULERS = OPTIMIZERS = None

__all__ = ["MISSING", "UserError", "distributed", "write_run_result", "RunLock", "atomic_write", "check_trackers",
           "DATASET_REGISTRY", "OPTIMIZERS", "SCHEDULERS"]
