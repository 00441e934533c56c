"""FGVC-Aircraft (Maji et al.): 10,000 images of 100 aircraft variants, with its own train/val/test lists.

Layout (the ``data/`` folder of ``fgvc-aircraft-2013b``, renamed): ``fgvc_aircraft/images/<id>.jpg``,
``variants.txt`` (class names, one a line) and ``images_variant_{train,val,test}.txt`` (lines ``<id> <variant>``).
There is no split file: the lists are the split.
"""
import os.path as osp

from .errors import UserError
from dassl.data.datasets import DATASET_REGISTRY

from .splits import SplitDataset, read_lines

SPLIT_LISTS = {"train": "images_variant_train.txt", "val": "images_variant_val.txt", "test": "images_variant_test.txt"}


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    split_file = None
    config_name = "fgvc_aircraft"
    full_num_classes = 100

    @classmethod
    def required_files(cls):
        return ["variants.txt", *SPLIT_LISTS.values()]

    @classmethod
    def image_entries(cls, dataset_dir):
        missing = [name for name in cls.required_files() if not osp.isfile(osp.join(dataset_dir, name))]
        if missing:
            raise UserError(f"FGVCAircraft: missing {', '.join(missing)} in {dataset_dir}")
        classnames = read_lines(osp.join(dataset_dir, "variants.txt"))
        cname2lab = {c: i for i, c in enumerate(classnames)}
        return {key: cls._read_list(dataset_dir, cname2lab, name) for key, name in SPLIT_LISTS.items()}

    @classmethod
    def _read_list(cls, dataset_dir, cname2lab, split_file):
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        entries = []
        for line in read_lines(osp.join(dataset_dir, split_file)):
            imname, _, classname = line.partition(" ")
            if classname not in cname2lab:
                raise UserError(f"{split_file}: variant {classname!r} is not in variants.txt")
            entries.append((osp.join(image_dir, imname + ".jpg"), cname2lab[classname], classname))
        return entries
