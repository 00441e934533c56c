"""Caltech-256 (Griffin et al.), as the MPL repository adds it, with its class-name bugs fixed.

Layout: ``caltech-256/256_ObjectCategories/<NNN>.<name>/*.jpg``; the split ``caltech-256/split_huang_Caltech256.json``
is not distributed: the first load (or ``python -m datasets.prepare caltech256``) draws it, 50/20/30 per class
with ``random.Random(SPLIT_SEED)``, and writes it atomically; later loads read it.

Fixes over the MPL code (whose regex ``(\\d\\d\\d).(\\w+)`` cut names at the first hyphen):

* the whole folder name is the class: ``002.american-flag`` -> ``american flag`` (hyphens become spaces,
  except in :data:`KEEP_HYPHEN` words such as ``t-shirt``); the ``-101`` suffix that marks classes shared with
  Caltech-101 is dropped (``251.airplanes-101`` -> ``airplanes``);
* ``257.clutter`` (background images, not an object class) is dropped: 256 classes, labels 0..255;
* per-class split sizes count only image files (the folders hold a few stray non-image files);
* the split does not depend on the run's seed or on the file system's listing order.
"""
import os.path as osp
import random
import warnings

from dassl.data.datasets import DATASET_REGISTRY

from .splits import FolderSplitDataset, read_and_split_data, read_split, save_split

#: Seed of the random generator that draws the generated split (fixed, so every user gets the same split).
SPLIT_SEED = 1
IGNORED = ["257.clutter"]
#: Names whose hyphen is part of the word.
KEEP_HYPHEN = {"t-shirt", "yo-yo"}


def caltech256_classname(folder):
    """``"002.american-flag"`` -> ``"american flag"``; ``"251.airplanes-101"`` -> ``"airplanes"``."""
    name = folder.split(".", 1)[1] if "." in folder else folder
    if name.endswith("-101"):
        name = name[: -len("-101")]
    return name if name in KEEP_HYPHEN else name.replace("-", " ")


@DATASET_REGISTRY.register()
class Caltech256(FolderSplitDataset):
    dataset_dir = "caltech-256"
    image_subdir = "256_ObjectCategories"
    split_file = "split_huang_Caltech256.json"
    config_name = "caltech256"
    full_num_classes = 256
    ignored_folders = tuple(IGNORED)

    @classmethod
    def generate_split(cls, dataset_dir, seed=SPLIT_SEED):
        return read_and_split_data(
            cls.split_prefix(dataset_dir),
            ignored=IGNORED,
            new_cnames=caltech256_classname,
            rng=random.Random(seed),
        )

    @classmethod
    def required_files(cls):
        return []  # the split file is drawn on first use

    @classmethod
    def write_split(cls, dataset_dir):
        """Draw the split (seed :data:`SPLIT_SEED`) and save it as ``split_huang_Caltech256.json``."""
        print(f"Generating the Caltech256 split (50/20/30 per class, seed {SPLIT_SEED})")
        train, val, test = cls.generate_split(dataset_dir)
        save_split(train, val, test, osp.join(dataset_dir, cls.split_file), cls.split_prefix(dataset_dir))

    def split_file_missing(self):
        try:
            self.write_split(self.dataset_dir)
        except OSError as err:  # a read-only dataset folder: use the (deterministic) split without saving it
            warnings.warn(f"could not write {self.split_path} ({err}); using the drawn split without saving it")
            return self.generate_split(self.dataset_dir)
        return read_split(self.split_path, self.image_dir)
