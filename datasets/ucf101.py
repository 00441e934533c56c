"""UCF101 (Soomro et al.): the middle frame of each of 13,320 clips of 101 actions.

Layout: ``ucf101/UCF-101-midframes/<Action_Name>/v_<Action>_gXX_cXX.jpg``; ``ucfTrainTestlist/`` (classInd.txt,
trainlist01.txt, testlist01.txt) only for the fall-back split. Class names split the CamelCase action with
underscores (``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``).
"""
import os.path as osp
import re

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import SplitDataset, split_trainval


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    config_name = "ucf101"
    full_num_classes = 101

    @classmethod
    def generate_split(cls, dataset_dir):
        cname2lab = {}
        with open(osp.join(dataset_dir, "ucfTrainTestlist", "classInd.txt"), "r") as f:
            for line in f:
                if line.strip():
                    label, classname = line.strip().split(" ")
                    cname2lab[classname] = int(label) - 1
        trainval = cls._read_list(dataset_dir, cname2lab, "ucfTrainTestlist/trainlist01.txt")
        test = cls._read_list(dataset_dir, cname2lab, "ucfTrainTestlist/testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    @classmethod
    def _read_list(cls, dataset_dir, cname2lab, text_file):
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        items = []
        with open(osp.join(dataset_dir, text_file), "r") as f:
            for line in f:
                line = line.strip().split(" ")[0]  # trainlist lines are "<file> <label>"
                if not line:
                    continue
                action, filename = line.split("/")
                renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = osp.join(image_dir, renamed_action, filename.replace(".avi", ".jpg"))
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed_action))
        return items

    def read_data(self, cname2lab, text_file):
        """CoOp's instance method: the items listed in ``text_file``."""
        return self._read_list(self.dataset_dir, cname2lab, text_file)
