"""ImageNetV2 (Recht et al.), matched-frequency: 10,000 new test images of the 1,000 ImageNet classes.

Layout: ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg`` (folder = label = line of
``classnames.txt``) and ``imagenetv2/classnames.txt`` (a copy of ImageNet's).
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY
from .errors import UserError

from .imagenet import ImageNetVariant
from .splits import list_images


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    config_name = "imagenetv2"
    full_num_classes = 1000

    @classmethod
    def class_folders(cls, image_dir, classnames):
        return [str(label) for label in range(len(classnames))]

    @classmethod
    def folder_entries(cls, image_dir, classnames, folders, text_file):
        wnids = list(classnames.keys())
        missing = [f for f in folders if not osp.isdir(osp.join(image_dir, f))]
        if missing:
            raise UserError(
                f"ImageNetV2: {len(missing)} of the {len(folders)} class folders of {image_dir} are missing "
                f"(expected 0..{len(folders) - 1}, one per line of {text_file}): {', '.join(missing[:5])}"
            )
        entries = []
        for label, folder in enumerate(folders):
            class_dir = osp.join(image_dir, folder)
            cname = classnames[wnids[label]]
            entries.extend((osp.join(class_dir, im), label, cname) for im in list_images(class_dir))
        return entries
