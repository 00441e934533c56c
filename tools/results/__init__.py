"""Gather finished runs and build the papers' tables: ``python -m tools.results OUTPUT_ROOT --protocol P``.

Library use::

    from tools.results import Options, build, collect
    report = build("base2new", collect("output/"), Options(seeds=(1, 2, 3)))
    report.summary["rows"]     # every cell with its per-seed values
    report.summary["missing"]  # [{"dataset", "method", "seed", "part"}, ...]

See :mod:`tools.results.tables` for how each number is computed and :mod:`tools.results.runs` for how runs are
found and identified.
"""
from .runs import Collection, Run, collect  # noqa: F401
from .tables import PROTOCOLS, Options, Report, build, harmonic_mean  # noqa: F401
