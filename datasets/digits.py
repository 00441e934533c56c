"""Digits: scikit-learn's 1,797 handwritten digits (10 classes) in the CoOp layout; the offline demo's dataset.

The images ship inside scikit-learn (``sklearn.datasets.load_digits``: 8x8 pixels, 17 grey levels, the UCI
"Optical Recognition of Handwritten Digits" test set), so the dataset needs no download. On first use
:func:`build` writes them to disk in the layout every other dataset has, and from then on the class reads them
through the shared split code like any other dataset::

    <root>/digits/images/<classname>/<index>.png     # e.g. digits/images/seven/0007.png (index in load_digits)
    <root>/digits/split_digits.json                  # {"train"|"val"|"test": [[relpath, label, classname], ...]}
    <root>/digits/split_fewshot/shot_K-seed_S.pkl    # few-shot caches, as for the other datasets

Images: ink is dark on white paper, ``grey = 255 - round(value * 255 / 16)``; the 8x8 image is upsampled to
32x32 with PIL's bilinear filter (``Image.BILINEAR``) and stored as RGB PNG.

Split: per class, in ``load_digits`` order shuffled by ``random.Random(SPLIT_SEED)``, 50% train, 20% val and
30% test (``round``, so 898 / 359 / 540 images), as in CoOp's DTD split.

Class names are the words ``zero`` ... ``nine`` (label ``i`` is the word for ``i``), so base classes are 0-4 and
new classes 5-9 under the base-to-new protocol's rule (first ``ceil(n/2)`` labels).

Writing is crash-safe: the images go to a temporary folder that is renamed into place once complete, with a
marker file (:data:`MARKER`) inside; the split file is written atomically afterwards. A folder without the marker,
a missing split file or a missing image (a build that was interrupted, or files deleted by hand) is rebuilt.
"""
import json
import os
import os.path as osp
import random
import shutil
import tempfile

import numpy as np
from dassl.data.datasets import DATASET_REGISTRY
from PIL import Image

from .errors import UserError
from .splits import SplitDataset, atomic_write

__all__ = ["Digits", "CLASSNAMES", "SPLIT_SEED", "IMAGE_SIZE", "digit_image", "load_sklearn_digits", "build"]

#: label -> class name
CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: seed of the train/val/test split (a private ``random.Random``; Python's global ``random`` is not touched)
SPLIT_SEED = 1
#: side of the stored images
IMAGE_SIZE = 32
#: fractions of each class in train and val (the rest is test)
P_TRAIN, P_VAL = 0.5, 0.2
#: written inside ``images/`` once every image is there; its content identifies the layout version
MARKER = ".complete"
_MARKER_TEXT = json.dumps({"format": 1, "images": 1797, "size": IMAGE_SIZE, "resample": "bilinear", "ink": "dark"})

DATASET_DIR = "digits"
IMAGE_SUBDIR = "images"
SPLIT_FILE = "split_digits.json"


def load_sklearn_digits():
    """``(images, labels)``: float arrays (1797, 8, 8) with values 0..16, and int labels (1797,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target.astype(int)


def digit_image(pixels, size=IMAGE_SIZE):
    """One 8x8 ``load_digits`` array (values 0..16) as the ``size`` x ``size`` RGB image the dataset stores."""
    grey = (255 - np.round(np.asarray(pixels) * 255 / 16)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


def _relpath(index, label):
    return f"{CLASSNAMES[label]}/{index:04d}.png"


def split_entries(labels, seed=SPLIT_SEED):
    """``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` for the labels of ``load_digits``."""
    rng = random.Random(seed)
    split = {"train": [], "val": [], "test": []}
    for label in range(len(CLASSNAMES)):
        idxs = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idxs)
        n_train, n_val = round(len(idxs) * P_TRAIN), round(len(idxs) * P_VAL)
        parts = {"train": idxs[:n_train], "val": idxs[n_train:n_train + n_val], "test": idxs[n_train + n_val:]}
        for key, part in parts.items():
            split[key].extend([_relpath(i, label), label, CLASSNAMES[label]] for i in part)
    return split


def _images_complete(image_dir, relpaths):
    marker = osp.join(image_dir, MARKER)
    if not osp.isfile(marker):
        return False
    with open(marker) as f:
        if f.read() != _MARKER_TEXT:
            return False
    return all(osp.isfile(osp.join(image_dir, rel)) for rel in relpaths)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build(dataset_dir):
    """Write the images, marker and split file under ``dataset_dir`` unless they are already there and complete.

    Safe to run from several processes at once: each writes its own temporary folder, and the first to finish
    renames it into place (the content is the same).
    """
    images, labels = load_sklearn_digits()
    relpaths = [_relpath(i, y) for i, y in enumerate(labels)]
    image_dir = osp.join(dataset_dir, IMAGE_SUBDIR)
    if not _images_complete(image_dir, relpaths):
        print(f"Writing the digits dataset (scikit-learn's load_digits) to {image_dir}")
        try:
            os.makedirs(dataset_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".images.", suffix=".tmp", dir=dataset_dir)
        except OSError as err:
            raise UserError(
                f"cannot write the digits dataset into {dataset_dir} ({err}); set DATASET.ROOT (--root) to a "
                "folder you can write to, or write it there once with a user who can"
            ) from err
        try:
            for name in CLASSNAMES:
                os.makedirs(osp.join(tmp, name))
            for pixels, rel in zip(images, relpaths):
                digit_image(pixels).save(osp.join(tmp, rel))
            with open(osp.join(tmp, MARKER), "w") as f:
                f.write(_MARKER_TEXT)
            if osp.isdir(image_dir) and not _images_complete(image_dir, relpaths):
                shutil.rmtree(image_dir)  # left by an interrupted build, or files deleted by hand
            try:
                os.rename(tmp, image_dir)
            except OSError:
                if not _images_complete(image_dir, relpaths):  # else another process finished first
                    raise
        finally:
            if osp.isdir(tmp):
                shutil.rmtree(tmp)
    split_path = osp.join(dataset_dir, SPLIT_FILE)
    split = split_entries(labels.tolist())
    if _read_json(split_path) != split:
        atomic_write(split_path, lambda f: json.dump(split, f, indent=4, separators=(",", ": ")))


@DATASET_REGISTRY.register()
class Digits(SplitDataset):
    """scikit-learn's handwritten digits (10 classes), written to ``DATASET.ROOT/digits`` on first use."""

    dataset_dir = DATASET_DIR
    image_subdir = IMAGE_SUBDIR
    split_file = SPLIT_FILE
    config_name = "digits"
    full_num_classes = len(CLASSNAMES)
    #: nothing to download: ``python -m datasets.prepare digits`` (and ``--check``) just builds it
    builds_itself = True

    def __init__(self, cfg):
        build(osp.join(osp.abspath(osp.expanduser(cfg.DATASET.ROOT)), self.dataset_dir))
        super().__init__(cfg)

    @classmethod
    def generate_split(cls, dataset_dir):
        """The fixed split (it does not depend on Python's global ``random``)."""
        build(dataset_dir)
        return cls.read_split(osp.join(dataset_dir, cls.split_file), osp.join(dataset_dir, cls.image_subdir))
