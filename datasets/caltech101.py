"""Caltech-101 (Fei-Fei et al.): 100 object classes in ``caltech-101/101_ObjectCategories/<class>/``.

As in CoOp, ``BACKGROUND_Google`` and ``Faces_easy`` are not classes, and four folder names are made singular
or lower case (:data:`NEW_CNAMES`).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .splits import FolderSplitDataset

IGNORED = ["BACKGROUND_Google", "Faces_easy"]
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(FolderSplitDataset):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    config_name = "caltech101"
    full_num_classes = 100
    ignored_folders = tuple(IGNORED)
    new_cnames = NEW_CNAMES
