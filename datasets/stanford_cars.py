"""Stanford Cars (Krause et al.): 16,185 images of 196 car models.

Layout: ``stanford_cars/{cars_train,cars_test}/<00001>.jpg``, ``cars_test_annos_withlabels.mat`` and
``devkit/{cars_train_annos,cars_meta}.mat`` (the ``.mat`` files only for the fall-back split). The split file's
paths are relative to ``stanford_cars/`` (``cars_train/00001.jpg``). Class names put the year first
(``2012 Tesla Model S``).
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import TrainvalTestDataset


@DATASET_REGISTRY.register()
class StanfordCars(TrainvalTestDataset):
    dataset_dir = "stanford_cars"
    image_subdir = ""
    split_file = "split_zhou_StanfordCars.json"
    split_relative_to = "dataset_dir"
    config_name = "stanford_cars"
    full_num_classes = 196

    @classmethod
    def read_trainval_test(cls, dataset_dir):
        meta_file = osp.join(dataset_dir, "devkit", "cars_meta.mat")
        trainval_file = osp.join(dataset_dir, "devkit", "cars_train_annos.mat")
        test_file = osp.join(dataset_dir, "cars_test_annos_withlabels.mat")
        return (
            cls._read_mat(dataset_dir, "cars_train", trainval_file, meta_file),
            cls._read_mat(dataset_dir, "cars_test", test_file, meta_file),
        )

    @staticmethod
    def _read_mat(dataset_dir, image_dir, anno_file, meta_file):
        from scipy.io import loadmat

        annos = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        items = []
        for anno in annos:
            label = int(anno["class"][0, 0]) - 1
            names = str(class_names[label][0]).split(" ")
            names.insert(0, names.pop(-1))  # "Make Model 2012" -> "2012 Make Model"
            impath = osp.join(dataset_dir, image_dir, str(anno["fname"][0]))
            items.append(Datum(impath=impath, label=label, classname=" ".join(names)))
        return items

    def read_data(self, image_dir, anno_file, meta_file):
        """CoOp's instance method: the items of one annotation ``.mat`` file."""
        return self._read_mat(self.dataset_dir, image_dir, anno_file, meta_file)
