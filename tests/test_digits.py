"""The Digits dataset (scikit-learn's handwritten digits written in the CoOp layout) through the dataset code."""
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data import DataManager
from dassl.data.datasets import DATASET_REGISTRY, build_dataset
from dassl.utils import UserError
from datasets import digits
from datasets.digits import CLASSNAMES, Digits, digit_image, load_sklearn_digits

SIZES = {"train": 898, "val": 359, "test": 540}


def make_cfg(root, subsample="all", shots=-1, seed=1):
    cfg = get_cfg_default()
    cfg.VERBOSE = False
    cfg.SEED = seed
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "Digits"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample  # added by the trainers' extend_cfg in real runs
    return cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root where the dataset has been written once (by building it)."""
    root = tmp_path_factory.mktemp("data")
    build_dataset(make_cfg(root))
    return root


def test_registered_with_its_config():
    assert DATASET_REGISTRY.get("Digits") is Digits
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "configs", "datasets", "digits.yaml")) as f:
        assert f.read() == 'DATASET:\n  NAME: "Digits"\n'


def test_layout_split_file_and_images(root):
    dataset_dir = root / "digits"
    with open(dataset_dir / "split_digits.json") as f:
        split = json.load(f)
    assert {k: len(v) for k, v in split.items()} == SIZES
    entries = [e for part in split.values() for e in part]
    assert len({e[0] for e in entries}) == 1797  # every image exactly once
    for relpath, label, classname in entries:
        assert classname == CLASSNAMES[label] and relpath.startswith(classname + "/") and relpath.endswith(".png")
    images, labels = load_sklearn_digits()
    for relpath, label, _ in split["test"][:20]:
        index = int(relpath.split("/")[1][:-4])
        assert labels[index] == label
        stored = Image.open(dataset_dir / "images" / relpath)
        assert stored.size == (32, 32) and stored.mode == "RGB"
        assert np.array_equal(np.asarray(stored), np.asarray(digit_image(images[index])))
    # dark ink on white paper: a blank 8x8 pixel is white, a full one black
    assert np.asarray(digit_image(np.zeros((8, 8)))).min() == 255
    assert np.asarray(digit_image(np.full((8, 8), 16.0))).max() == 0


def test_all_classes_sizes_and_names(root):
    ds = build_dataset(make_cfg(root))
    assert ds.classnames == list(CLASSNAMES) and ds.num_classes == 10
    assert {"train": len(ds.train_x), "val": len(ds.val), "test": len(ds.test)} == SIZES
    assert all(item.classname == CLASSNAMES[item.label] for item in ds.test)
    per_class = np.bincount([item.label for item in ds.test])
    assert per_class.min() >= 50 and per_class.sum() == 540


@pytest.mark.parametrize("subsample,names", [("base", CLASSNAMES[:5]), ("new", CLASSNAMES[5:])])
def test_base_and_new_classes(root, subsample, names):
    ds = build_dataset(make_cfg(root, subsample=subsample))
    assert ds.classnames == list(names) and ds.num_classes == 5
    for items in (ds.train_x, ds.val, ds.test):
        assert {item.label for item in items} == set(range(5))
        assert all(item.classname == names[item.label] for item in items)
    full = build_dataset(make_cfg(root))
    assert len(ds.test) == sum(item.classname in names for item in full.test)


def test_few_shot_split_is_cached(root):
    random.seed(1)
    ds = build_dataset(make_cfg(root, shots=4, seed=1))
    assert np.bincount([item.label for item in ds.train_x]).tolist() == [4] * 10
    assert np.bincount([item.label for item in ds.val]).tolist() == [4] * 10
    assert len(ds.test) == SIZES["test"]
    assert (root / "digits" / "split_fewshot" / "shot_4-seed_1.pkl").is_file()
    random.seed(123)  # the cache, not the random state, decides the shots now
    again = build_dataset(make_cfg(root, shots=4, seed=1))
    assert [i.impath for i in again.train_x] == [i.impath for i in ds.train_x]


def test_split_is_fixed_whatever_the_global_random_state(root):
    labels = load_sklearn_digits()[1].tolist()
    random.seed(0)
    a = digits.split_entries(labels)
    random.seed(99)
    assert digits.split_entries(labels) == a
    with open(root / "digits" / "split_digits.json") as f:
        assert json.load(f) == json.loads(json.dumps(a))  # what the dataset wrote


def test_interrupted_or_damaged_build_is_rebuilt(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    build_dataset(cfg)
    image_dir = tmp_path / "digits" / "images"
    victim = image_dir / "three" / os.listdir(image_dir / "three")[0]

    victim.unlink()                                       # an image deleted by hand
    (tmp_path / "digits" / "split_digits.json").write_text("{")  # a damaged split file
    capsys.readouterr()
    ds = build_dataset(cfg)
    assert "Writing the digits dataset" in capsys.readouterr().out
    assert victim.is_file() and len(ds.test) == SIZES["test"]

    (image_dir / digits.MARKER).unlink()                  # a folder whose build never finished
    build_dataset(cfg)
    assert "Writing the digits dataset" in capsys.readouterr().out
    assert (image_dir / digits.MARKER).is_file()
    assert not [n for n in os.listdir(tmp_path / "digits") if n.endswith(".tmp")]  # no temporary folder left

    build_dataset(cfg)                                    # complete: nothing is written
    assert "Writing" not in capsys.readouterr().out


def test_loads_through_the_data_manager(root):
    cfg = make_cfg(root, subsample="base", shots=2, seed=2)
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ("normalize",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 64
    dm = DataManager(cfg)
    assert dm.num_classes == 5 and dm.lab2cname == dict(enumerate(CLASSNAMES[:5]))
    batch = next(iter(dm.train_loader_x))
    assert tuple(batch["img"].shape) == (4, 3, 32, 32)
    assert set(batch["label"].tolist()) <= set(range(5))
    assert sum(len(b["label"]) for b in dm.test_loader) == len(dm.dataset.test)


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(UserError, match="cannot write the digits dataset"):
        build_dataset(make_cfg(blocker))
