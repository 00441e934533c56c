"""Published numbers kept as data in ``tools/published/<protocol>.json``.

Each file has ``sources`` (ref -> paper, table, verification status), in the default preference order, and
``entries``: ``{"method", "dataset", metric values, "ref", "source"}``, where ``dataset`` is a canonical dataset
name or ``"Average"`` (with ``"over"``: the datasets it averages), plus ``"shots"`` in the few-shot file. A method
cascaded with CasPL is named ``"<Method> + CasPL"`` (the tables' name for such runs). Only numbers found in the
project's reference notes are stored: baselines.md section 5 (method READMEs), the MPL paper's Tables II and III,
CasPL's README and figure 3 (caspl.md A4), and PromptKD's README tables (methods-more.md section 3).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .names import canonical_dataset, same_method

DATA_DIR = Path(__file__).resolve().parents[1] / "published"
AVERAGE = "Average"


@dataclass
class Published:
    sources: dict[str, dict]
    entries: list[dict]
    refs: list[str]  # the sources in use, in preference order

    def lookup(self, method: str, dataset: str, shots: int | None = None) -> list[dict]:
        """Entries for ``method`` on ``dataset`` (or ``"Average"``), one per source, in preference order;
        ``shots``: only entries for that number of shots."""
        out = []
        for ref in self.refs:
            for e in self.entries:
                if e["ref"] == ref and same_method(e["method"], method) and _dataset(e) == dataset \
                        and (shots is None or e.get("shots") == shots):
                    out.append(e)
        return out


def _dataset(entry: dict) -> str:
    return AVERAGE if entry["dataset"] == AVERAGE else canonical_dataset(entry["dataset"])


def load(protocol: str, wanted: list[str] | None = None) -> Published | None:
    """The published numbers for ``protocol`` (``dg`` shares the cross-dataset file), restricted to and ordered by
    ``wanted`` refs if given. None when the repository has no numbers for the protocol."""
    path = DATA_DIR / f"{'crossdataset' if protocol == 'dg' else protocol}.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    sources = data["sources"]
    if wanted:
        unknown = [r for r in wanted if r not in sources]
        if unknown:
            raise ValueError(f"unknown published source(s) {unknown}; {path.name} has {list(sources)}")
        refs = list(wanted)
    else:
        refs = list(sources)
    return Published(sources=sources, entries=data["entries"], refs=refs)
