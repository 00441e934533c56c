"""SUN397 (Xiao et al.): 108,754 scene images of 397 classes, in ``sun397/SUN397/<letter>/<class>[/<sub>]/``.

``ClassName.txt`` and ``Training_01.txt``/``Testing_01.txt`` (from ``Partitions.zip``) are needed only for the
fall-back split. Class names read the path backwards without the letter: ``/b/bakery/shop`` -> ``shop bakery``.
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import SplitDataset, split_trainval


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    config_name = "sun397"
    full_num_classes = 397

    @classmethod
    def generate_split(cls, dataset_dir):
        with open(osp.join(dataset_dir, "ClassName.txt"), "r") as f:
            classnames = [line.strip()[1:] for line in f if line.strip()]  # drop the leading "/"
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = cls._read_list(dataset_dir, cname2lab, "Training_01.txt")
        test = cls._read_list(dataset_dir, cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    @classmethod
    def _read_list(cls, dataset_dir, cname2lab, text_file):
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        items = []
        with open(osp.join(dataset_dir, text_file), "r") as f:
            for line in f:
                imname = line.strip()[1:]  # drop the leading "/"
                if not imname:
                    continue
                classname = osp.dirname(imname)
                label = cname2lab[classname]
                names = classname.split("/")[1:][::-1]  # drop the letter; "indoor"/"outdoor" first
                items.append(Datum(impath=osp.join(image_dir, imname), label=label, classname=" ".join(names)))
        return items

    def read_data(self, cname2lab, text_file):
        """CoOp's instance method: the items listed in ``text_file``."""
        return self._read_list(self.dataset_dir, cname2lab, text_file)
