"""From finished runs to the papers' tables, per protocol.

How numbers are computed (the conventions of the CoOp/MaPLe/PromptSRC papers and their parse_test_res.py):

- A cell is the mean over seeds, with the population standard deviation (``np.std``, as parse_test_res.py prints).
  A cell missing some of the expected seeds shows the mean of those found and ``(n=2/3)``; a cell with none shows
  ``—``. Every missing run is listed (dataset, method, seed, part) in the Missing runs table, the CSV ``missing``
  column and the JSON summary.
- Base-to-new: Base comes from runs on the base classes (``subsample: base``, the training run's final test),
  New from runs on the new classes (``subsample: new``, the eval-only ``test_new`` run).
  ``HM = 2 * Base * New / (Base + New)`` of the seed-averaged Base and New. The average row averages the
  per-dataset Base and New and takes the HM of those two averages. This is what MaPLe and PromptSRC report: their
  average HMs equal the HM of their average Base and New (e.g. MaPLe 82.28/75.14 -> 78.55, PromptSRC
  84.26/76.10 -> 79.97), not the mean of the per-dataset HMs. An average needs every dataset (at least one seed
  each); otherwise it is ``—``. Its ``±`` is the spread over seeds of the per-seed averages, shown only when
  every dataset has every seed.
- Cross-dataset and domain generalisation: the source accuracy is the source training run's final test (ImageNet,
  all classes); a target is an eval-only run on another dataset. Targets are linked to their source run through
  ``model_dir``; the average is over targets.
- Few-shot: training runs on all classes, per number of shots and dataset; the average is over datasets. The
  zero-shot reference (CoOp's figure puts it at 0 shots) is a row with 0 shots: eval-only runs without a trained
  model (no ``model_dir``) on all classes, taken from any protocol's folders (``scripts/zsclip/xd_test.sh DATASET
  SEED`` writes one); such a run learns from no example, so the seeds expected for it are those found.
- Training time (plot): the mean ``train_time_s`` of a method's training runs, averaged first over seeds and then
  over datasets, i.e. the average wall time of one training run (the MPL paper's Figure 2 plots "average running
  time"). Eval-only runs (zero-shot CLIP) count 0 s. For cross-dataset/DG it is the source training run.
- Extensions: a run whose result.json lists ``extensions`` (``["CasPL"]``: the method's prompts trained beside
  frozen CasPL boosting prompts; ``["DePT"]``: DePT's head on the method), or, from before that key, has a
  ``cascade`` entry (CasPL), is shown as ``<method> + <extension>`` (``method`` is the method's name, e.g.
  ``PromptSRC``), in the rows right after the method itself; ``--methods "PromptSRC + CasPL"`` selects it and
  published ``PromptSRC + CasPL`` numbers pair with it. The boosting runs each such row used are listed under ``boosting_runs`` in the JSON summary. A run
  known only from its log (no result.json) cannot be told apart and shows as the plain method.
- Duplicates (the same method, config, dataset, seed and part found twice): one is used, preferring a run whose
  folder names this protocol, then result.json over a log, then (for base/source) the training run over an
  eval-only re-test, then the newest ``finished_at``; the others are listed in the JSON summary.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .names import (DG_TARGETS, with_extensions, dataset_sort_key, display_dataset, method_sort_key, resolve_dataset,
                    same_method)
from .published import AVERAGE, Published
from .render import Cell, Table, text
from .runs import Collection, Run, refers_to

PROTOCOLS = ("base2new", "crossdataset", "dg", "fewshot")
B2N_METRICS = ("base", "new", "hm")


# ---------------------------------------------------------------------------------------------- statistics
def _mean(values):
    values = list(values)
    return math.fsum(values) / len(values) if values else None


def _pstd(values):
    values = list(values)
    if len(values) < 2:
        return None
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """HM of base and new accuracy as the papers compute it: ``2 * B * N / (B + N)``."""
    if base is None or new is None or base + new == 0:
        return None
    return 2 * base * new / (base + new)


@dataclass
class Stat:
    """A value over seeds: mean, population std (None below 2 seeds), how many seeds of how many expected."""

    mean: float | None
    std: float | None
    n: int
    n_expected: int
    per_seed: dict[int, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.n == self.n_expected

    def cell(self, std: bool = True) -> Cell:
        return Cell(self.mean, self.std if std else None, self.n, self.n_expected)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "n_expected": self.n_expected,
                "per_seed": {str(k): v for k, v in sorted(self.per_seed.items())}}


def seed_stat(values: dict[int, float], seeds: tuple[int, ...]) -> Stat:
    vals = {s: values[s] for s in seeds if s in values}
    return Stat(_mean(vals.values()), _pstd(vals.values()), len(vals), len(seeds), vals)


def average_stat(stats: list[Stat], seeds: tuple[int, ...]) -> Stat:
    """Mean over datasets of per-dataset means; None unless every dataset has a mean."""
    n, n_exp = sum(s.n for s in stats), sum(s.n_expected for s in stats)
    if not stats or any(s.mean is None for s in stats):
        return Stat(None, None, n, n_exp)
    per_seed = {}
    if all(s.complete for s in stats):
        per_seed = {seed: _mean(s.per_seed[seed] for s in stats) for seed in seeds}
    return Stat(_mean(s.mean for s in stats), _pstd(per_seed.values()), n, n_exp, per_seed)


# ---------------------------------------------------------------------------------------------- selection
@dataclass
class Options:
    seeds: tuple[int, ...] = (1, 2, 3)
    methods: list[str] | None = None  # "METHOD" or "METHOD/CONFIG"
    datasets: list[str] | None = None  # expected datasets (targets for crossdataset/dg), in column order
    shots: list[int] | None = None  # few-shot: expected shots
    source: str = "ImageNet"  # cross-dataset/DG source dataset
    published: Published | None = None
    plot_metric: str = "hm"  # base2new plot: hm, base or new


@dataclass
class Report:
    protocol: str
    tables: list[Table]
    csv_rows: list[dict]
    summary: dict
    points: list[dict]  # plot: label, group, time_s, value, partial, annotation
    value_label: str
    notes: list[str]  # conventions that hold for every table of the report


def _hint_ok(hint: str | None, protocol: str) -> bool:
    return hint is None or hint == protocol or {hint, protocol} <= {"crossdataset", "dg"}


def _wanted(run: Run, methods: list[str] | None) -> bool:
    if not methods:
        return True
    for m in methods:
        name, _, cfg = m.partition("/")
        if same_method(name, run.method) and (not cfg or cfg == run.config):
            return True
    return False


def is_cascade(run: Run) -> bool:
    """A CasPL phase-2 run: its result.json carries a non-empty ``cascade`` object (the boosting run it used)."""
    return run.source == "json" and isinstance(run.record.get("cascade"), dict) and bool(run.record["cascade"])


def extensions_of(run: Run) -> list:
    """The extensions a run was trained with: result.json's ``extensions`` (``["CasPL"]``, ``["DePT"]``); a run from
    before that key with a ``cascade`` entry is a CasPL phase-2 run."""
    if run.source != "json":
        return []
    recorded = run.record.get("extensions")
    if isinstance(recorded, list):
        return [str(e) for e in recorded]
    return ["CasPL"] if is_cascade(run) else []


def _labelled(run: Run) -> Run:
    """The run with ``method`` as the tables show it: ``"<method> + <extension>"`` for a run with extensions."""
    extensions = extensions_of(run)
    return dataclasses.replace(run, method=with_extensions(run.method, extensions)) if extensions else run


def _boosting_runs(runs: list[Run], variants, labels) -> dict[str, list[str]]:
    """label -> the boosting runs (``cascade.boosting_run``) its CasPL runs used; only rows that have some."""
    out = {}
    for v in variants:
        found = sorted({str(r.record["cascade"].get("boosting_run")) for r in runs if r.variant == v and is_cascade(r)})
        if found:
            out[labels[v]] = found
    return out


CASCADE_NOTE = ("<Method> + CasPL: runs whose result.json has a `cascade` entry (the method's prompts trained "
                "beside frozen CasPL boosting prompts); the boosting runs are listed under boosting_runs in the "
                "JSON summary.")


def _cascade_notes(boosting: dict) -> list[str]:
    return [CASCADE_NOTE] if boosting else []


def _eligible(coll: Collection, protocol: str, opts: Options, pred, notes: list[str]) -> list[Run]:
    runs = [r for r in map(_labelled, coll.runs)
            if _hint_ok(r.hint, protocol) and pred(r) and _wanted(r, opts.methods)]
    other = sorted({r.seed for r in runs if r.seed not in opts.seeds}, key=lambda s: (s is None, s))
    if other:
        k = sum(r.seed not in opts.seeds for r in runs)
        notes.append(f"{k} run(s) with seed(s) {other} not in --seeds {list(opts.seeds)} were not used.")
    return [r for r in runs if r.seed in opts.seeds]


def _pick(runs: list[Run], key, protocol: str, prefer_training=lambda r: False):
    """One run per key; the rest are returned as duplicates (see module docstring for the preference)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    chosen, dups = {}, []
    for k, rs in groups.items():
        rs = sorted(rs, key=lambda r: (r.hint == protocol, r.source == "json",
                                       (not r.eval_only) if prefer_training(r) else False,
                                       r.finished_at or "", str(r.path)), reverse=True)
        chosen[k] = rs[0]
        dups += [{"used": str(rs[0].path), "ignored": str(r.path)} for r in rs[1:]]
    return chosen, dups


def _variants(runs: list[Run], opts: Options) -> list[tuple[str, str | None]]:
    found = sorted({r.variant for r in runs}, key=lambda v: (method_sort_key(v[0]), v[1] or ""))
    if not opts.methods:
        return found
    out = []
    for m in opts.methods:  # the requested order; a requested method with no runs still gets (missing) rows
        name, _, cfg = m.partition("/")
        match = [v for v in found if same_method(name, v[0]) and (not cfg or cfg == v[1]) and v not in out]
        out += match or [(name, cfg or None)]
    return out


def _labels(variants) -> dict:
    out = {}
    for v in variants:
        several = sum(same_method(v[0], w[0]) for w in variants) > 1
        out[v] = f"{v[0]} ({v[1]})" if several and v[1] else v[0]
    return out


def _datasets(found, opts: Options) -> list[str]:
    if opts.datasets:
        found = set(found)
        return [resolve_dataset(d, found) for d in opts.datasets]
    return sorted(set(found), key=dataset_sort_key)


def _src(runs: list[Run]) -> str:
    return "+".join(s for s in ("json", "log") if any(r.source == s for r in runs))


def _mean_train_time(runs_by_dataset: dict[str, list[Run]]) -> float | None:
    per_dataset = [_mean(r.train_time_s for r in rs if r.train_time_s is not None) for rs in runs_by_dataset.values()]
    return _mean(t for t in per_dataset if t is not None)


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _missing_runs(dataset: str, label: str, part: str, seeds, found) -> list[dict]:
    return [{"dataset": dataset, "method": label, "seed": s, "part": part} for s in seeds if s not in found]


def _missing_text(missing: list[dict], with_dataset: bool = False) -> str:
    """``seed3:new`` (or ``DTD/seed3:new`` with the dataset), ``;``-separated."""
    groups: dict = {}
    for m in missing:
        key = (m["dataset"] if with_dataset else "", m["seed"])
        groups.setdefault(key, []).append(m["part"])
    return "; ".join(f"{d + '/' if d else ''}seed{s}:{','.join(p)}" for (d, s), p in groups.items())


SEED_NOTE = ("Mean ± population std over seeds {seeds}. (n=k/K): only k of the K expected seeds were found (see "
             "Missing runs); —: no finished run.")
SRC_NOTE = "src: json = result.json; log = parsed from a finished log.txt (the run has no result.json)."
STD_NOTE = "Wide tables show means; every cell's ± std is in the CSV and JSON files."


def _common_notes(opts: Options) -> list[str]:
    return [SEED_NOTE.format(seeds=", ".join(map(str, opts.seeds))), SRC_NOTE]


def _missing_table(missing: list[dict]) -> Table:
    t = Table("Missing runs", ["Dataset", "Method", "Seed", "Part"], align="llrl")
    for m in missing:
        t.rows.append([text(display_dataset(m["dataset"])), text(m["method"]), text(str(m["seed"])), text(m["part"])])
    if not missing:
        t.notes.append("None: every expected run was found.")
    return t


def _published_rows(pub: Published | None, method: str, columns: list[tuple[str, str]], ours: dict,
                    over: list[str], used: set, extra: int = 1, shots: int | None = None,
                    lead: int = 0) -> tuple[list[list[Cell]], list[str]]:
    """Rows "↳ published [ref]" and "↳ Δ" for each published source that has numbers for ``method``.

    ``columns``: (dataset, metric) per numeric column; ``ours``: the same keys -> our mean. The Δ of an average
    is left out when the published average is over other datasets than ours. Refs printed are added to ``used``.
    ``shots``: only entries for that number of shots (few-shot); ``lead``: empty cells between the label and the
    numbers (the few-shot table's Shots column).
    """
    if pub is None:
        return [], []
    rows, notes = [], []
    for ref in pub.refs:
        vals, deltas, any_value = [], [], False
        for dataset, metric in columns:
            entry = next((e for e in pub.lookup(method, dataset, shots) if e["ref"] == ref), None)
            value = entry.get(metric) if entry else None
            any_value |= value is not None
            vals.append(Cell(value))
            comparable = entry is not None and (dataset != AVERAGE or set(entry.get("over", [])) == set(over))
            if value is not None and not comparable:
                notes.append(f"[{ref}] published averages are over {len(entry.get('over', []))} datasets, ours "
                             f"over {len(over)}: no Δ for them.")
            ok = value is not None and ours.get((dataset, metric)) is not None and comparable
            deltas.append(Cell(ours[(dataset, metric)] - value, signed=True) if ok else Cell())
        if any_value:
            used.add(ref)
            rows.append([text(f"↳ published [{ref}]")] + [text("")] * lead + vals + [text("")] * extra)
            rows.append([text("↳ Δ (ours − published)")] + [text("")] * lead + deltas + [text("")] * extra)
    return rows, sorted(set(notes))


def _published_note(pub: Published | None, used: set) -> list[str]:
    if pub is None:
        return []
    return [f"[{ref}] {pub.sources[ref]['paper']}, {pub.sources[ref]['table']} ({pub.sources[ref]['status']})."
            for ref in pub.refs if ref in used]


def _summary(protocol, opts, coll, variants, labels, datasets, notes, dups, missing, extra) -> dict:
    return {
        "protocol": protocol,
        "seeds": list(opts.seeds),
        "datasets": datasets,
        "methods": [{"label": labels[v], "method": v[0], "config": v[1]} for v in variants],
        **extra,
        "missing": missing,
        "duplicates": dups,
        "unfinished": coll.unfinished,
        "notes": notes + coll.notes,
        "published_sources": {r: opts.published.sources[r] for r in opts.published.refs} if opts.published else None,
    }


# ---------------------------------------------------------------------------------------------- base-to-new
def base2new(coll: Collection, opts: Options) -> Report:
    notes: list[str] = []
    runs = _eligible(coll, "base2new", opts, lambda r: r.subsample in ("base", "new"), notes)
    chosen, dups = _pick(runs, lambda r: (r.variant, r.dataset, r.seed, r.subsample), "base2new",
                         prefer_training=lambda r: r.subsample == "base")
    variants = _variants(runs, opts)
    labels = _labels(variants)
    datasets = _datasets([d for (_, d, _, _) in chosen], opts)
    seeds = opts.seeds

    stats, missing, src, times, used_refs = {}, [], {}, {}, set()
    for v in variants:
        used = []
        for d in datasets:
            part_runs = {p: {s: chosen[(v, d, s, p)] for s in seeds if (v, d, s, p) in chosen} for p in ("base", "new")}
            b = seed_stat({s: r.accuracy for s, r in part_runs["base"].items()}, seeds)
            n = seed_stat({s: r.accuracy for s, r in part_runs["new"].items()}, seeds)
            stats[v, d] = (b, n, harmonic_mean(b.mean, n.mean))
            runs_vd = list(part_runs["base"].values()) + list(part_runs["new"].values())
            src[v, d] = _src(runs_vd)
            used += runs_vd
            for s in seeds:
                for p in ("base", "new"):
                    missing += _missing_runs(d, labels[v], p, [s], part_runs[p])
        b = average_stat([stats[v, d][0] for d in datasets], seeds)
        n = average_stat([stats[v, d][1] for d in datasets], seeds)
        stats[v, AVERAGE] = (b, n, harmonic_mean(b.mean, n.mean))
        src[v, AVERAGE] = _src(used)
        train_runs = {d: [chosen[(v, d, s, "base")] for s in seeds if (v, d, s, "base") in chosen] for d in datasets}
        times[v] = _mean_train_time(train_runs)

    def hm_cell(b: Stat, n: Stat, hm):
        return Cell(hm, None, min(b.n, n.n), b.n_expected)

    head = ["Method", "Base", "New", "HM", "src"]
    hm_note = ("HM = 2·Base·New/(Base+New) of the seed-averaged Base and New; an HM cell's n is the smaller of "
               "Base's and New's.")
    tables = []
    for d in [AVERAGE] + datasets:
        t = Table(f"Base-to-new, average over {_count(datasets, 'dataset')}" if d == AVERAGE
                  else f"Base-to-new: {display_dataset(d)}", head)
        if d == AVERAGE:
            t.notes.append("Average: mean of the per-dataset Base and New; HM of those two means (as MaPLe and "
                           "PromptSRC report it); ± over seeds of the per-seed averages; — unless every dataset "
                           "has results.")
        for v in variants:
            b, n, hm = stats[v, d]
            t.rows.append([text(labels[v]), b.cell(), n.cell(), hm_cell(b, n, hm), text(src[v, d])])
            ours = {(d, "base"): b.mean, (d, "new"): n.mean, (d, "hm"): hm}
            rows, pnotes = _published_rows(opts.published, v[0], [(d, m) for m in B2N_METRICS], ours, datasets,
                                           used_refs)
            t.rows += rows
            t.notes += [note for note in pnotes if note not in t.notes]
        tables.append(t)

    wide_cols = ["Method"] + [display_dataset(d) for d in datasets] + ["Average", "src"]
    for metric, i, title in (("new", 1, "New-class accuracy per dataset (MPL Table II layout)"),
                             ("base", 0, "Base-class accuracy per dataset"), ("hm", 2, "HM per dataset")):
        t = Table(title, wide_cols)
        for v in variants:
            cells = [hm_cell(*stats[v, d]) if metric == "hm" else stats[v, d][i].cell(std=False)
                     for d in datasets + [AVERAGE]]
            t.rows.append([text(labels[v])] + cells + [text(src[v, AVERAGE])])
            ours = {(d, metric): (stats[v, d][2] if metric == "hm" else stats[v, d][i].mean)
                    for d in datasets + [AVERAGE]}
            rows, pnotes = _published_rows(opts.published, v[0], [(d, metric) for d in datasets + [AVERAGE]],
                                           ours, datasets, used_refs)
            t.rows += rows
            t.notes += [note for note in pnotes if note not in t.notes]
        tables.append(t)
    tables.append(_missing_table(missing))

    csv_rows, json_rows = [], []
    for v in variants:
        for d in datasets + [AVERAGE]:
            b, n, hm = stats[v, d]
            miss = [m for m in missing if m["method"] == labels[v] and (d == AVERAGE or m["dataset"] == d)]
            csv_rows.append({"kind": "ours", "dataset": d, "method": v[0], "config": v[1], "label": labels[v],
                             "base": b.mean, "base_std": b.std, "base_n": b.n, "new": n.mean, "new_std": n.std,
                             "new_n": n.n, "hm": hm, "n_expected": b.n_expected, "source": src[v, d],
                             "missing": _missing_text(miss, with_dataset=d == AVERAGE)})
            json_rows.append({"dataset": d, "method": v[0], "config": v[1], "label": labels[v], "base": b.as_dict(),
                              "new": n.as_dict(), "hm": hm, "source": src[v, d]})
            for e in (opts.published.lookup(v[0], d) if opts.published else []):
                csv_rows.append({"kind": "published", "dataset": d, "method": v[0], "config": v[1],
                                 "label": labels[v], "base": e.get("base"), "new": e.get("new"), "hm": e.get("hm"),
                                 "ref": e["ref"], "published_source": e["source"]})

    points = []
    pick_metric = {"base": lambda s: s[0].mean, "new": lambda s: s[1].mean, "hm": lambda s: s[2]}[opts.plot_metric]
    for v in variants:
        value = pick_metric(stats[v, AVERAGE])
        b, n, _ = stats[v, AVERAGE]
        if value is not None and times[v] is not None:
            points.append({"label": labels[v], "group": labels[v], "time_s": times[v], "value": value,
                           "partial": not (b.complete and n.complete)})
    boosting = _boosting_runs(list(chosen.values()), variants, labels)
    summary = _summary("base2new", opts, coll, variants, labels, datasets, notes, dups, missing,
                       {"rows": json_rows, "train_time_s": {labels[v]: times[v] for v in variants},
                        "boosting_runs": boosting})
    value_label = {"hm": "HM", "base": "base accuracy", "new": "new accuracy"}[opts.plot_metric]
    return Report("base2new", tables, csv_rows, summary, points, f"Average {value_label} (%)",
                  _common_notes(opts) + [hm_note, STD_NOTE] + _cascade_notes(boosting)
                  + _published_note(opts.published, used_refs))


# ---------------------------------------------------------------------------------------------- cross-dataset, DG
def crossdataset(coll: Collection, opts: Options, protocol: str = "crossdataset") -> Report:
    notes: list[str] = []
    source = resolve_dataset(opts.source, {r.dataset for r in coll.runs})
    runs = _eligible(coll, protocol, opts, lambda r: r.subsample == "all", notes)
    in_protocol = (lambda d: d in DG_TARGETS) if protocol == "dg" else (lambda d: d not in DG_TARGETS)
    target_runs = [r for r in runs if r.eval_only and r.dataset != source and in_protocol(r.dataset)]
    chosen, dups = _pick(target_runs, lambda r: (r.variant, r.dataset, r.seed), protocol)

    # The source run of (method, config, seed): the one the targets' model_dir names, else the best candidate.
    source_runs = [r for r in runs if r.dataset == source]
    linked = {id(r) for r in source_runs if any(refers_to(t.model_dir, r) for t in target_runs
                                                if t.variant == r.variant and t.seed == r.seed)}
    has_link = {(r.variant, r.seed) for r in source_runs if id(r) in linked}
    src_pool = [r for r in source_runs if id(r) in linked or (r.variant, r.seed) not in has_link]
    src_chosen, src_dups = _pick(src_pool, lambda r: (r.variant, r.seed), protocol, prefer_training=lambda r: True)
    dups += src_dups

    variants = _variants(target_runs + source_runs, opts)
    labels = _labels(variants)
    targets = _datasets([d for (_, d, _) in chosen], opts)
    seeds = opts.seeds

    stats, src_stats, missing, srcs, times, used_refs = {}, {}, [], {}, {}, set()
    for v in variants:
        s_runs = {s: src_chosen[(v, s)] for s in seeds if (v, s) in src_chosen}
        src_stats[v] = seed_stat({s: r.accuracy for s, r in s_runs.items()}, seeds)
        missing += _missing_runs(source, labels[v], "source", seeds, s_runs)
        used = list(s_runs.values())
        for d in targets:
            t_runs = {s: chosen[(v, d, s)] for s in seeds if (v, d, s) in chosen}
            stats[v, d] = seed_stat({s: r.accuracy for s, r in t_runs.items()}, seeds)
            missing += _missing_runs(d, labels[v], "target", seeds, t_runs)
            used += list(t_runs.values())
        stats[v, AVERAGE] = average_stat([stats[v, d] for d in targets], seeds)
        srcs[v] = _src(used)
        times[v] = _mean_train_time({source: [r for r in s_runs.values() if not r.eval_only]})

    name = "Domain generalisation" if protocol == "dg" else "Cross-dataset evaluation"
    cols = ["Method", f"Source: {display_dataset(source)}"] + [display_dataset(d) for d in targets] + ["Average", "src"]
    t = Table(f"{name} (trained on {display_dataset(source)}; Average over {_count(targets, 'target')})", cols,
              notes=["Average: mean of the per-target means; — unless every target has results."])
    for v in variants:
        t.rows.append([text(labels[v]), src_stats[v].cell(std=False)]
                      + [stats[v, d].cell(std=False) for d in targets + [AVERAGE]] + [text(srcs[v])])
        keys = [(source, "accuracy")] + [(d, "accuracy") for d in targets + [AVERAGE]]
        ours = {(d, "accuracy"): stats[v, d].mean for d in targets + [AVERAGE]}
        ours[source, "accuracy"] = src_stats[v].mean
        rows, pnotes = _published_rows(opts.published, v[0], keys, ours, targets, used_refs)
        t.rows += rows
        t.notes += [note for note in pnotes if note not in t.notes]
    tables = [t, _missing_table(missing)]

    csv_rows, json_rows = [], []
    for v in variants:
        for role, d, st in [("source", source, src_stats[v])] + [("target", d, stats[v, d]) for d in targets] \
                + [("average", AVERAGE, stats[v, AVERAGE])]:
            miss = [m for m in missing if m["method"] == labels[v] and (
                m["part"] == "target" if role == "average" else m["dataset"] == d and m["part"] == role)]
            csv_rows.append({"kind": "ours", "role": role, "dataset": d, "method": v[0], "config": v[1],
                             "label": labels[v], "accuracy": st.mean, "std": st.std, "n": st.n,
                             "n_expected": st.n_expected, "source": srcs[v],
                             "missing": _missing_text(miss, with_dataset=role == "average")})
            json_rows.append({"role": role, "dataset": d, "method": v[0], "config": v[1], "label": labels[v],
                              "accuracy": st.as_dict()})
            for e in (opts.published.lookup(v[0], d) if opts.published else []):
                csv_rows.append({"kind": "published", "role": role, "dataset": d, "method": v[0], "config": v[1],
                                 "label": labels[v], "accuracy": e.get("accuracy"), "ref": e["ref"],
                                 "published_source": e["source"]})
    points = [{"label": labels[v], "group": labels[v], "time_s": times[v], "value": stats[v, AVERAGE].mean,
               "partial": not (stats[v, AVERAGE].complete and src_stats[v].complete)}
              for v in variants if stats[v, AVERAGE].mean is not None and times[v] is not None]
    boosting = _boosting_runs(list(chosen.values()) + list(src_chosen.values()), variants, labels)
    summary = _summary(protocol, opts, coll, variants, labels, targets, notes, dups, missing,
                       {"source": source, "rows": json_rows, "train_time_s": {labels[v]: times[v] for v in variants},
                        "boosting_runs": boosting})
    return Report(protocol, tables, csv_rows, summary, points, "Average target accuracy (%)",
                  _common_notes(opts) + [STD_NOTE] + _cascade_notes(boosting)
                  + _published_note(opts.published, used_refs))


# ---------------------------------------------------------------------------------------------- few-shot
def fewshot(coll: Collection, opts: Options) -> Report:
    notes: list[str] = []
    runs = _eligible(coll, "fewshot", opts, lambda r: r.subsample == "all" and not r.eval_only and (r.shots or 0) > 0,
                     notes)
    chosen, dups = _pick(runs, lambda r: (r.variant, r.shots, r.dataset, r.seed), "fewshot")
    shots = sorted(opts.shots or {k for (_, k, _, _) in chosen})
    # the zero-shot reference: no trained model, all classes, any protocol's folder (module docstring)
    zero = [r for r in map(_labelled, coll.runs) if r.eval_only and not r.model_dir and r.subsample == "all"
            and r.seed in opts.seeds and _wanted(r, opts.methods)]
    zero_chosen, zero_dups = _pick(zero, lambda r: (r.variant, 0, r.dataset, r.seed), "fewshot")
    # the columns are the trained runs' datasets: zero-shot runs of other datasets add none
    datasets = _datasets([d for (_, _, d, _) in (chosen or zero_chosen)], opts)
    chosen.update(zero_chosen)
    dups += zero_dups
    variants = _variants(runs + zero, opts)
    labels = _labels(variants)
    trained = {r.variant for r in runs}
    zero_seeds = {v: tuple(sorted({s for (w, _, _, s) in zero_chosen if w == v})) for v in variants}

    t = Table("Few-shot accuracy", ["Method", "Shots"] + [display_dataset(d) for d in datasets] + ["Average", "src"],
              notes=["Average: mean over datasets; — unless every dataset has results."])
    missing, csv_rows, json_rows, points, used_refs = [], [], [], [], set()
    for v in variants:
        rows_shots = ([0] if zero_seeds[v] else []) + (shots if v in trained or not zero_seeds[v] else [])
        for k in rows_shots:
            seeds = zero_seeds[v] if k == 0 else opts.seeds
            st, used = {}, []
            for d in datasets:
                rs = {s: chosen[(v, k, d, s)] for s in seeds if (v, k, d, s) in chosen}
                st[d] = seed_stat({s: r.accuracy for s, r in rs.items()}, seeds)
                missing += _missing_runs(d, labels[v], f"{k}-shot", seeds, rs)
                used += list(rs.values())
            st[AVERAGE] = average_stat([st[d] for d in datasets], seeds)
            t.rows.append([text(labels[v]), text(str(k))] + [st[d].cell(std=False) for d in datasets + [AVERAGE]]
                          + [text(_src(used))])
            ours = {(d, "accuracy"): st[d].mean for d in datasets + [AVERAGE]}
            rows, pnotes = _published_rows(opts.published, v[0], [(d, "accuracy") for d in datasets + [AVERAGE]],
                                           ours, datasets, used_refs, shots=k, lead=1)
            t.rows += rows
            t.notes += [note for note in pnotes if note not in t.notes]
            for d in datasets + [AVERAGE]:
                miss = [m for m in missing if m["method"] == labels[v] and m["part"] == f"{k}-shot"
                        and (d == AVERAGE or m["dataset"] == d)]
                csv_rows.append({"kind": "ours", "dataset": d, "method": v[0], "config": v[1], "label": labels[v],
                                 "shots": k, "accuracy": st[d].mean, "std": st[d].std, "n": st[d].n,
                                 "n_expected": st[d].n_expected, "source": _src(used),
                                 "missing": _missing_text(miss, with_dataset=d == AVERAGE)})
                json_rows.append({"dataset": d, "method": v[0], "config": v[1], "label": labels[v], "shots": k,
                                  "accuracy": st[d].as_dict()})
                for e in (opts.published.lookup(v[0], d, k) if opts.published else []):
                    csv_rows.append({"kind": "published", "dataset": d, "method": v[0], "config": v[1],
                                     "label": labels[v], "shots": k, "accuracy": e.get("accuracy"), "ref": e["ref"],
                                     "published_source": e["source"]})
            time_s = _mean_train_time({d: [chosen[(v, k, d, s)] for s in seeds if (v, k, d, s) in chosen]
                                       for d in datasets})
            if st[AVERAGE].mean is not None and time_s is not None and k > 0:  # zero-shot trains for no time
                points.append({"label": f"{labels[v]} {k}-shot", "group": labels[v], "time_s": time_s,
                               "value": st[AVERAGE].mean, "partial": not st[AVERAGE].complete, "annotation": f"{k}"})
    boosting = _boosting_runs(list(chosen.values()), variants, labels)
    summary = _summary("fewshot", opts, coll, variants, labels, datasets, notes, dups, missing,
                       {"shots": shots, "rows": json_rows, "boosting_runs": boosting})
    return Report("fewshot", [t, _missing_table(missing)], csv_rows, summary, points, "Average accuracy (%)",
                  _common_notes(opts) + [STD_NOTE] + _cascade_notes(boosting)
                  + _published_note(opts.published, used_refs))


def build(protocol: str, coll: Collection, opts: Options) -> Report:
    if protocol == "base2new":
        return base2new(coll, opts)
    if protocol in ("crossdataset", "dg"):
        return crossdataset(coll, opts, protocol)
    if protocol == "fewshot":
        return fewshot(coll, opts)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
