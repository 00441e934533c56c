"""Describable Textures (Cimpoi et al.): 5,640 images of 47 texture classes, in ``dtd/images/<class>/``."""
from dassl.data.datasets import DATASET_REGISTRY

from .splits import FolderSplitDataset


@DATASET_REGISTRY.register()
class DescribableTextures(FolderSplitDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    config_name = "dtd"
    full_num_classes = 47
