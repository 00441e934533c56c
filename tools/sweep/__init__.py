"""Sweeps: every run of a paper table from one spec file, on Slurm (submitit) or a local pool.

``python -m tools.sweep configs/sweeps/demo.yaml`` (see :mod:`tools.sweep.__main__`); the spec format and the
protocols are in :mod:`tools.sweep.spec`, the executors in :mod:`tools.sweep.executors`, the loop in
:mod:`tools.sweep.driver`.
"""
from .spec import PROTOCOLS, Job, Phase, SpecError, expand, load  # noqa: F401
