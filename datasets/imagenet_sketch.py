"""ImageNet-Sketch (Wang et al.): 50,889 sketches of the 1,000 ImageNet classes, test only.

Layout: ``imagenet-sketch/images/<wnid>/*.JPEG`` and ``imagenet-sketch/classnames.txt`` (a copy of ImageNet's).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
    config_name = "imagenet_sketch"
    full_num_classes = 1000
