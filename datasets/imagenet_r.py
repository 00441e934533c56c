"""ImageNet-R (Hendrycks et al.): 30,000 renditions (art, cartoons, ...) of 200 ImageNet classes, test only.

Layout: ``imagenet-rendition/imagenet-r/<wnid>/*.jpg`` (its ``README.txt`` is ignored) and
``imagenet-rendition/classnames.txt`` (a copy of ImageNet's).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    config_name = "imagenet_r"
    full_num_classes = 200
