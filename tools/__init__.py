"""Results tooling: read Dassl run logs and result files, build the papers' tables and plots.

- :mod:`tools.dassl_log`: parse Dassl's ``log.txt`` (end-of-training line, result block, arguments and config
  dump); shared by the root ``parse_test_res.py`` and by :mod:`tools.results`.
- :mod:`tools.results`: ``python -m tools.results OUTPUT_ROOT --protocol base2new|crossdataset|dg|fewshot``.
- ``tools/published/*.json``: published numbers, each entry with its source (paper and table).
"""
