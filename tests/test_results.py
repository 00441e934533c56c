"""tools.results on a generated output tree: every number checked against a hand computation written here.

Tree (base-to-new, 2 methods x 2 datasets x 3 seeds):
- MPL: complete. Its DTD seed-2 training run has no result.json, only a finished log.txt (log fallback), and a
  newer crashed log.txt-<timestamp> beside it. A MaPLe-style eval-only re-test of the EuroSAT seed-1 base model
  (test_base/) is a duplicate that must lose to the training run.
- CoOp: DTD seed 3 on the new classes never finished (a log without a result): missing.
- A few-shot run and a cross-dataset run in the same tree must stay out of the base-to-new tables.
"""
import csv
import json
import struct
from pathlib import Path

import pytest

from tools.results import Options, build, collect, harmonic_mean
from tools.results.__main__ import main
from tools.results.published import load as load_published

DS_STEM = {"EuroSAT": "eurosat", "DTD": "dtd", "ImageNet": "imagenet", "ImageNetV2": "imagenetv2",
           "ImageNetSketch": "imagenet_sketch"}
CFG = {"MPL": "vit_b4_c1_add2_rm1", "CoOp": "vit_b16_ctxv1"}

# (method, dataset) -> base accuracies and new accuracies for seeds 1, 2, 3 (None: the run is missing)
B2N = {
    ("MPL", "EuroSAT"): ([94.0, 95.0, 96.0], [78.0, 80.0, 82.0]),
    ("MPL", "DTD"): ([80.0, 81.0, 82.0], [58.0, 60.0, 62.0]),
    ("CoOp", "EuroSAT"): ([90.0, 92.0, 91.0], [50.0, 55.0, 60.0]),
    ("CoOp", "DTD"): ([78.0, 79.0, 80.0], [40.0, 44.0, None]),
}
TRAIN_TIME = {("MPL", "EuroSAT"): [600.0, 660.0, 540.0], ("MPL", "DTD"): [300.0, 330.0, 270.0],
              ("CoOp", "EuroSAT"): [1200.0] * 3, ("CoOp", "DTD"): [900.0] * 3}


def result_json(folder: Path, *, method, dataset, seed, subsample, accuracy, eval_only, train_time_s=0.0,
                shots=16, model_dir=None, finished_at="2026-01-01T00:00:00Z"):
    """A result.json following .notes/RESULT_JSON.md (schema 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = {
        "schema": 1, "status": "finished", "method": method, "config": CFG[method], "dataset": dataset,
        "dataset_config": DS_STEM[dataset], "seed": seed, "subsample": subsample, "shots": shots,
        "epochs": 5, "eval_only": eval_only, "split": "test", "accuracy": accuracy, "macro_f1": accuracy - 1,
        "error": 100 - accuracy, "num_test": 1000, "num_classes": 5, "train_time_s": train_time_s,
        "eval_time_s": 30.0, "train_images_per_s": None if eval_only else 40.0, "eval_images_per_s": 50.0,
        "learnable_params": 1000, "backbone": "ViT-B/16", "device": "cpu", "precision": "fp32",
        "model_dir": model_dir, "output_dir": str(folder), "versions": {"python": "3.11.7"},
        "finished_at": finished_at,
    }
    (folder / "result.json").write_text(json.dumps(rec))


def training_log(*, method, dataset, seed, subsample, acc, output_dir, elapsed="0:05:30", finished=True):
    """A Dassl training log: arguments, config dump, the end-of-training line and the result block."""
    text = (f"***************\n** Arguments **\n***************\n"
            f"config_file: configs/trainers/{method}/{CFG[method]}.yaml\n"
            f"dataset_config_file: configs/datasets/{DS_STEM[dataset]}.yaml\neval_only: False\nload_epoch: None\n"
            f"model_dir: \noutput_dir: {output_dir}\nseed: {seed}\ntrainer: {method}\n"
            f"************\n** Config **\n************\nDATASET:\n  NAME: {dataset}\n  NUM_SHOTS: 16\n"
            f"  SUBSAMPLE_CLASSES: {subsample}\nOPTIM:\n  MAX_EPOCH: 5\nOUTPUT_DIR: {output_dir}\nSEED: {seed}\n"
            f"TRAINER:\n  {method.upper()}:\n    N_CTX: 1\n  NAME: {method}\nCollecting env info ...\n"
            f"epoch [5/5] batch [20/20] time 0.089 (0.150) data 0.000 (0.012) loss 1.2 (1.5) lr 1.0e-05 eta 0:00:00\n")
    if finished:
        text += (f"Finish training\nDeploy the last-epoch model\nEvaluate on the *test* set\n=> result\n"
                 f"* total: 1,000\n* correct: {int(acc * 10)}\n* accuracy: {acc:.1f}%\n* error: {100 - acc:.1f}%\n"
                 f"* macro_f1: {acc - 1:.1f}%\nElapsed: {elapsed}\n")
    return text


def b2n_dir(root, part, method, dataset, seed):
    return root / "base2new" / part / DS_STEM[dataset] / "shots_16" / method / CFG[method] / f"seed{seed}"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "output"
    for (method, dataset), (bases, news) in B2N.items():
        for seed in (1, 2, 3):
            train_dir = b2n_dir(root, "train_base", method, dataset, seed)
            if (method, dataset, seed) == ("MPL", "DTD", 2):  # no result.json: only a finished log ...
                train_dir.mkdir(parents=True)
                (train_dir / "log.txt").write_text(training_log(
                    method=method, dataset=dataset, seed=seed, subsample="base", acc=bases[1],
                    output_dir=f"output/base2new/train_base/dtd/shots_16/MPL/{CFG[method]}/seed2"))
                # ... and a newer re-run that crashed, which must not hide it
                (train_dir / "log.txt-2026-02-01-10-00-00").write_text(training_log(
                    method=method, dataset=dataset, seed=seed, subsample="base", acc=11.0, output_dir="x",
                    finished=False))
            else:
                result_json(train_dir, method=method, dataset=dataset, seed=seed, subsample="base",
                            accuracy=bases[seed - 1], eval_only=False,
                            train_time_s=TRAIN_TIME[method, dataset][seed - 1])
            new_dir = b2n_dir(root, "test_new", method, dataset, seed)
            if news[seed - 1] is None:  # started, never finished
                new_dir.mkdir(parents=True)
                (new_dir / "log.txt").write_text("***************\n** Arguments **\n***************\n"
                                                 "eval_only: True\n")
            else:
                result_json(new_dir, method=method, dataset=dataset, seed=seed, subsample="new",
                            accuracy=news[seed - 1], eval_only=True, model_dir=str(train_dir))
    # a MaPLe-style re-test of a base model: same method/dataset/seed/part as a training run
    result_json(b2n_dir(root, "test_base", "MPL", "EuroSAT", 1), method="MPL", dataset="EuroSAT", seed=1,
                subsample="base", accuracy=10.0, eval_only=True, finished_at="2026-03-01T00:00:00Z")
    # runs of other protocols in the same tree
    result_json(root / "fewshot" / "eurosat" / "MPL" / "seed1", method="MPL", dataset="EuroSAT", seed=1,
                subsample="all", accuracy=33.0, eval_only=False, train_time_s=10.0)
    result_json(root / "crossdataset" / "imagenet" / "MPL" / "seed1", method="MPL", dataset="ImageNet", seed=1,
                subsample="all", accuracy=70.0, eval_only=False, train_time_s=10.0)
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ base-to-new
def test_base2new_numbers_by_hand(tree):
    coll = collect(tree)
    report = build("base2new", coll, Options())
    rows = {(r["label"], r["dataset"]): r for r in report.summary["rows"]}
    assert set(report.summary["datasets"]) == {"EuroSAT", "DTD"}
    assert [m["label"] for m in report.summary["methods"]] == ["CoOp", "MPL"]  # the papers' order

    r = rows["MPL", "EuroSAT"]
    assert r["base"]["mean"] == pytest.approx(95.0)  # (94 + 95 + 96) / 3; the 10.0 re-test is ignored
    assert r["base"]["std"] == pytest.approx((2 / 3) ** 0.5)  # population std: sqrt((1 + 0 + 1) / 3)
    assert r["new"]["mean"] == pytest.approx(80.0) and r["new"]["std"] == pytest.approx((8 / 3) ** 0.5)
    assert r["hm"] == pytest.approx(2 * 95 * 80 / 175)  # 86.857
    assert r["source"] == "json"

    r = rows["MPL", "DTD"]
    assert r["base"]["per_seed"] == {"1": 80.0, "2": 81.0, "3": 82.0}  # seed 2 from the log
    assert r["hm"] == pytest.approx(9720 / 141) and r["source"] == "json+log"  # 2*81*60/141 = 68.936

    # average: mean Base (95 + 81) / 2 = 88, mean New (80 + 60) / 2 = 70, HM of those = 12320 / 158 = 77.975
    # (the mean of the per-dataset HMs would be (86.857 + 68.936) / 2 = 77.897: not what the papers report)
    r = rows["MPL", "Average"]
    assert r["base"]["mean"] == pytest.approx(88.0) and r["new"]["mean"] == pytest.approx(70.0)
    assert r["hm"] == pytest.approx(12320 / 158)
    # per-seed averages of Base: 87, 88, 89 -> std sqrt(2/3)
    assert r["base"]["std"] == pytest.approx((2 / 3) ** 0.5)

    r = rows["CoOp", "DTD"]  # seed 3 of New is missing: mean of the two found, flagged n=2
    assert r["new"]["mean"] == pytest.approx(42.0) and r["new"]["n"] == 2 and r["new"]["std"] == pytest.approx(2.0)
    assert r["hm"] == pytest.approx(2 * 79 * 42 / 121)  # 54.843

    r = rows["CoOp", "Average"]  # Base (91 + 79) / 2 = 85; New (55 + 42) / 2 = 48.5 over 5 of 6 runs
    assert r["base"]["mean"] == pytest.approx(85.0) and r["base"]["std"] == pytest.approx(0.5 ** 0.5)
    assert r["new"]["mean"] == pytest.approx(48.5) and r["new"]["n"] == 5 and r["new"]["n_expected"] == 6
    assert r["new"]["std"] is None  # no spread over seeds without every seed
    assert r["hm"] == pytest.approx(2 * 85 * 48.5 / 133.5)  # 61.760

    assert report.summary["missing"] == [{"dataset": "DTD", "method": "CoOp", "seed": 3, "part": "new"}]
    assert [u["path"] for u in report.summary["unfinished"]] == [str(b2n_dir(tree, "test_new", "CoOp", "DTD", 3))]
    assert report.summary["duplicates"] == [{"used": str(b2n_dir(tree, "train_base", "MPL", "EuroSAT", 1)),
                                             "ignored": str(b2n_dir(tree, "test_base", "MPL", "EuroSAT", 1))}]
    # training time: mean over seeds per dataset (600, 300), then over datasets
    assert report.summary["train_time_s"] == {"CoOp": pytest.approx(1050.0), "MPL": pytest.approx(450.0)}


def test_base2new_markdown_rows(tree):
    report = build("base2new", collect(tree), Options())
    from tools.results.render import markdown

    md = markdown(report.tables)
    assert "| MPL | 88.00 ± 0.82 | 70.00 ± 1.63 | 77.97 | json+log |" in md  # average block
    assert "| CoOp | 85.00 ± 0.71 | 48.50 (n=5/6) | 61.76 (n=5/6) | json |" in md
    assert "| CoOp | 79.00 ± 0.82 | 42.00 ± 2.00 (n=2/3) | 54.84 (n=2/3) | json |" in md  # DTD block
    assert "| MPL | 95.00 ± 0.82 | 80.00 ± 1.63 | 86.86 | json |" in md  # EuroSAT block
    # wide New table (MPL Table II layout), columns in the MaPLe/PromptSRC order (DTD before EuroSAT)
    assert "| Method | DTD | EuroSAT | Average | src |" in md
    assert "| CoOp | 42.00 (n=2/3) | 55.00 | 48.50 (n=5/6) | json |" in md
    assert "| DTD | CoOp | 3 | new |" in md  # the Missing runs table


def test_seed_and_method_filter(tree):
    report = build("base2new", collect(tree), Options(seeds=(1, 2), methods=["MPL"]))
    rows = {(r["label"], r["dataset"]): r for r in report.summary["rows"]}
    assert [m["label"] for m in report.summary["methods"]] == ["MPL"]
    assert rows["MPL", "EuroSAT"]["base"]["mean"] == pytest.approx(94.5)
    assert any("seed(s) [3]" in n for n in report.summary["notes"])  # runs outside --seeds are reported


def test_requested_method_without_runs_is_all_missing(tree):
    report = build("base2new", collect(tree), Options(methods=["MPL", "MaPLe"]))
    assert sum(m["method"] == "MaPLe" for m in report.summary["missing"]) == 2 * 2 * 3  # 2 datasets, 2 parts
    rows = {(r["label"], r["dataset"]): r for r in report.summary["rows"]}
    assert rows["MaPLe", "Average"]["hm"] is None


def test_published_side_by_side(tree):
    report = build("base2new", collect(tree), Options(published=load_published("base2new")))
    from tools.results.render import markdown

    md = markdown(report.tables)
    # CoOp EuroSAT from the EuroSAT block (92.19 / 54.74 / 68.69): deltas 91 - 92.19, 55 - 54.74, 68.5616 - 68.69
    assert "| ↳ published [eurosat-papers] | 92.19 | 54.74 | 68.69 |  |" in md
    assert "| ↳ Δ (ours − published) | -1.19 | +0.26 | -0.13 |  |" in md
    # MPL Table II: EuroSAT new 79.73 (ours 80.00 -> +0.27), DTD 58.13 (ours 60.00 -> +1.87); its average is over
    # 11 datasets and ours over 2, so that delta is left out
    assert "| ↳ published [mpl-table2] | 58.13 | 79.73 | 75.63 |  |" in md
    assert "| ↳ Δ (ours − published) | +1.87 | +0.27 | — |  |" in md
    assert "[mpl-table2] published averages are over 11 datasets, ours over 2: no Δ for them." in md
    with pytest.raises(ValueError):
        load_published("base2new", ["no-such-source"])


# ------------------------------------------------------------------------------------------------ CLI, files, plot
def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_all_files_and_plot(tree, tmp_path, capsys):
    out = tmp_path / "tables"
    rc = main([str(tree), "--protocol", "base2new", "--out", str(out), "--plot", "--plot-size", "777x555",
               "--published"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| MPL | 88.00 ± 0.82 | 70.00 ± 1.63 | 77.97 | json+log |" in printed
    assert png_size(out / "base2new_time.png") == (777, 555)
    tex = (out / "base2new.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 + 2 + 3 + 1  # average, 2 datasets, 3 wide tables, missing runs
    assert r"MPL & 88.00 $\pm$ 0.82 & 70.00 $\pm$ 1.63 & 77.97 & json+log \\" in tex
    assert r"CoOp & 85.00 $\pm$ 0.71 & 48.50 (n=5/6) & 61.76 (n=5/6) & json \\" in tex

    rows = read_csv(out / "base2new.csv")
    coop_dtd = next(r for r in rows if r["kind"] == "ours" and r["label"] == "CoOp" and r["dataset"] == "DTD")
    assert float(coop_dtd["new"]) == pytest.approx(42.0) and coop_dtd["new_n"] == "2" and coop_dtd["n_expected"] == "3"
    assert coop_dtd["missing"] == "seed3:new"
    assert float(coop_dtd["hm"]) == pytest.approx(6636 / 121)
    coop_avg = next(r for r in rows if r["kind"] == "ours" and r["label"] == "CoOp" and r["dataset"] == "Average")
    assert coop_avg["missing"] == "DTD/seed3:new" and float(coop_avg["hm"]) == pytest.approx(8245 / 133.5)
    published = [r for r in rows if r["kind"] == "published" and r["label"] == "MPL" and r["dataset"] == "EuroSAT"]
    assert [(r["ref"], float(r["new"])) for r in published] == [("mpl-table2", 79.73)]

    summary = json.loads((out / "base2new.json").read_text())
    assert summary["missing"] == [{"dataset": "DTD", "method": "CoOp", "seed": 3, "part": "new"}]
    pts = {p["label"]: p for p in summary["points"]}
    assert pts["MPL"]["value"] == pytest.approx(12320 / 158) and pts["MPL"]["time_s"] == pytest.approx(450.0)
    assert pts["CoOp"]["partial"] and not pts["MPL"]["partial"]
    assert not list(out.glob("*.tmp"))


def test_cli_strict_and_nothing_found(tree, tmp_path, capsys):
    assert main([str(tree), "--protocol", "base2new", "--out", str(tmp_path / "t"), "--strict", "--quiet"]) == 2
    assert main([str(tree), "--protocol", "dg", "--out", str(tmp_path / "t")]) == 1
    assert "Nothing found" in capsys.readouterr().err


def test_plot_default_size(tree, tmp_path):
    from tools.results.plot import plot

    report = build("base2new", collect(tree), Options())
    assert png_size(plot(report, tmp_path / "p.png")) == (800, 600)


# ------------------------------------------------------------------------------------------------ cross-dataset, DG
@pytest.fixture
def xd_tree(tmp_path):
    root = tmp_path / "output"
    values = {  # method -> {dataset: [seed1, seed2, seed3]}
        "MPL": {"ImageNet": [70.0, 71.0, 72.0], "EuroSAT": [48.0, 50.0, 52.0], "DTD": [44.0, 45.0, 46.0],
                "ImageNetV2": [63.0, 64.0, 65.0]},
        "CoOp": {"ImageNet": [72.0, 71.5, 71.0], "EuroSAT": [40.0, 42.0, None], "DTD": [38.0, 40.0, 42.0],
                 "ImageNetV2": [60.0, 61.0, 62.0]},
    }
    for method, per in values.items():
        for seed in (1, 2, 3):
            src = root / "crossdataset" / "imagenet" / method / f"{CFG[method]}_16shots" / f"seed{seed}"
            result_json(src, method=method, dataset="ImageNet", seed=seed, subsample="all", eval_only=False,
                        accuracy=per["ImageNet"][seed - 1], train_time_s=3600.0 * (2 if method == "CoOp" else 1))
            for d in ("EuroSAT", "DTD", "ImageNetV2"):
                if per[d][seed - 1] is not None:
                    result_json(root / "crossdataset" / "evaluation" / DS_STEM[d] / method / f"seed{seed}",
                                method=method, dataset=d, seed=seed, subsample="all", eval_only=True,
                                accuracy=per[d][seed - 1], model_dir=str(src))
    # a few-shot ImageNet run with the same fields as MPL's seed-1 source, newer: must not become the source
    result_json(root / "fewshot" / "imagenet" / "MPL" / "seed1", method="MPL", dataset="ImageNet", seed=1,
                subsample="all", eval_only=False, accuracy=1.0, finished_at="2027-01-01T00:00:00Z")
    return root


def test_crossdataset_by_hand(xd_tree):
    report = build("crossdataset", collect(xd_tree), Options())
    rows = {(r["label"], r["dataset"]): r["accuracy"] for r in report.summary["rows"]}
    assert report.summary["datasets"] == ["DTD", "EuroSAT"]  # ImageNetV2 belongs to DG
    assert rows["MPL", "ImageNet"]["mean"] == pytest.approx(71.0)  # (70 + 71 + 72) / 3, not the few-shot 1.0
    assert rows["MPL", "Average"]["mean"] == pytest.approx(47.5)  # (50 + 45) / 2
    assert rows["CoOp", "EuroSAT"]["mean"] == pytest.approx(41.0) and rows["CoOp", "EuroSAT"]["n"] == 2
    assert rows["CoOp", "Average"]["mean"] == pytest.approx(40.5)  # (41 + 40) / 2, flagged 5/6
    assert rows["CoOp", "Average"]["n"] == 5 and rows["CoOp", "Average"]["n_expected"] == 6
    assert report.summary["missing"] == [{"dataset": "EuroSAT", "method": "CoOp", "seed": 3, "part": "target"}]
    assert report.summary["train_time_s"] == {"CoOp": 7200.0, "MPL": 3600.0}
    from tools.results.render import markdown

    assert "| MPL | 71.00 | 45.00 | 50.00 | 47.50 | json |" in markdown(report.tables)


def test_crossdataset_published(xd_tree):
    report = build("crossdataset", collect(xd_tree), Options(published=load_published("crossdataset")))
    from tools.results.render import markdown

    md = markdown(report.tables)
    # MPL Table III: DTD 45.47, EuroSAT 49.00 -> deltas 45 - 45.47 = -0.47, 50 - 49 = +1.00; average over 10 targets
    assert "| ↳ published [mpl-table3] | — | 45.47 | 49.00 | 66.25 |  |" in md
    assert "| ↳ Δ (ours − published) | — | -0.47 | +1.00 | — |  |" in md


def test_dg_targets(xd_tree):
    report = build("dg", collect(xd_tree), Options())
    rows = {(r["label"], r["dataset"]): r["accuracy"] for r in report.summary["rows"]}
    assert report.summary["datasets"] == ["ImageNetV2"]
    assert rows["MPL", "ImageNetV2"]["mean"] == pytest.approx(64.0)
    assert rows["CoOp", "Average"]["mean"] == pytest.approx(61.0)


# ------------------------------------------------------------------------------------------------ few-shot
def test_fewshot_by_hand(tmp_path):
    root = tmp_path / "output"
    vals = {(1, "EuroSAT"): [50.0, 52.0, 54.0], (1, "DTD"): [40.0, 42.0, 44.0], (16, "EuroSAT"): [80.0, 82.0, None],
            (16, "DTD"): [60.0, 62.0, 64.0]}
    for (shots, d), accs in vals.items():
        for seed, acc in enumerate(accs, 1):
            if acc is not None:
                result_json(root / "fewshot" / DS_STEM[d] / f"shots_{shots}" / "MPL" / f"seed{seed}", method="MPL",
                            dataset=d, seed=seed, subsample="all", eval_only=False, accuracy=acc, shots=shots,
                            train_time_s=100.0 * shots)
    report = build("fewshot", collect(root), Options())
    rows = {(r["shots"], r["dataset"]): r["accuracy"] for r in report.summary["rows"]}
    assert rows[1, "Average"]["mean"] == pytest.approx(47.0)  # (52 + 42) / 2
    assert rows[16, "EuroSAT"]["mean"] == pytest.approx(81.0) and rows[16, "EuroSAT"]["n"] == 2
    assert rows[16, "Average"]["mean"] == pytest.approx(71.5)  # (81 + 62) / 2, flagged
    assert report.summary["missing"] == [{"dataset": "EuroSAT", "method": "MPL", "seed": 3, "part": "16-shot"}]
    pts = sorted(report.points, key=lambda p: p["time_s"])
    assert [(p["time_s"], p["partial"]) for p in pts] == [(100.0, False), (1600.0, True)]


# ------------------------------------------------------------------------------------------------ data and formula
def test_hm_convention_matches_published_averages():
    """The published average HMs are the HM of the average Base and New (not the mean of per-dataset HMs)."""
    pub = load_published("base2new")
    full = [e for e in pub.entries if e["dataset"] == "Average" and {"base", "new", "hm"} <= set(e)]
    assert len(full) >= 6
    for e in full:
        # to the sources' last digit (KgCoOp's README truncates ProGrad's 76.166 to 76.16)
        assert harmonic_mean(e["base"], e["new"]) == pytest.approx(e["hm"], abs=0.0067), e["method"]
    assert harmonic_mean(82.28, 75.14) == pytest.approx(78.548, abs=1e-3)  # MaPLe: 2*82.28*75.14/157.42


@pytest.mark.parametrize("protocol,metric,ref,n", [("base2new", "new", "mpl-table2", 11),
                                                  ("crossdataset", "accuracy", "mpl-table3", 10)])
def test_published_mpl_tables_are_consistent(protocol, metric, ref, n):
    """Each transcribed MPL-paper average equals the mean of its per-dataset entries (to the paper's rounding)."""
    pub = load_published(protocol, [ref])
    methods = {e["method"] for e in pub.entries if e["ref"] == ref}
    assert methods == {"CoOp", "CoCoOp", "MaPLe", "PromptSRC", "MPL"}
    for m in methods:
        per = [e[metric] for e in pub.entries if e["ref"] == ref and e["method"] == m and e["dataset"] != "Average"]
        avg = next(e for e in pub.entries if e["ref"] == ref and e["method"] == m and e["dataset"] == "Average")
        assert len(per) == n and len(avg["over"]) == n
        assert sum(per) / n == pytest.approx(avg[metric], abs=0.006)
    assert all(e.get("source") for e in pub.entries)


def test_dataset_names_of_result_files_match_the_published_tables():
    """result.json records cfg.DATASET.NAME (the class name): DTD's is DescribableTextures."""
    from tools.results.names import canonical_dataset

    assert canonical_dataset("DescribableTextures") == canonical_dataset("dtd") == "DTD"
    assert canonical_dataset("Digits") == canonical_dataset("digits")
    assert canonical_dataset("OxfordFlowers") == canonical_dataset("oxford_flowers") == "OxfordFlowers"
