"""A dataset made by ``python -m datasets.imagefolder FOLDER --name NAME`` is found by NAME in tools.results.

Its runs record ``dataset: ImageFolder_NAME`` (cfg.DATASET.NAME) and ``dataset_config: NAME``; the tables, the
``--datasets`` and ``--source`` options and the column names use NAME. An own dataset called like a built-in
alias (``pets``) stays apart from the built-in dataset (OxfordPets).
"""
import json
from pathlib import Path

import pytest

from tools.results import Options, build, collect
from tools.results.__main__ import main
from tools.results.names import display_dataset, resolve_dataset

# dataset key -> config name, (base accuracies, new accuracies) of seeds 1 and 2
OWN = {"ImageFolder_ecofruit": ("ecofruit", [70.0, 72.0], [50.0, 54.0]),
       "ImageFolder_pets": ("pets", [60.0, 60.0], [40.0, 40.0]),
       "OxfordPets": ("oxford_pets", [90.0, 92.0], [95.0, 97.0])}


def record(folder: Path, dataset: str, config: str, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"schema": 1, "status": "finished", "method": "CoOp", "config": "tiny_digits", "dataset": dataset,
           "dataset_config": config, "shots": 16, "epochs": 2, "split": "test", "train_time_s": 10.0,
           "output_dir": str(folder), "finished_at": "2026-01-01T00:00:00Z", **kw}
    (folder / "result.json").write_text(json.dumps(rec))


@pytest.fixture
def own_tree(tmp_path):
    root = tmp_path / "output"
    for dataset, (config, base, new) in OWN.items():
        for seed, (b, n) in enumerate(zip(base, new), start=1):
            tail = f"{config}/shots_16/CoOp/tiny_digits/seed{seed}"
            record(root / "base2new/train_base" / tail, dataset, config, seed=seed, subsample="base", accuracy=b,
                   eval_only=False)
            record(root / "base2new/test_new" / tail, dataset, config, seed=seed, subsample="new", accuracy=n,
                   eval_only=True, train_time_s=0.0, model_dir=str(root / "base2new/train_base" / tail))
    return root


def test_names_resolve_to_the_runs_own_dataset_first():
    assert display_dataset("ImageFolder_ecofruit") == "ecofruit" and display_dataset("OxfordFlowers") == "Flowers102"
    found = {"ImageFolder_pets", "OxfordPets"}
    assert resolve_dataset("pets", found) == "ImageFolder_pets"       # the own dataset wins over the alias
    assert resolve_dataset("pets", {"OxfordPets"}) == "OxfordPets"     # no own "pets": the built-in alias
    assert resolve_dataset("oxford_pets", found) == "OxfordPets"
    assert resolve_dataset("ImageFolder_pets", found) == "ImageFolder_pets"


def test_own_datasets_fill_the_base2new_table_by_their_names(own_tree, tmp_path, capsys):
    report = build("base2new", collect(own_tree), Options(seeds=(1, 2), datasets=["ecofruit", "pets", "oxford_pets"]))
    cells = {r["dataset"]: r for r in report.summary["rows"]}
    assert cells["ImageFolder_ecofruit"]["base"]["mean"] == pytest.approx(71.0)
    assert cells["ImageFolder_ecofruit"]["new"]["mean"] == pytest.approx(52.0)
    assert cells["ImageFolder_pets"]["base"]["mean"] == pytest.approx(60.0)
    assert cells["OxfordPets"]["new"]["mean"] == pytest.approx(96.0)
    assert report.summary["missing"] == []

    out = tmp_path / "tables"
    assert main([str(own_tree), "--protocol", "base2new", "--datasets", "ecofruit", "pets", "--seeds", "1", "2",
                 "--out", str(out), "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "## Base-to-new: ecofruit" in printed and "## Base-to-new: pets" in printed
    assert "| Method | ecofruit | pets | Average | src |" in printed
    assert "| CoOp | 52.00 | 40.00 | 46.00 | json |" in printed  # new-class accuracy: no dashes


def test_an_own_dataset_as_the_cross_dataset_source(tmp_path):
    root = tmp_path / "output"
    src = root / "crossdataset/ecofruit/CoOp/tiny_digits_16shots/seed1"
    record(src, "ImageFolder_ecofruit", "ecofruit", seed=1, subsample="all", accuracy=80.0, eval_only=False)
    record(root / "crossdataset/evaluation/pets/CoOp/tiny_digits_16shots/seed1", "ImageFolder_pets", "pets", seed=1,
           subsample="all", accuracy=40.0, eval_only=True, train_time_s=0.0, model_dir=str(src))
    report = build("crossdataset", collect(root), Options(seeds=(1,), source="ecofruit", datasets=["pets"]))
    assert report.summary["source"] == "ImageFolder_ecofruit" and report.summary["missing"] == []
    table = report.tables[0]
    assert table.columns[1:3] == ["Source: ecofruit", "pets"]
