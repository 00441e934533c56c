"""SUN397 (Xiao et al.): 108,754 scene images of 397 classes, in ``sun397/SUN397/<letter>/<class>[/<sub>]/``.

``ClassName.txt`` and ``Training_01.txt``/``Testing_01.txt`` (from ``Partitions.zip``) are needed only for the
fall-back split. Class names read the path backwards without the letter: ``/b/bakery/shop`` -> ``shop bakery``.
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import TrainvalTestDataset, read_lines


@DATASET_REGISTRY.register()
class SUN397(TrainvalTestDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    config_name = "sun397"
    full_num_classes = 397

    @classmethod
    def read_trainval_test(cls, dataset_dir):
        classnames = [line[1:] for line in read_lines(osp.join(dataset_dir, "ClassName.txt"))]  # drop the "/"
        cname2lab = {c: i for i, c in enumerate(classnames)}
        return tuple(cls._read_list(dataset_dir, cname2lab, name) for name in ("Training_01.txt", "Testing_01.txt"))

    @classmethod
    def _read_list(cls, dataset_dir, cname2lab, text_file):
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        items = []
        for line in read_lines(osp.join(dataset_dir, text_file)):
            imname = line[1:]  # drop the leading "/"
            classname = osp.dirname(imname)
            names = classname.split("/")[1:][::-1]  # drop the letter; "indoor"/"outdoor" first
            items.append(Datum(impath=osp.join(image_dir, imname), label=cname2lab[classname], classname=" ".join(names)))
        return items

    def read_data(self, cname2lab, text_file):
        """CoOp's instance method: the items listed in ``text_file``."""
        return self._read_list(self.dataset_dir, cname2lab, text_file)
