"""Food-101 (Bossard et al.): 101,000 images of 101 dishes, in ``food-101/images/<class>/``."""
from dassl.data.datasets import DATASET_REGISTRY

from .splits import FolderSplitDataset


@DATASET_REGISTRY.register()
class Food101(FolderSplitDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
    config_name = "food101"
    full_num_classes = 101
