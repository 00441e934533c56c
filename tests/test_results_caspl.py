"""tools.results with CasPL runs: "<Method> + CasPL" rows beside "<Method>", and CasPL's published numbers.

The rule under test: a run whose result.json carries a non-empty ``cascade`` object (the CasPL phase-1 run whose
boosting prompts it used) is shown as ``"<method> + CasPL"``, where ``method`` is the adapting method's name.
Generated tree (base-to-new, PromptSRC with and without CasPL, 2 datasets x 3 seeds), numbers by hand.
"""
import csv
import json
from pathlib import Path

import pytest

from tools.results import Options, build, collect, harmonic_mean
from tools.results.__main__ import main
from tools.results.names import cascade_method, method_sort_key, same_method, split_cascade
from tools.results.published import load as load_published
from tools.results.render import markdown

CFG = "vit_b16_c2_ep20_batch4_4+4ctx"
BOOST = {"EuroSAT": "output/caspl/eurosat/boost/seed1", "DTD": "output/caspl/dtd/boost/seed1"}
# (cascaded?, dataset) -> base and new accuracies of seeds 1, 2, 3
B2N = {
    (False, "EuroSAT"): ([90.0, 91.0, 92.0], [70.0, 72.0, 74.0]),
    (False, "DTD"): ([80.0, 80.0, 80.0], [50.0, 52.0, 54.0]),
    (True, "EuroSAT"): ([93.0, 94.0, 95.0], [80.0, 81.0, 82.0]),
    (True, "DTD"): ([81.0, 82.0, 83.0], [60.0, 60.0, 60.0]),
}


def result_json(folder: Path, *, dataset, seed, subsample, accuracy, eval_only, method="PromptSRC", shots=16,
                cascade=None, model_dir=None, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"schema": 1, "status": "finished", "method": method, "config": CFG, "dataset": dataset, "seed": seed,
           "subsample": subsample, "shots": shots, "epochs": 20, "eval_only": eval_only, "split": "test",
           "accuracy": accuracy, "train_time_s": 0.0 if eval_only else 100.0, "model_dir": model_dir,
           "output_dir": str(folder), "finished_at": "2026-01-01T00:00:00Z"}
    if cascade is not None:
        rec["cascade"] = cascade
    rec.update(extra or {})
    (folder / "result.json").write_text(json.dumps(rec))


def cascade_of(dataset):
    return {"boosting_run": BOOST[dataset], "sha256": "ab" * 32}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "output"
    for (cascaded, dataset), (bases, news) in B2N.items():
        name = "PromptSRC_CasPL" if cascaded else "PromptSRC"  # folder names carry no meaning for the tables
        for seed in (1, 2, 3):
            cascade = cascade_of(dataset) if cascaded else None
            train = root / "base2new" / "train_base" / dataset.lower() / name / f"seed{seed}"
            result_json(train, dataset=dataset, seed=seed, subsample="base", accuracy=bases[seed - 1],
                        eval_only=False, cascade=cascade)
            result_json(root / "base2new" / "test_new" / dataset.lower() / name / f"seed{seed}", dataset=dataset,
                        seed=seed, subsample="new", accuracy=news[seed - 1], eval_only=True, cascade=cascade,
                        model_dir=str(train))
    return root


def test_names():
    assert cascade_method("PromptSRC") == "PromptSRC + CasPL" == cascade_method("PromptSRC+CasPL")
    assert split_cascade("MaPLe + CasPL") == ("MaPLe", True) and split_cascade("CasPL") == ("CasPL", False)
    assert same_method("promptsrc+caspl", "PromptSRC + CasPL") and not same_method("PromptSRC", "PromptSRC + CasPL")
    assert same_method("ZeroshotCLIP + CasPL", "CLIP + CasPL")
    order = sorted(["MPL + CasPL", "PromptSRC + CasPL", "MPL", "CoOp + CasPL", "PromptSRC", "CoOp", "CasPL"],
                   key=method_sort_key)
    assert order == ["CoOp", "CoOp + CasPL", "PromptSRC", "PromptSRC + CasPL", "CasPL", "MPL", "MPL + CasPL"]


def test_cascade_runs_get_their_own_rows_beside_the_method(tree):
    report = build("base2new", collect(tree), Options())
    assert [m["label"] for m in report.summary["methods"]] == ["PromptSRC", "PromptSRC + CasPL"]
    rows = {(r["label"], r["dataset"]): r for r in report.summary["rows"]}
    # plain PromptSRC: EuroSAT 91 / 72, DTD 80 / 52; average 85.5 / 62
    assert rows["PromptSRC", "EuroSAT"]["base"]["mean"] == pytest.approx(91.0)
    assert rows["PromptSRC", "Average"]["hm"] == pytest.approx(harmonic_mean(85.5, 62.0))
    # + CasPL: EuroSAT 94 / 81, DTD 82 / 60; average 88 / 70.5, HM 2*88*70.5/158.5 = 78.284
    r = rows["PromptSRC + CasPL", "EuroSAT"]
    assert r["base"]["mean"] == pytest.approx(94.0) and r["new"]["mean"] == pytest.approx(81.0)
    assert r["method"] == "PromptSRC + CasPL"
    avg = rows["PromptSRC + CasPL", "Average"]
    assert avg["base"]["mean"] == pytest.approx(88.0) and avg["new"]["mean"] == pytest.approx(70.5)
    assert avg["hm"] == pytest.approx(2 * 88 * 70.5 / 158.5)
    assert report.summary["missing"] == [] and report.summary["duplicates"] == []
    assert report.summary["boosting_runs"] == {"PromptSRC + CasPL": sorted(BOOST.values())}
    md = markdown(report.tables)
    lines = md.splitlines()
    plain = lines.index("| PromptSRC | 85.50 ± 0.41 | 62.00 ± 1.63 | 71.88 | json |")
    assert lines[plain + 1] == "| PromptSRC + CasPL | 88.00 ± 0.82 | 70.50 ± 0.41 | 78.28 | json |"
    assert any("`cascade`" in n for n in report.notes)


def test_method_filter_tells_them_apart(tree):
    report = build("base2new", collect(tree), Options(methods=["PromptSRC+CasPL"]))
    assert [m["label"] for m in report.summary["methods"]] == ["PromptSRC + CasPL"]
    report = build("base2new", collect(tree), Options(methods=["PromptSRC"]))
    assert [m["label"] for m in report.summary["methods"]] == ["PromptSRC"]
    assert report.summary["boosting_runs"] == {} and not any("`cascade`" in n for n in report.notes)


@pytest.mark.parametrize("cascade", [None, {}])
def test_no_or_empty_cascade_entry_is_the_plain_method(tmp_path, cascade):
    root = tmp_path / "output"
    extra = {} if cascade is None else {"cascade": cascade}
    for seed in (1, 2, 3):
        result_json(root / f"b{seed}", dataset="DTD", seed=seed, subsample="base", accuracy=80.0, eval_only=False,
                    extra=extra)
        result_json(root / f"n{seed}", dataset="DTD", seed=seed, subsample="new", accuracy=60.0, eval_only=True,
                    extra=extra)
    report = build("base2new", collect(root), Options())
    assert [m["label"] for m in report.summary["methods"]] == ["PromptSRC"]


def test_published_caspl_numbers_side_by_side(tree):
    report = build("base2new", collect(tree), Options(published=load_published("base2new", ["caspl-readme"])))
    md = markdown(report.tables)
    lines = md.splitlines()
    # EuroSAT block: the CasPL README gives per-dataset HM only (PromptSRC 82.32, + CasPL 90.95)
    euro = lines.index("### Base-to-new: EuroSAT") if "### Base-to-new: EuroSAT" in lines else \
        next(i for i, line in enumerate(lines) if line.endswith("Base-to-new: EuroSAT"))
    block = lines[euro:euro + 14]
    ours = 2 * 94 * 81 / 175  # 87.017
    i = block.index("| PromptSRC + CasPL | 94.00 ± 0.82 | 81.00 ± 0.82 | 87.02 | json |")
    assert block[i + 1] == "| ↳ published [caspl-readme] | — | — | 90.95 |  |"
    assert block[i + 2] == f"| ↳ Δ (ours − published) | — | — | {ours - 90.95:+.2f} |  |"
    j = block.index("| PromptSRC | 91.00 ± 0.82 | 72.00 ± 1.63 | 80.39 | json |")
    assert block[j + 1] == "| ↳ published [caspl-readme] | — | — | 82.32 |  |"
    # averages: published over 11 datasets, ours over 2: the numbers are shown, the Δ is not
    assert "| ↳ published [caspl-readme] | 86.11 | 79.54 | 82.69 |  |" in lines
    assert "| ↳ published [caspl-readme] | 84.26 | 76.10 | 79.97 |  |" in lines
    assert "[caspl-readme] published averages are over 11 datasets, ours over 2: no Δ for them." in md
    assert any(n.startswith("[caspl-readme] CasPL: Cascade Prompt Learning") for n in report.notes)


def test_fewshot_published_rows(tmp_path):
    root = tmp_path / "output"
    for shots, acc in ((1, 70.0), (16, 85.0)):
        for seed in (1, 2, 3):
            for dataset in ("EuroSAT", "DTD"):
                result_json(root / "fewshot" / dataset / f"shots_{shots}" / f"seed{seed}", dataset=dataset,
                            seed=seed, subsample="all", accuracy=acc, eval_only=False, shots=shots,
                            cascade=cascade_of(dataset))
    report = build("fewshot", collect(root), Options(published=load_published("fewshot")))
    md = markdown(report.tables)
    assert "| PromptSRC + CasPL | 1 | 70.00 | 70.00 | 70.00 | json |" in md
    assert "| ↳ published [caspl-readme] |  | — | — | 75.91 |  |" in md  # the 1-shot average, not the 16-shot one
    assert "| ↳ published [caspl-readme] |  | — | — | 84.49 |  |" in md
    assert "75.91 |  |" not in md.split("| PromptSRC + CasPL | 16 |")[1]
    rows = [r for r in report.csv_rows if r["kind"] == "published"]
    assert sorted((r["shots"], r["accuracy"]) for r in rows) == [(1, 75.91), (16, 84.49)]


def test_cli_compares_with_published(tree, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main([str(tree), "--protocol", "base2new", "--out", str(out), "--published", "caspl-readme",
                 "--methods", "PromptSRC + CasPL", "--quiet"]) == 0
    with open(out / "base2new.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"PromptSRC + CasPL"}
    pub = {r["dataset"]: r for r in rows if r["kind"] == "published"}
    assert float(pub["EuroSAT"]["hm"]) == 90.95 and float(pub["Average"]["base"]) == 86.11
    summary = json.loads((out / "base2new.json").read_text())
    assert summary["boosting_runs"] == {"PromptSRC + CasPL": sorted(BOOST.values())}


# ------------------------------------------------------------------------------------------------ the data itself
def test_published_caspl_data_matches_its_own_claims():
    """Every +CasPL average HM is the HM of its Base and New, and the gains are the README's (+7.64 ...)."""
    pub = load_published("base2new", ["caspl-readme"])
    avg = {e["method"]: e for e in pub.entries if e["ref"] == "caspl-readme" and e["dataset"] == "Average"}
    assert len(avg) == 9
    for e in avg.values():
        assert harmonic_mean(e["base"], e["new"]) == pytest.approx(e["hm"], abs=0.006), e["method"]
        assert len(e["over"]) == 11
    for method, gain in (("CoOp", 7.64), ("CoCoOp", 4.95), ("MaPLe", 3.41), ("PromptSRC", 2.72)):
        assert avg[f"{method} + CasPL"]["hm"] - avg[method]["hm"] == pytest.approx(gain, abs=1e-6)
    # the baseline rows are the original papers' numbers, already stored from their own READMEs
    everyone = load_published("base2new")
    for method in ("CLIP", "CoOp", "CoCoOp", "MaPLe", "PromptSRC"):
        theirs = [e for e in everyone.lookup(method, "Average") if e["ref"] in ("maple-readme", "promptsrc-readme")]
        assert {k: theirs[0][k] for k in ("base", "new", "hm")} == {k: avg[method][k] for k in ("base", "new", "hm")}
    per = [e for e in pub.entries if e["ref"] == "caspl-readme" and e["dataset"] != "Average"]
    assert len(per) == 22 and all(set(e) >= {"hm", "source"} and "base" not in e for e in per)
    gains = {e["dataset"]: e["hm"] for e in per if e["method"] == "PromptSRC + CasPL"}
    assert all(gains[e["dataset"]] > e["hm"] for e in per if e["method"] == "PromptSRC")  # CasPL wins each one
    few = load_published("fewshot")
    shots = sorted(e["shots"] for e in few.entries if e["method"] == "PromptSRC + CasPL")
    assert shots == [1, 2, 4, 8, 16] and all(e.get("source") for e in few.entries)
