"""``python -m datasets.imagefolder``: a generated ImageFolder becomes a dataset, then runs through base2new.

The worked example of DATASETS.md ("Your own dataset") is what the end-to-end test runs, on generated images
and a tiny CLIP checkpoint: make the dataset, ``base2new_train.sh NAME 1``, ``base2new_test.sh NAME 1``.
"""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train

from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from datasets.errors import UserError
from datasets.imagefolder import CONFIG_DIR, main, make_imagefolder, read_classnames
from trainers.config import extend_cfg

from tiny_clip import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("red_square", "green-circle", "blue_bar", "yellow_cross")
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20))


def make_images(folder: Path, n_per_class: int = 10, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in zip(CLASSES, COLOURS):
        (folder / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 60, (size, size, 3)) + np.array(colour) * 0.7
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not a class")  # a file at the top is not a class
    return folder


@pytest.fixture
def dataset_name():
    """A unique name whose generated yaml (in the repo's configs/datasets, where the scripts look) is removed."""
    name = f"tif_{uuid.uuid4().hex[:8]}"
    yield name
    yaml = Path(CONFIG_DIR) / f"{name}.yaml"
    if yaml.exists():
        yaml.unlink()


def cfg_for(name, root, subsample="all"):
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(Path(CONFIG_DIR) / f"{name}.yaml"))
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    return cfg


def test_split_is_written_once_with_fixed_seed_and_names_are_editable(tmp_path, dataset_name, capsys):
    src = make_images(tmp_path / "raw")
    data = tmp_path / "data"
    assert main([str(src), "--name", dataset_name, "--root", str(data), "--train", "0.6", "--val", "0.2"]) == 0
    out = capsys.readouterr().out
    assert f"{dataset_name}: 4 classes, 24 train / 8 val / 8 test images" in out
    ddir = data / dataset_name
    split = json.loads((ddir / f"split_{dataset_name}.json").read_text())
    assert sorted({e[1] for e in split["train"]}) == [0, 1, 2, 3]
    assert {e[2] for e in split["train"] if e[1] == 0} == {"blue bar"}  # labels: sorted folder names
    assert all((ddir / "images" / e[0]).is_file() for part in split.values() for e in part)
    assert not {e[0] for e in split["train"]} & {e[0] for e in split["test"]}
    assert read_classnames(ddir / "classnames.txt")["green-circle"] == "green circle"

    # the same seed draws the same split; running again keeps it; --force with another seed redraws
    first = (ddir / f"split_{dataset_name}.json").read_text()
    assert main([str(src), "--name", dataset_name, "--root", str(data), "--train", "0.6", "--val", "0.2"]) == 0
    assert "kept the existing split" in capsys.readouterr().out
    assert (ddir / f"split_{dataset_name}.json").read_text() == first
    assert main([str(src), "--name", dataset_name, "--root", str(data), "--seed", "2", "--force"]) == 0
    assert (ddir / f"split_{dataset_name}.json").read_text() != first

    # edited class names reach the Datums; base/new halves as for the other datasets
    text = (ddir / "classnames.txt").read_text().replace("blue_bar\tblue bar", "blue_bar\tcobalt stripe")
    (ddir / "classnames.txt").write_text(text)
    cls = DATASET_REGISTRY.get(f"ImageFolder_{dataset_name}")
    base = cls(cfg_for(dataset_name, data, "base"))
    assert base.classnames == ["cobalt stripe", "green circle"]
    new = cls(cfg_for(dataset_name, data, "new"))
    assert new.classnames == ["red square", "yellow cross"]
    from datasets.prepare import main as prepare_main
    assert prepare_main([dataset_name, "--root", str(data), "--check"]) == 0


def test_bad_input_is_refused_before_writing(tmp_path, dataset_name, capsys):
    src = make_images(tmp_path / "raw", n_per_class=2)
    data = tmp_path / "data"
    assert main([str(src), "--name", dataset_name, "--root", str(data)]) == 2
    assert "too few for a train, val and test image" in capsys.readouterr().err
    assert not (data / dataset_name).exists() and not (Path(CONFIG_DIR) / f"{dataset_name}.yaml").exists()
    assert main([str(src), "--name", "Bad-Name", "--root", str(data)]) == 2
    assert main([str(src), "--name", "eurosat", "--root", str(data)]) == 2
    assert "built-in dataset" in capsys.readouterr().err
    with pytest.raises(UserError, match="add up to 1"):
        make_imagefolder(src, dataset_name, data, (0.8, 0.3, 0.1))
    with pytest.raises(UserError, match="not a folder"):
        make_imagefolder(tmp_path / "nowhere", dataset_name, data)
    assert not (data / "eurosat").exists() and not (Path(CONFIG_DIR) / "eurosat.yaml").read_text().startswith("#")


def add_bad_files(src: Path) -> dict:
    """A zero-byte file, a text file named .jpg and a truncated JPEG among the images; {relative path: reason}."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(src / "blue_bar" / "whole.jpg")
    data = (src / "blue_bar" / "whole.jpg").read_bytes()
    (src / "blue_bar" / "whole.jpg").unlink()
    (src / "blue_bar" / "cut.jpg").write_bytes(data[: len(data) // 2])  # an interrupted copy
    (src / "red_square" / "empty.png").write_bytes(b"")
    (src / "green-circle" / "notes.jpg").write_text("a text file with an image's name")
    return {"blue_bar/cut.jpg": "truncated", "red_square/empty.png": "an empty file",
            "green-circle/notes.jpg": "not an image"}


def test_unreadable_images_stop_the_import_and_are_listed(tmp_path, dataset_name, capsys):
    src = make_images(tmp_path / "raw")
    bad = add_bad_files(src)
    data = tmp_path / "data"
    assert main([str(src), "--name", dataset_name, "--root", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: 3 of 43 image files in {src} cannot be read;") and "--skip-unreadable" in err
    for rel, reason in bad.items():
        assert f"{src / rel} ({reason}" in err
    assert not (data / dataset_name).exists() and not (Path(CONFIG_DIR) / f"{dataset_name}.yaml").exists()


def test_skip_unreadable_leaves_them_out_and_says_how_many(tmp_path, dataset_name, capsys):
    src = make_images(tmp_path / "raw")
    bad = add_bad_files(src)
    data = tmp_path / "data"
    assert main([str(src), "--name", dataset_name, "--root", str(data), "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert "left out 3 unreadable file(s):" in out and all(str(src / rel) in out for rel in bad)
    split = json.loads((data / dataset_name / f"split_{dataset_name}.json").read_text())
    named = {e[0] for part in split.values() for e in part}
    assert len(named) == 40 and not named & set(bad)


def test_files_are_made_with_the_users_permissions_and_check_needs_no_second_pass(tmp_path, dataset_name,
                                                                                   monkeypatch, capsys):
    import datasets.images as images
    from datasets.prepare import main as prepare_main

    src = make_images(tmp_path / "raw")
    data = tmp_path / "data"
    old = os.umask(0o022)
    try:
        assert main([str(src), "--name", dataset_name, "--root", str(data)]) == 0
    finally:
        os.umask(old)
    ddir = data / dataset_name
    yaml = Path(CONFIG_DIR) / f"{dataset_name}.yaml"
    for path in (ddir / f"split_{dataset_name}.json", ddir / "classnames.txt", yaml):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path  # mkstemp made them 0600

    opened = []
    real = images._problem
    monkeypatch.setattr(images, "_problem", lambda path: opened.append(path) or real(path))
    assert prepare_main([dataset_name, "--root", str(data), "--check"]) == 0
    assert opened == []  # the import opened every image and recorded it
    # a file damaged afterwards: --check notices the change and opens the images, as --verify-only always does
    (src / "red_square" / "003.png").write_bytes(b"")
    capsys.readouterr()
    for flag in ("--check", "--verify-only"):
        assert prepare_main([dataset_name, "--root", str(data), flag]) == 2
        err = capsys.readouterr().err
        assert "1 of 40 images do not open" in err and "red_square/003.png (an empty file)" in err
    assert len(opened) == 80


@pytest.mark.slow
def test_worked_example_base2new_through_the_scripts(tmp_path, dataset_name):
    src = make_images(tmp_path / "my_images", n_per_class=8)
    data, out = tmp_path / "data", tmp_path / "output"
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pt", kind="vit")
    assert main([str(src), "--name", dataset_name, "--root", str(data)]) == 0
    env = dict(os.environ, DATA=str(data), OUTPUT=str(out), SHOTS="2", CFG="tiny_digits", PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    opts = ["--", "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32",
            "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1"]
    # training through train.py with the generated yaml (as base2new_train.sh runs it), in this process
    train_dir = out / "base2new/train_base" / dataset_name / "shots_2/CoOp/tiny_digits/seed1"
    rc = train.main(["--root", str(data), "--seed", "1", "--trainer", "CoOp", "--dataset-config-file",
                     f"configs/datasets/{dataset_name}.yaml", "--config-file",
                     "configs/trainers/CoOp/tiny_digits.yaml", "--output-dir", str(train_dir),
                     "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", *opts[1:]])
    assert rc == 0
    # testing through the script, with the dataset's name on the command line
    run = subprocess.run(["bash", str(REPO / "scripts/coop/base2new_test.sh"), dataset_name, "1", *opts], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tail = f"{dataset_name}/shots_2/CoOp/tiny_digits/seed1"
    base = json.loads((out / "base2new/train_base" / tail / "result.json").read_text())
    new = json.loads((out / "base2new/test_new" / tail / "result.json").read_text())
    assert (base["subsample"], base["num_classes"], base["num_test"]) == ("base", 2, 4)
    assert (new["subsample"], new["num_classes"], new["eval_only"]) == ("new", 2, True)
