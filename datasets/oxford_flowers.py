"""Oxford Flowers-102 (Nilsback and Zisserman): 8,189 images of 102 flower species.

Layout: ``oxford_flowers/jpg/image_<00001>.jpg``, ``imagelabels.mat`` (1-based label of each image) and
``cat_to_name.json`` (label -> name; both only for the fall-back split).
"""
import os.path as osp
import random
from collections import defaultdict

from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import read_json

from .errors import UserError

from .splits import SplitDataset


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    config_name = "oxford_flowers"
    full_num_classes = 102

    @classmethod
    def generate_split(cls, dataset_dir, p_trn=0.5, p_val=0.2):
        """Per class, 50% train, 20% val, 30% test of the images listed in ``imagelabels.mat``."""
        from scipy.io import loadmat

        image_dir = osp.join(dataset_dir, cls.image_subdir)
        tracker = defaultdict(list)
        labels = loadmat(osp.join(dataset_dir, "imagelabels.mat"))["labels"][0]
        for i, label in enumerate(labels):
            tracker[int(label)].append(osp.join(image_dir, f"image_{str(i + 1).zfill(5)}.jpg"))

        print("Splitting data into 50% train, 20% val, and 30% test")
        lab2cname = read_json(osp.join(dataset_dir, "cat_to_name.json"))
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train = round(n_total * p_trn)
            n_val = round(n_total * p_val)
            if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
                raise UserError(f"Flowers class {label} has {n_total} image(s): too few for a 50/20/30 split")
            cname = lab2cname[str(label)]
            parts = (impaths[:n_train], impaths[n_train:n_train + n_val], impaths[n_train + n_val:])
            for out, ims in zip((train, val, test), parts):
                out.extend(Datum(impath=im, label=label - 1, classname=cname) for im in ims)
        return train, val, test
