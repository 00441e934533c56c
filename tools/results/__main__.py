"""``python -m tools.results OUTPUT_ROOT --protocol base2new|crossdataset|dg|fewshot [options]``.

Gathers every finished run under OUTPUT_ROOT (``result.json``, or a finished ``log.txt`` where a run has no
``result.json``), prints the protocol's tables as Markdown and writes, under ``--out`` (default
``OUTPUT_ROOT/tables``): ``<protocol>.md``, ``<protocol>.csv`` (long format: one row per method and dataset,
with std, seed counts and the missing seeds), ``<protocol>.tex`` (booktabs), ``<protocol>.json`` (machine-readable
summary: every cell with its per-seed values, the missing runs, duplicates, unfinished folders) and, with
``--plot``, ``<protocol>_time.png`` (average accuracy against average training time, with more than one
method) and, for few-shot, ``fewshot_shots.png`` (accuracy against shots, seed error bars); it names each plot it
wrote and says why it skipped one.

Exit status: 0 when tables were written, 1 when no run of the protocol was found, 2 with ``--strict`` when some
expected run is missing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from .published import load as load_published
from .render import latex, markdown, write_csv
from .runs import collect
from .tables import PROTOCOLS, Options, build


def _size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 800x600, got {s!r}")
    if w < 50 or h < 50:
        raise argparse.ArgumentTypeError("the plot needs at least 50x50 pixels")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.results", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="OUTPUT_ROOT", help="folder to search for runs (e.g. output/)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--out", help="where to write the tables (default: OUTPUT_ROOT/tables)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="expected seeds (default: 1 2 3)")
    p.add_argument("--methods", nargs="+", help="rows, in this order: METHOD or METHOD/CONFIG (default: all found)")
    p.add_argument("--datasets", nargs="+",
                   help="expected datasets (targets for crossdataset/dg) in column order; names as in "
                        "cfg.DATASET.NAME or the dataset config (e.g. eurosat, oxford_pets; a dataset made by "
                        "datasets.imagefolder by its --name); default: all found")
    p.add_argument("--shots", type=int, nargs="+", help="fewshot: expected numbers of shots (default: all found)")
    p.add_argument("--source", default="ImageNet", help="crossdataset/dg: the source dataset, named as --datasets "
                   "(default: ImageNet)")
    p.add_argument("--published", nargs="*", metavar="REF",
                   help="add published numbers with deltas; optionally only these sources, in this order "
                        "(refs are in tools/published/<protocol>.json)")
    p.add_argument("--plot", action="store_true", help="write <protocol>_time.png (more than one method), and fewshot_shots.png "
                   "for --protocol fewshot")
    p.add_argument("--plot-size", type=_size, default=(800, 600), metavar="WxH", help="pixels (default 800x600)")
    p.add_argument("--plot-metric", choices=("hm", "base", "new"), default="hm",
                   help="base2new: the accuracy plotted (default: hm)")
    p.add_argument("--strict", action="store_true", help="exit with status 2 when an expected run is missing")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else root / "tables"
    try:
        published = None if args.published is None else load_published(args.protocol, args.published)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.published is not None and published is None:
        print(f"note: no published numbers are stored for --protocol {args.protocol}", file=sys.stderr)
    opts = Options(seeds=tuple(args.seeds), methods=args.methods, datasets=args.datasets, shots=args.shots,
                   source=args.source, published=published, plot_metric=args.plot_metric)

    coll = collect(root, exclude=out)
    report = build(args.protocol, coll, opts)
    if not report.summary["methods"] or not report.summary["datasets"]:
        print(f"Nothing found in {root} for --protocol {args.protocol} "
              f"({len(coll.runs)} finished run(s) in total, {len(coll.unfinished)} unfinished folder(s))",
              file=sys.stderr)
        return 1

    out.mkdir(parents=True, exist_ok=True)
    stem = out / args.protocol
    header = [f"# Results: {args.protocol}", "",
              f"Runs from `{root}`; generated {_dt.datetime.now().isoformat(timespec='seconds')} by "
              f"`python -m tools.results {' '.join(sys.argv[1:] if argv is None else argv)}`.", ""]
    header += [f"- {n}" for n in report.notes] + ["", ""]
    extra = []
    s = report.summary
    if s["notes"] or s["duplicates"] or s["unfinished"]:
        extra += ["## Runs not used", ""]
        extra += [f"- {n}" for n in s["notes"]]
        if s["duplicates"]:
            extra.append(f"- {len(s['duplicates'])} duplicate run(s) ignored; see `duplicates` in {stem.name}.json.")
        extra += [f"- Not finished (ignored): `{u['path']}`: {u['why']}" for u in s["unfinished"]]
        extra.append("")
    md = "\n".join(header) + markdown(report.tables) + ("\n" + "\n".join(extra) if extra else "")
    files = {"markdown": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv"), "latex": stem.with_suffix(".tex"),
             "json": stem.with_suffix(".json")}
    files["markdown"].write_text(md, encoding="utf-8")
    write_csv(files["csv"], report.csv_rows)
    files["latex"].write_text(latex(report.tables, report.notes), encoding="utf-8")
    if args.plot:
        from .plot import write_plots

        plots, skipped = write_plots(report, out, *args.plot_size)
        files.update(plots)
    summary = {"generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "output_root": str(root), "files": {k: str(v) for k, v in files.items()},
               "conventions": report.notes, "points": report.points, **s}
    tmp = files["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(files["json"])

    if not args.quiet:
        print(md)
    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    if args.plot:
        for why in skipped:
            print(f"no plot: {why}")
    if args.strict and s["missing"]:
        print(f"{len(s['missing'])} expected run(s) missing (--strict)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
