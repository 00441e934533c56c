"""Tiny copies of the datasets' real on-disk layouts, for tests: ``python -m datasets.fixtures <name|all> --root DIR``.

:func:`make_fixture` writes, under ``root``, what the dataset class and ``datasets.prepare`` read: the folders,
the split file, and the raw annotation files the fall-back splits read (``.mat``, ``.txt``, ``.json``), with
``n_per_class`` small images per class in each of train, val and test. Images are JPEG (PNG never occurs in
these datasets) with the real extensions (``.jpg``, ``.JPEG``, ``.jpeg``); each one's colour depends on its class,
so a model can learn from them.

Class names: the real ones where they are cheap to embed (EuroSAT 10, OxfordPets 37, DTD 47, Caltech101 100,
Food101 101), otherwise generated names in the real format; by default with the real number of classes, so
class counts and base/new sizes can be tested. ``n_classes`` takes the first ``n_classes`` classes instead.

Example::

    from datasets.fixtures import make_fixture
    info = make_fixture("eurosat", tmp_path)   # tmp_path/eurosat/..., DATASET.ROOT = tmp_path
    info.classnames[:2], info.sizes            # ['Annual Crop Land', 'Forest'], {'train': 20, 'val': 20, 'test': 20}
"""
import argparse
import io
import json
import os
import os.path as osp
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .caltech101 import IGNORED as CALTECH101_IGNORED
from .caltech101 import NEW_CNAMES as CALTECH101_CNAMES
from .caltech256 import caltech256_classname
from .eurosat import NEW_CNAMES as EUROSAT_CNAMES

__all__ = ["FixtureInfo", "make_fixture", "FIXTURE_NAMES", "main"]

PETS_BREEDS = [
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal", "Birman",
    "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll",
    "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx",
    "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
]  # capitalised: cats (species 1), lower case: dogs (species 2), as in the file names
DTD_CLASSES = [
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved",
    "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley",
    "perforated", "pitted", "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled",
    "sprinkled", "stained", "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven",
    "wrinkled", "zigzagged",
]
CALTECH101_FOLDERS = [
    "accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain",
    "brontosaurus", "buddha", "butterfly", "camera", "cannon", "car_side", "ceiling_fan", "cellphone", "chair",
    "chandelier", "cougar_body", "cougar_face", "crab", "crayfish", "crocodile", "crocodile_head", "cup",
    "dalmatian", "dollar_bill", "dolphin", "dragonfly", "electric_guitar", "elephant", "emu", "euphonium", "ewer",
    "Faces", "ferry", "flamingo", "flamingo_head", "garfield", "gerenuk", "gramophone", "grand_piano",
    "hawksbill", "headphone", "hedgehog", "helicopter", "ibis", "inline_skate", "joshua_tree", "kangaroo", "ketch",
    "lamp", "laptop", "Leopards", "llama", "lobster", "lotus", "mandolin", "mayfly", "menorah", "metronome",
    "minaret", "Motorbikes", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon", "pizza", "platypus",
    "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors", "scorpion", "sea_horse",
    "snoopy", "soccer_ball", "stapler", "starfish", "stegosaurus", "stop_sign", "strawberry", "sunflower", "tick",
    "trilobite", "umbrella", "watch", "water_lilly", "wheelchair", "wild_cat", "windsor_chair", "wrench",
    "yin_yang",
]  # the 100 class folders (BACKGROUND_Google and Faces_easy are written too, and ignored by the reader)
FOOD101_CLASSES = [
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
    "bibimbap", "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad", "cannoli", "caprese_salad",
    "carrot_cake", "ceviche", "cheese_plate", "cheesecake", "chicken_curry", "chicken_quesadilla",
    "chicken_wings", "chocolate_cake", "chocolate_mousse", "churros", "clam_chowder", "club_sandwich",
    "crab_cakes", "creme_brulee", "croque_madame", "cup_cakes", "deviled_eggs", "donuts", "dumplings", "edamame",
    "eggs_benedict", "escargots", "falafel", "filet_mignon", "fish_and_chips", "foie_gras", "french_fries",
    "french_onion_soup", "french_toast", "fried_calamari", "fried_rice", "frozen_yogurt", "garlic_bread",
    "gnocchi", "greek_salad", "grilled_cheese_sandwich", "grilled_salmon", "guacamole", "gyoza", "hamburger",
    "hot_and_sour_soup", "hot_dog", "huevos_rancheros", "hummus", "ice_cream", "lasagna", "lobster_bisque",
    "lobster_roll_sandwich", "macaroni_and_cheese", "macarons", "miso_soup", "mussels", "nachos", "omelette",
    "onion_rings", "oysters", "pad_thai", "paella", "pancakes", "panna_cotta", "peking_duck", "pho", "pizza",
    "pork_chop", "poutine", "prime_rib", "pulled_pork_sandwich", "ramen", "ravioli", "red_velvet_cake",
    "risotto", "samosa", "sashimi", "scallops", "seaweed_salad", "shrimp_and_grits", "spaghetti_bolognese",
    "spaghetti_carbonara", "spring_rolls", "steak", "strawberry_shortcake", "sushi", "tacos", "takoyaki",
    "tiramisu", "tuna_tartare", "waffles",
]
SPLITS = ("train", "val", "test")


@dataclass
class FixtureInfo:
    """What a fixture holds: the dataset folder, class names in label order and the split sizes the class reports."""

    name: str
    root: str
    dataset_dir: str
    classnames: list
    sizes: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.classnames)


class _Writer:
    """Writes small JPEG images whose colour depends on the class, and keeps the bookkeeping of one fixture."""

    VARIANTS = 3  # distinct noisy images per class, reused in turn (encoding is most of the cost)

    def __init__(self, root, size, seed):
        self.root, self.size = root, size
        self.rng = np.random.default_rng(seed)
        self._encoded = {}
        self._dirs = set()
        self._count = 0

    def _jpeg(self, label, index):
        variants = self._encoded.setdefault(label, [])
        if len(variants) < self.VARIANTS:
            base = np.array([(label * 67) % 256, (label * 151 + 80) % 256, (label * 29 + 160) % 256], dtype=np.int16)
            noise = self.rng.integers(-24, 25, size=(self.size, self.size, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            variants.append(buf.getvalue())
            return variants[-1]
        return variants[index % self.VARIANTS]

    def _makedirs(self, folder):
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)

    def image(self, relpath, label):
        path = osp.join(self.root, relpath)
        self._makedirs(osp.dirname(path))
        self._count += 1
        with open(path, "wb") as f:
            f.write(self._jpeg(label, self._count))

    def text(self, relpath, lines):
        path = osp.join(self.root, relpath)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(f"{line}\n" for line in lines))

    def json(self, relpath, obj):
        path = osp.join(self.root, relpath)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=4, separators=(",", ": "))

    def split(self, relpath, split):
        """A ``split_zhou`` file from ``{key: [(relpath, label, classname)]}``."""
        self.json(relpath, {key: [list(e) for e in split[key]] for key in SPLITS})


def _slots(n):
    """``(split, k)`` for the ``n`` images of one class in each split, ``k`` counting 1, 2, ... across splits."""
    return [(key, 1 + i + n * j) for j, key in enumerate(SPLITS) for i in range(n)]


def _pick(names, n_classes, fallback):
    """The first ``n_classes`` of ``names`` (generated with ``fallback(i)`` past the end of the list)."""
    n = len(names) if n_classes is None else n_classes
    return [names[i] if i < len(names) else fallback(i) for i in range(n)]


def _count(n, default):
    return default if n is None else n


# --------------------------------------------------------------------------------------------------------------
# One writer per layout
# --------------------------------------------------------------------------------------------------------------
def _per_class_folders(w, info, image_subdir, folders, cnames, split_file, n, ext=".jpg", prefix=None):
    """Class-folder datasets with a split file: EuroSAT, DTD, Food101, Caltech101."""
    split = {key: [] for key in SPLITS}
    for label, (folder, cname) in enumerate(zip(folders, cnames)):
        for key, k in _slots(n):
            rel = f"{folder}/{(prefix or folder)}_{k:04d}{ext}"
            w.image(osp.join(info.dataset_dir, image_subdir, rel), label)
            split[key].append((rel, label, cname))
    w.split(osp.join(info.dataset_dir, split_file), split)
    return cnames


def _eurosat(w, info, n, n_classes):
    folders = _pick(list(EUROSAT_CNAMES), n_classes, lambda i: f"Class{i}")
    cnames = [EUROSAT_CNAMES.get(f, f) for f in folders]
    return _per_class_folders(w, info, "2750", folders, cnames, "split_zhou_EuroSAT.json", n)


def _dtd(w, info, n, n_classes):
    folders = _pick(DTD_CLASSES, n_classes, lambda i: f"texture{i}")
    return _per_class_folders(w, info, "images", folders, folders, "split_zhou_DescribableTextures.json", n)


def _food101(w, info, n, n_classes):
    folders = _pick(FOOD101_CLASSES, n_classes, lambda i: f"dish_{i}")
    return _per_class_folders(w, info, "images", folders, folders, "split_zhou_Food101.json", n)


def _caltech101(w, info, n, n_classes):
    folders = _pick(CALTECH101_FOLDERS, n_classes, lambda i: f"object_{i}")
    cnames = [CALTECH101_CNAMES.get(f, f) for f in folders]
    for label, folder in enumerate(CALTECH101_IGNORED):  # present on disk, never classes
        for k in range(3):
            w.image(osp.join(info.dataset_dir, "101_ObjectCategories", folder, f"image_{k + 1:04d}.jpg"), label)
    return _per_class_folders(
        w, info, "101_ObjectCategories", folders, cnames, "split_zhou_Caltech101.json", n, prefix="image"
    )


def _oxford_pets(w, info, n, n_classes):
    breeds = _pick(PETS_BREEDS, n_classes, lambda i: f"breed{i}")
    split = {key: [] for key in SPLITS}
    trainval, test = [], []
    for label, breed in enumerate(breeds):
        species = 1 if breed[0].isupper() else 2
        for key, k in _slots(n):
            stem = f"{breed}_{k}"
            w.image(osp.join(info.dataset_dir, "images", stem + ".jpg"), label)
            split[key].append((stem + ".jpg", label, breed.lower()))
            (test if key == "test" else trainval).append(f"{stem} {label + 1} {species} {label + 1}")
    w.text(osp.join(info.dataset_dir, "annotations", "trainval.txt"), trainval)
    w.text(osp.join(info.dataset_dir, "annotations", "test.txt"), test)
    w.split(osp.join(info.dataset_dir, "split_zhou_OxfordPets.json"), split)
    return [b.lower() for b in breeds]


def _oxford_flowers(w, info, n, n_classes):
    from scipy.io import savemat

    names = [f"flower {i + 1}" for i in range(_count(n_classes, 102))]
    split = {key: [] for key in SPLITS}
    labels = []
    for label, name in enumerate(names):
        for key, _ in _slots(n):
            labels.append(label + 1)
            rel = f"image_{len(labels):05d}.jpg"
            w.image(osp.join(info.dataset_dir, "jpg", rel), label)
            split[key].append((rel, label, name))
    savemat(osp.join(w.root, info.dataset_dir, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    w.json(osp.join(info.dataset_dir, "cat_to_name.json"), {str(i + 1): name for i, name in enumerate(names)})
    w.split(osp.join(info.dataset_dir, "split_zhou_OxfordFlowers.json"), split)
    return names


def _stanford_cars(w, info, n, n_classes):
    from scipy.io import savemat

    meta_names = [f"Make{i:03d} Model {2000 + i % 13}" for i in range(_count(n_classes, 196))]
    cnames = [" ".join([m.split(" ")[-1]] + m.split(" ")[:-1]) for m in meta_names]  # year first
    split = {key: [] for key in SPLITS}
    annos = {"cars_train": [], "cars_test": []}
    for label, cname in enumerate(cnames):
        for key, _ in _slots(n):
            folder = "cars_test" if key == "test" else "cars_train"
            fname = f"{len(annos[folder]) + 1:05d}.jpg"
            annos[folder].append((fname, label + 1))
            w.image(osp.join(info.dataset_dir, folder, fname), label)
            split[key].append((f"{folder}/{fname}", label, cname))

    def _struct(items):
        arr = np.zeros((1, len(items)), dtype=[("fname", object), ("class", object)])
        for i, (fname, cls) in enumerate(items):
            arr[0, i] = (fname, np.array([[cls]], dtype=np.uint8))
        return arr

    base = osp.join(w.root, info.dataset_dir)
    os.makedirs(osp.join(base, "devkit"), exist_ok=True)
    savemat(osp.join(base, "devkit", "cars_train_annos.mat"), {"annotations": _struct(annos["cars_train"])})
    savemat(osp.join(base, "cars_test_annos_withlabels.mat"), {"annotations": _struct(annos["cars_test"])})
    class_names = np.empty((1, len(meta_names)), dtype=object)
    for i, m in enumerate(meta_names):
        class_names[0, i] = m
    savemat(osp.join(base, "devkit", "cars_meta.mat"), {"class_names": class_names})
    w.split(osp.join(info.dataset_dir, "split_zhou_StanfordCars.json"), split)
    return cnames


def _sun397(w, info, n, n_classes):
    paths = []  # class path without the leading "/", e.g. "c/class_004/indoor"
    for i in range(_count(n_classes, 397)):
        name = f"class_{i:03d}"
        paths.append(f"{name[0]}/{name}/{'indoor' if i % 2 else 'outdoor'}" if i % 5 == 0 else f"{name[0]}/{name}")
    cnames = [" ".join(p.split("/")[1:][::-1]) for p in paths]
    split = {key: [] for key in SPLITS}
    training, testing = [], []
    for label, (path, cname) in enumerate(zip(paths, cnames)):
        for key, k in _slots(n):
            rel = f"{path}/sun_{label:04d}{k:04d}.jpg"
            w.image(osp.join(info.dataset_dir, "SUN397", rel), label)
            split[key].append((rel, label, cname))
            (testing if key == "test" else training).append("/" + rel)
    w.text(osp.join(info.dataset_dir, "ClassName.txt"), ["/" + p for p in paths])
    w.text(osp.join(info.dataset_dir, "Training_01.txt"), training)
    w.text(osp.join(info.dataset_dir, "Testing_01.txt"), testing)
    w.split(osp.join(info.dataset_dir, "split_zhou_SUN397.json"), split)
    return cnames


def _ucf101(w, info, n, n_classes):
    actions = [f"Do{i:03d}Some{chr(65 + i % 26)}thing" for i in range(_count(n_classes, 101))]
    cnames = ["_".join(re.findall("[A-Z][^A-Z]*", a)) for a in actions]
    split = {key: [] for key in SPLITS}
    trainlist, testlist = [], []
    for label, (action, cname) in enumerate(zip(actions, cnames)):
        for key, k in _slots(n):
            stem = f"v_{action}_g{k:02d}_c01"
            w.image(osp.join(info.dataset_dir, "UCF-101-midframes", cname, stem + ".jpg"), label)
            split[key].append((f"{cname}/{stem}.jpg", label, cname))
            if key == "test":
                testlist.append(f"{action}/{stem}.avi")
            else:
                trainlist.append(f"{action}/{stem}.avi {label + 1}")
    w.text(osp.join(info.dataset_dir, "ucfTrainTestlist", "classInd.txt"), [f"{i + 1} {a}" for i, a in enumerate(actions)])
    w.text(osp.join(info.dataset_dir, "ucfTrainTestlist", "trainlist01.txt"), trainlist)
    w.text(osp.join(info.dataset_dir, "ucfTrainTestlist", "testlist01.txt"), testlist)
    w.split(osp.join(info.dataset_dir, "split_zhou_UCF101.json"), split)
    return cnames


def _fgvc_aircraft(w, info, n, n_classes):
    variants = [f"Model-{i:03d} {chr(65 + i % 26)}" for i in range(_count(n_classes, 100))]
    lists = {key: [] for key in SPLITS}
    image_id = 1000000
    for label, variant in enumerate(variants):
        for key, _ in _slots(n):
            image_id += 1
            w.image(osp.join(info.dataset_dir, "images", f"{image_id:07d}.jpg"), label)
            lists[key].append(f"{image_id:07d} {variant}")
    w.text(osp.join(info.dataset_dir, "variants.txt"), variants)
    for key in SPLITS:
        w.text(osp.join(info.dataset_dir, f"images_variant_{key}.txt"), lists[key])
    return variants


def _imagenet_classes(n_classes):
    n = _count(n_classes, 1000)
    return [(f"n{1440764 + 7 * i:08d}", f"imagenet class {i}") for i in range(n)]


def _imagenet(w, info, n, n_classes):
    classes = _imagenet_classes(n_classes)
    w.text(osp.join(info.dataset_dir, "classnames.txt"), [f"{wnid} {name}" for wnid, name in classes])
    val_index = 0
    for label, (wnid, _) in enumerate(classes):
        for k in range(n):
            w.image(osp.join(info.dataset_dir, "images", "train", wnid, f"{wnid}_{k + 1}.JPEG"), label)
            val_index += 1
            w.image(osp.join(info.dataset_dir, "images", "val", wnid, f"ILSVRC2012_val_{val_index:08d}.JPEG"), label)
    return [name for _, name in classes]


def _imagenet_variant(w, info, n, n_classes, image_subdir, ext, subset=None, by_label=False):
    """ImageNet-V2 (``by_label``: folders 0..n-1), -Sketch (all classes), -A/-R (``subset`` classes, every 5th)."""
    classes = _imagenet_classes(None if subset else n_classes)
    w.text(osp.join(info.dataset_dir, "classnames.txt"), [f"{wnid} {name}" for wnid, name in classes])
    if subset:
        classes = classes[:: len(classes) // subset][: _count(n_classes, subset)]
        w.text(osp.join(info.dataset_dir, image_subdir, "README.txt"), ["not a class folder"])
    for label, (wnid, _) in enumerate(classes):
        folder = str(label) if by_label else wnid
        for k in range(n):
            w.image(osp.join(info.dataset_dir, image_subdir, folder, f"{k}{ext}"), label)
    return [name for _, name in classes]


def _caltech256(w, info, n, n_classes):
    known = {1: "ak47", 2: "american-flag", 3: "backpack", 4: "baseball-bat", 232: "t-shirt", 249: "yo-yo",
             251: "airplanes-101", 252: "car-side-101", 253: "faces-easy-101", 254: "greyhound",
             255: "tennis-shoes", 256: "toad"}
    count = _count(n_classes, 256)
    folders = [f"{i:03d}.{known.get(i, f'object-{i}')}" for i in range(1, count + 1)] + ["257.clutter"]
    for label, folder in enumerate(folders):
        for k in range(3 * n):
            w.image(osp.join(info.dataset_dir, "256_ObjectCategories", folder, f"{folder[:3]}_{k + 1:04d}.jpg"), label)
    w.text(osp.join(info.dataset_dir, "256_ObjectCategories", folders[0], "RENAME2"), ["a stray non-image file"])
    return [caltech256_classname(f) for f in folders[:-1]]


_WRITERS = {
    "eurosat": _eurosat,
    "dtd": _dtd,
    "food101": _food101,
    "caltech101": _caltech101,
    "oxford_pets": _oxford_pets,
    "oxford_flowers": _oxford_flowers,
    "stanford_cars": _stanford_cars,
    "sun397": _sun397,
    "ucf101": _ucf101,
    "fgvc_aircraft": _fgvc_aircraft,
    "imagenet": _imagenet,
    "imagenetv2": lambda w, i, n, c: _imagenet_variant(
        w, i, n, c, "imagenetv2-matched-frequency-format-val", ".jpeg", by_label=True
    ),
    "imagenet_sketch": lambda w, i, n, c: _imagenet_variant(w, i, n, c, "images", ".JPEG"),
    "imagenet_a": lambda w, i, n, c: _imagenet_variant(w, i, n, c, "imagenet-a", ".jpg", subset=200),
    "imagenet_r": lambda w, i, n, c: _imagenet_variant(w, i, n, c, "imagenet-r", ".jpg", subset=200),
    "caltech256": _caltech256,
}
FIXTURE_NAMES = tuple(_WRITERS)


def _sizes(name, n, num_classes):
    if name in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        return {"train": num_classes * n, "val": 0, "test": num_classes * n}
    if name == "imagenet":
        return {"train": num_classes * n, "val": num_classes * n, "test": num_classes * n}
    if name == "caltech256":  # 3n images per class, split 50/20/30 with Python's rounding
        n_train, n_val = round(3 * n * 0.5), round(3 * n * 0.2)
        return {"train": num_classes * n_train, "val": num_classes * n_val, "test": num_classes * (3 * n - n_train - n_val)}
    return {key: num_classes * n for key in SPLITS}


def make_fixture(name, root, n_per_class=2, n_classes=None, seed=0, image_size=8):
    """Write a tiny copy of dataset ``name`` (config name, e.g. ``"eurosat"``) under ``root``; returns :class:`FixtureInfo`.

    Args:
        name: one of :data:`FIXTURE_NAMES`.
        root: the data root (``DATASET.ROOT``); the dataset goes into its usual folder below it.
        n_per_class: images per class in each split (train, val, test; ImageNet: train and val; the test-only
            variants: test). Caltech256, whose split is drawn by the reader, gets ``3 * n_per_class`` per class.
            At least 2 for Caltech256 (its 50/20/30 split needs 6 images per class).
        n_classes: number of classes (default: the real dataset's).
        seed: seed of the image noise.
        image_size: side of the square images, in pixels.

    ``info.sizes`` are the split sizes the dataset class reports with all classes and no few-shot sampling;
    ``info.classnames`` the class names in label order.
    """
    if name not in _WRITERS:
        raise ValueError(f"no fixture for {name!r}; choose one of {', '.join(FIXTURE_NAMES)}")
    from .prepare import dataset_class

    cls = dataset_class(name)
    root = osp.abspath(osp.expanduser(str(root)))
    info = FixtureInfo(name=name, root=root, dataset_dir=cls.dataset_dir, classnames=[])
    writer = _Writer(root, image_size, seed)
    info.classnames = _WRITERS[name](writer, info, n_per_class, n_classes)
    info.dataset_dir = osp.join(root, cls.dataset_dir)
    info.sizes = _sizes(name, n_per_class, len(info.classnames))
    return info


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m datasets.fixtures", description=__doc__.split("\n")[0])
    p.add_argument("name", help=f"{', '.join(FIXTURE_NAMES)}, or all")
    p.add_argument("--root", required=True)
    p.add_argument("--n-per-class", type=int, default=2)
    p.add_argument("--n-classes", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=8)
    args = p.parse_args(argv)
    for name in FIXTURE_NAMES if args.name == "all" else [args.name]:
        info = make_fixture(name, args.root, args.n_per_class, args.n_classes, args.seed, args.image_size)
        print(f"{name}: {info.num_classes} classes, {info.sizes} in {info.dataset_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
