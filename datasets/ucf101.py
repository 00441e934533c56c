"""UCF101 (Soomro et al.): the middle frame of each of 13,320 clips of 101 actions.

Layout: ``ucf101/UCF-101-midframes/<Action_Name>/v_<Action>_gXX_cXX.jpg``; ``ucfTrainTestlist/`` (classInd.txt,
trainlist01.txt, testlist01.txt) only for the fall-back split. Class names split the CamelCase action with
underscores (``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``).
"""
import os.path as osp
import re

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import TrainvalTestDataset, read_lines


@DATASET_REGISTRY.register()
class UCF101(TrainvalTestDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    config_name = "ucf101"
    full_num_classes = 101

    @classmethod
    def read_trainval_test(cls, dataset_dir):
        cname2lab = {}
        for line in read_lines(osp.join(dataset_dir, "ucfTrainTestlist", "classInd.txt")):
            label, classname = line.split(" ")
            cname2lab[classname] = int(label) - 1
        lists = ("ucfTrainTestlist/trainlist01.txt", "ucfTrainTestlist/testlist01.txt")
        return tuple(cls._read_list(dataset_dir, cname2lab, name) for name in lists)

    @classmethod
    def _read_list(cls, dataset_dir, cname2lab, text_file):
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        items = []
        for line in read_lines(osp.join(dataset_dir, text_file)):
            action, filename = line.split(" ")[0].split("/")  # trainlist lines are "<file> <label>"
            renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))
            impath = osp.join(image_dir, renamed_action, filename.replace(".avi", ".jpg"))
            items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed_action))
        return items

    def read_data(self, cname2lab, text_file):
        """CoOp's instance method: the items listed in ``text_file``."""
        return self._read_list(self.dataset_dir, cname2lab, text_file)
