"""ImageNet-A (Hendrycks et al.): 7,500 natural adversarial images of 200 ImageNet classes, test only.

Layout: ``imagenet-adversarial/imagenet-a/<wnid>/*.jpg`` (its ``README.txt`` is ignored) and
``imagenet-adversarial/classnames.txt`` (a copy of ImageNet's).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    config_name = "imagenet_a"
    full_num_classes = 200
