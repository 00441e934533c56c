"""The dataset classes on generated fixtures: sizes, class names, base/new classes, few-shot caches, bad input."""
import math
import os
import pickle
import random
import shutil

import pytest

import datasets  # noqa: F401  (registers the datasets)
from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum, build_dataset
from dassl.utils import UserError
from datasets.caltech256 import caltech256_classname
from datasets.fixtures import FIXTURE_NAMES, make_fixture
from datasets.prepare import dataset_class
from datasets.splits import read_split, save_split, subsample_classes

TEST_ONLY = {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


def make_cfg(root, name, subsample="all", shots=-1, seed=1):
    cfg = get_cfg_default()
    cfg.VERBOSE = False
    cfg.SEED = seed
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = dataset_class(name).__name__
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample  # added by the trainers' extend_cfg in real runs
    return cfg


def build(root, name, **kw):
    return build_dataset(make_cfg(root, name, **kw))


@pytest.fixture(scope="module")
def all_fixtures(tmp_path_factory):
    """Every dataset with its real number of classes (the test-only variants: 10), one image per class and split
    (Caltech256: 6 per class, split by the reader)."""
    root = tmp_path_factory.mktemp("data")
    infos = {
        name: make_fixture(
            name, root, n_per_class=2 if name == "caltech256" else 1, n_classes=10 if name in TEST_ONLY else None
        )
        for name in FIXTURE_NAMES
    }
    return root, infos


@pytest.fixture
def eurosat8(tmp_path):
    """EuroSAT with 8 images per class in each split."""
    return tmp_path, make_fixture("eurosat", tmp_path, n_per_class=8)


def paths(items):
    return [item.impath for item in items]


# ---------------------------------------------------------------------------------------------------------------
# Every dataset, every class
# ---------------------------------------------------------------------------------------------------------------
def test_every_dataset_is_registered_with_its_config():
    assert set(FIXTURE_NAMES) == {dataset_class(n).config_name for n in FIXTURE_NAMES}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in FIXTURE_NAMES:
        cls = dataset_class(name)
        assert DATASET_REGISTRY.get(cls.__name__) is cls
        with open(os.path.join(here, "configs", "datasets", f"{name}.yaml")) as f:
            assert f.read() == f'DATASET:\n  NAME: "{cls.__name__}"\n'


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_loads_with_real_classes_and_sizes(all_fixtures, name):
    root, infos = all_fixtures
    info = infos[name]
    ds = build(root, name)
    assert ds.classnames == info.classnames
    assert ds.num_classes == len(info.classnames)
    if name not in TEST_ONLY:
        assert ds.num_classes == dataset_class(name).full_num_classes
    assert len(ds.train_x) == info.sizes["train"]
    assert len(ds.val or []) == info.sizes["val"]
    assert len(ds.test) == info.sizes["test"]
    assert all(os.path.isfile(item.impath) for item in ds.test)


@pytest.mark.parametrize("name", sorted(set(FIXTURE_NAMES) - TEST_ONLY))
def test_base_and_new_classes(all_fixtures, name):
    """Base = first ceil(n/2) labels, new = the rest, each relabelled from 0, in every split."""
    root, infos = all_fixtures
    n = dataset_class(name).full_num_classes
    full = infos[name].classnames
    base, new = build(root, name, subsample="base"), build(root, name, subsample="new")
    m = math.ceil(n / 2)
    assert (base.num_classes, new.num_classes) == (m, n - m)
    assert base.classnames == full[:m] and new.classnames == full[m:]
    for ds, count in ((base, m), (new, n - m)):
        for split in (ds.train_x, ds.val, ds.test):
            assert sorted({item.label for item in split}) == list(range(count))


def test_base_new_counts_of_the_benchmark():
    """The published base/new class counts follow from the class counts the dataset classes declare."""
    counts = {name: dataset_class(name).full_num_classes for name in FIXTURE_NAMES}
    halves = {name: (math.ceil(n / 2), n - math.ceil(n / 2)) for name, n in counts.items()}
    assert halves["eurosat"] == (5, 5) and halves["oxford_pets"] == (19, 18)
    assert halves["sun397"] == (199, 198) and halves["imagenet"] == (500, 500)
    assert halves["dtd"] == (24, 23) and halves["caltech101"] == (50, 50)
    assert halves["food101"] == (51, 50) and halves["oxford_flowers"] == (51, 51)
    assert halves["fgvc_aircraft"] == (50, 50) and halves["stanford_cars"] == (98, 98)
    assert halves["ucf101"] == (51, 50) and halves["caltech256"] == (128, 128)


def test_eurosat_names_and_halves(all_fixtures):
    root, _ = all_fixtures
    base, new = build(root, "eurosat", subsample="base"), build(root, "eurosat", subsample="new")
    assert base.classnames == [
        "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"
    ]
    assert new.classnames == ["Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


def test_class_name_fixes(all_fixtures):
    root, _ = all_fixtures
    caltech = build(root, "caltech101").classnames
    assert {"airplane", "face", "leopard", "motorbike"} <= set(caltech)
    assert not {"BACKGROUND_Google", "Faces_easy", "airplanes", "Faces"} & set(caltech)
    assert build(root, "oxford_pets").classnames[:2] == ["abyssinian", "american_bulldog"]


def test_caltech256_names_clutter_and_generated_split(all_fixtures, tmp_path):
    root, _ = all_fixtures
    ds = build(root, "caltech256")
    names = ds.classnames
    assert names[:4] == ["ak47", "american flag", "backpack", "baseball bat"]
    assert "t-shirt" in names and "yo-yo" in names and "airplanes" in names and "faces easy" in names
    assert "clutter" not in names and len(names) == 256
    assert all(not p.endswith("RENAME2") for p in paths(ds.train_x + ds.val + ds.test))
    assert caltech256_classname("002.american-flag") == "american flag"
    split_path = os.path.join(root, "caltech-256", "split_huang_Caltech256.json")
    assert os.path.isfile(split_path)
    # The split does not depend on the run's random state: another copy draws the same one.
    random.seed(12345)
    make_fixture("caltech256", tmp_path, n_per_class=2, n_classes=4)
    other = build(tmp_path, "caltech256")
    rel = lambda items, r: [os.path.relpath(p, r) for p in paths(items)]  # noqa: E731
    assert rel(other.train_x, tmp_path) == rel(ds.train_x, root)[: len(other.train_x)]


# ---------------------------------------------------------------------------------------------------------------
# Few-shot sampling and its cache
# ---------------------------------------------------------------------------------------------------------------
def reference_draw(items, k):
    """Dassl's draw: per label in order of first appearance, random.sample(items_of_label, k)."""
    by_label = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    out = []
    for group in by_label.values():
        out.extend(random.sample(group, k) if len(group) >= k else group)
    return out


def test_fewshot_counts_cache_and_reuse(eurosat8, capsys):
    root, _ = eurosat8
    full = build(root, "eurosat")
    random.seed(1)
    expected_train, expected_val = reference_draw(full.train_x, 6), reference_draw(full.val, 4)

    random.seed(1)
    ds = build(root, "eurosat", shots=6)
    cache = os.path.join(root, "eurosat", "split_fewshot", "shot_6-seed_1.pkl")
    assert os.path.isfile(cache) and "Saving preprocessed few-shot data" in capsys.readouterr().out
    assert len(ds.train_x) == 6 * 10 and len(ds.val) == 4 * 10  # val: min(K, 4) per class
    assert paths(ds.train_x) == paths(expected_train) and paths(ds.val) == paths(expected_val)

    random.seed(999)  # the cache is keyed by (shots, SEED) only, as in CoOp
    again = build(root, "eurosat", shots=6)
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert paths(again.train_x) == paths(ds.train_x) and paths(again.val) == paths(ds.val)

    with open(cache, "rb") as f:  # the reference's format: {"train": [Datum], "val": [Datum]}
        data = pickle.load(f)
    assert set(data) == {"train", "val"} and all(type(d) is Datum for d in data["train"])

    small = build(root, "eurosat", shots=2)
    assert len(small.train_x) == 20 and len(small.val) == 20


def test_fewshot_then_base_new(eurosat8):
    root, _ = eurosat8
    random.seed(1)
    ds = build(root, "eurosat", shots=4, subsample="new")
    assert ds.num_classes == 5 and len(ds.train_x) == 20 and len(ds.val) == 20 and len(ds.test) == 40
    assert os.path.isfile(os.path.join(root, "eurosat", "split_fewshot", "shot_4-seed_1.pkl"))


def test_reference_written_cache_is_reused_and_rerooted(eurosat8, tmp_path_factory):
    """A cache written elsewhere (absolute paths of another root) is mapped onto this dataset folder."""
    root, _ = eurosat8
    full = build(root, "eurosat")
    elsewhere = "/somewhere/else/data/eurosat/"

    def moved(item):  # what unpickling a reference cache gives: no __init__ call, so no file check
        datum = Datum.__new__(Datum)
        rel = os.path.relpath(item.impath, os.path.join(root, "eurosat"))
        datum.__dict__.update(_impath=elsewhere + rel, _label=item.label, _domain=0, _classname=item.classname)
        return datum

    train, val = [moved(d) for d in full.train_x[:3]], [moved(d) for d in full.val[:2]]
    cache_dir = os.path.join(root, "eurosat", "split_fewshot")
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, "shot_16-seed_3.pkl"), "wb") as f:
        pickle.dump({"train": train, "val": val}, f)
    ds = build(root, "eurosat", shots=16, seed=3)
    assert paths(ds.train_x) == paths(full.train_x[:3]) and paths(ds.val) == paths(full.val[:2])


def test_stale_cache_is_refused(eurosat8):
    root, _ = eurosat8
    full = build(root, "eurosat")
    wrong = Datum(impath=full.train_x[0].impath, label=0, classname="Not A Class")
    os.makedirs(os.path.join(root, "eurosat", "split_fewshot"), exist_ok=True)
    with open(os.path.join(root, "eurosat", "split_fewshot", "shot_1-seed_1.pkl"), "wb") as f:
        pickle.dump({"train": [wrong], "val": [wrong]}, f)
    with pytest.raises(UserError, match="does not match the current split"):
        build(root, "eurosat", shots=1)


def test_imagenet_fewshot_caches_train_only(tmp_path):
    make_fixture("imagenet", tmp_path, n_per_class=3, n_classes=6)
    random.seed(1)
    ds = build(tmp_path, "imagenet", shots=2)
    assert len(ds.train_x) == 12 and ds.val is ds.test and len(ds.test) == 18
    assert os.path.isfile(os.path.join(tmp_path, "imagenet", "preprocessed.pkl"))
    with open(os.path.join(tmp_path, "imagenet", "split_fewshot", "shot_2-seed_1.pkl"), "rb") as f:
        assert set(pickle.load(f)) == {"train"}
    base = build(tmp_path, "imagenet", shots=2, subsample="base")  # from the caches now
    assert base.num_classes == 3 and len(base.train_x) == 6 and len(base.test) == 9


def test_fewer_images_than_shots_warns_and_keeps_all(eurosat8):
    root, _ = eurosat8
    with pytest.warns(UserWarning, match="fewer items than shots"):
        ds = build(root, "eurosat", shots=16)
    assert len(ds.train_x) == 80 and len(ds.val) == 40  # every image kept: 8 per class; val draws 4 of 8


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear error each
# ---------------------------------------------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(UserError) as err:
        build(tmp_path, "eurosat")
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "eurosat") in msg and "python -m datasets.prepare eurosat" in msg


def test_missing_split_file_is_an_error_not_a_new_split(tmp_path):
    make_fixture("oxford_pets", tmp_path, n_per_class=1, n_classes=3)
    os.remove(os.path.join(tmp_path, "oxford_pets", "split_zhou_OxfordPets.json"))
    with pytest.raises(UserError) as err:
        build(tmp_path, "oxford_pets")
    assert "split_zhou_OxfordPets.json" in str(err.value) and "--generate-split" in str(err.value)
    assert not os.path.exists(os.path.join(tmp_path, "oxford_pets", "split_zhou_OxfordPets.json"))


def test_missing_images_are_named(tmp_path):
    make_fixture("dtd", tmp_path, n_per_class=1, n_classes=3)
    gone = os.path.join(tmp_path, "dtd", "images", "blotchy", "blotchy_0002.jpg")
    os.remove(gone)
    with pytest.raises(UserError, match="1 of the 3 images") as err:
        build(tmp_path, "dtd")
    assert gone in str(err.value)


def test_imagenet_without_classnames_says_where_to_get_it(tmp_path):
    make_fixture("imagenet", tmp_path, n_per_class=1, n_classes=2)
    os.remove(os.path.join(tmp_path, "imagenet", "classnames.txt"))
    with pytest.raises(UserError, match="1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"):
        build(tmp_path, "imagenet")


def test_bad_subsample_value(all_fixtures):
    root, _ = all_fixtures
    with pytest.raises(UserError, match="SUBSAMPLE_CLASSES"):
        build(root, "eurosat", subsample="novel")


def test_unparsable_split_file(tmp_path):
    make_fixture("eurosat", tmp_path, n_per_class=1, n_classes=2)
    with open(os.path.join(tmp_path, "eurosat", "split_zhou_EuroSAT.json"), "w") as f:
        f.write('{"train": [')
    with pytest.raises(UserError, match="not valid JSON"):
        build(tmp_path, "eurosat")


# ---------------------------------------------------------------------------------------------------------------
# CoOp-compatible helpers
# ---------------------------------------------------------------------------------------------------------------
def test_coop_static_helpers_are_available():
    from datasets.dtd import DescribableTextures
    from datasets.imagenet import ImageNet
    from datasets.oxford_pets import OxfordPets

    for name in ("read_split", "save_split", "split_trainval", "subsample_classes"):
        assert callable(getattr(OxfordPets, name))
    assert callable(DescribableTextures.read_and_split_data) and callable(ImageNet.read_classnames)


def test_split_round_trip_and_subsample_all(eurosat8, tmp_path):
    root, _ = eurosat8
    ds = build(root, "eurosat")
    image_dir = os.path.join(root, "eurosat", "2750")
    out = os.path.join(tmp_path, "copy", "split.json")
    save_split(ds.train_x, ds.val, ds.test, out, image_dir)
    train, val, test = read_split(out, image_dir)
    assert [(d.impath, d.label, d.classname) for d in train] == [(d.impath, d.label, d.classname) for d in ds.train_x]
    assert subsample_classes(train, val, test, subsample="all") == (train, val, test)
    shutil.rmtree(os.path.join(tmp_path, "copy"))
