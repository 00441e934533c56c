"""Oxford-IIIT Pets (Parkhi et al.): 7,349 images of 37 cat and dog breeds.

Layout: ``oxford_pets/images/<Breed>_<n>.jpg`` and ``oxford_pets/annotations/{trainval,test}.txt`` (the latter
only for the fall-back split). Class names are the lower-cased breeds (``american_pit_bull_terrier``).
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import TrainvalTestDataset, read_lines


@DATASET_REGISTRY.register()
class OxfordPets(TrainvalTestDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    config_name = "oxford_pets"
    full_num_classes = 37

    @classmethod
    def read_trainval_test(cls, dataset_dir):
        return cls._read_annotations(dataset_dir, "trainval.txt"), cls._read_annotations(dataset_dir, "test.txt")

    @classmethod
    def _read_annotations(cls, dataset_dir, split_file):
        """Items of ``annotations/<split_file>``: lines ``<Breed>_<n> <class id> <species> <breed id>``."""
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        items = []
        for line in read_lines(osp.join(dataset_dir, "annotations", split_file)):
            imname, label, _species, _ = line.split(" ")
            breed = "_".join(imname.split("_")[:-1]).lower()
            items.append(Datum(impath=osp.join(image_dir, imname + ".jpg"), label=int(label) - 1, classname=breed))
        return items

    def read_data(self, split_file):
        """CoOp's instance method: the items of ``annotations/<split_file>``."""
        return self._read_annotations(self.dataset_dir, split_file)
