"""ImageNet (ILSVRC-2012) and the base class of its test-only variants (ImageNet-V2, -Sketch, -A, -R).

Layout: ``imagenet/images/{train,val}/<wnid>/*.JPEG`` (the 50,000 validation images sorted into their 1,000
class folders; val is the test set) and ``imagenet/classnames.txt``, CoOp's file of 1,000 lines
``<wnid> <class name>`` (e.g. ``n01440764 tench``). The project does not ship ``classnames.txt``: it could not be
reproduced here exactly, so it is the user's (``python -m datasets.prepare imagenet`` fetches CoOp's copy).

The image listing is cached in ``imagenet/preprocessed.pkl`` (``{"train": [Datum], "test": [Datum]}``) as in
CoOp, and the few-shot cache holds ``{"train"}`` only. Labels are the indices of the sorted class folders.
"""
import os
import os.path as osp
import pickle
from collections import OrderedDict

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
from .errors import UserError

from .splits import (
    SplitDataset,
    atomic_write,
    fewshot_with_cache,
    list_images,
    prepare_command,
    read_lines,
    load_datum_pickle,
    reroot_items,
    subsample_classes,
    subsample_setting,
    to_datums,
)

#: Google Drive id of CoOp's ``classnames.txt`` (reference notes).
CLASSNAMES_GDRIVE_ID = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"


def read_classnames(text_file, config_name="imagenet", root="DATA"):
    """``OrderedDict`` wnid -> class name from a ``classnames.txt`` (lines ``<wnid> <class name>``)."""
    if not osp.isfile(text_file):
        raise UserError(
            f"class-name file not found: {text_file}\n"
            "It is CoOp's list of the 1,000 ImageNet classes, one line '<wnid> <class name>' each "
            "(not shipped with this project). Fetch it with: "
            f"{prepare_command(config_name, root)}\n"
            f"or download it by hand from Google Drive (file id {CLASSNAMES_GDRIVE_ID}) and put it there."
        )
    classnames = OrderedDict()
    for line in read_lines(text_file):
        folder, _, classname = line.partition(" ")
        classnames[folder] = classname
    return classnames


def _folder_entries(image_dir, classnames, folders, text_file):
    """``(impath, label, classname)`` for each image of ``folders`` (label = position in ``folders``)."""
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise UserError(f"{len(unknown)} folder(s) of {image_dir} are not in {text_file}: {', '.join(unknown[:5])}")
    entries = []
    for label, folder in enumerate(folders):
        folder_dir = osp.join(image_dir, folder)
        entries.extend((osp.join(folder_dir, im), label, classnames[folder]) for im in list_images(folder_dir))
    return entries


def _subfolders(path):
    return sorted(f.name for f in os.scandir(path) if f.is_dir() and not f.name.startswith("."))


@DATASET_REGISTRY.register()
class ImageNet(SplitDataset):
    dataset_dir = "imagenet"
    image_subdir = "images"
    config_name = "imagenet"
    full_num_classes = 1000

    def __init__(self, cfg):
        self._set_paths(cfg.DATASET.ROOT)
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        if osp.exists(self.preprocessed):
            train, test = self._load_preprocessed()
        else:
            entries = self.image_entries(self.dataset_dir)
            hint = f"Check the dataset with: {prepare_command(self.config_name, self.root, '--verify-only')}"
            train = to_datums(entries["train"], osp.join(self.image_dir, "train"), hint)
            test = to_datums(entries["test"], osp.join(self.image_dir, "val"), hint)
            preprocessed = {"train": train, "test": test}
            try:
                atomic_write(
                    self.preprocessed,
                    lambda f: pickle.dump(preprocessed, f, protocol=pickle.HIGHEST_PROTOCOL),
                    binary=True,
                )
            except OSError as err:
                print(f"Note: could not write {self.preprocessed} ({err}); the folders are listed again next time")

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            train, _ = fewshot_with_cache(self, train, None, num_shots, cfg.SEED, self.split_fewshot_dir, with_val=False)

        train, test = subsample_classes(train, test, subsample=subsample_setting(cfg))
        DatasetBase.__init__(self, train_x=train, val=test, test=test)

    def _load_preprocessed(self):
        data = load_datum_pickle(self.preprocessed, "ImageNet listing", "delete it to list the folders again")
        if not isinstance(data, dict) or "train" not in data or "test" not in data:
            raise UserError(f'{self.preprocessed} has no "train"/"test" lists; delete it to list the folders again')
        return tuple(reroot_items(data[k], self.dataset_dir, self.preprocessed, sample=200) for k in ("train", "test"))

    @classmethod
    def required_files(cls):
        return ["classnames.txt"]

    @classmethod
    def image_entries(cls, dataset_dir):
        text_file = osp.join(dataset_dir, "classnames.txt")
        classnames = read_classnames(text_file, cls.config_name, osp.dirname(dataset_dir))
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        split_dirs = {"train": osp.join(image_dir, "train"), "test": osp.join(image_dir, "val")}
        for path in split_dirs.values():
            cls.require_dir(path, osp.dirname(dataset_dir))
        train_folders, val_folders = _subfolders(split_dirs["train"]), _subfolders(split_dirs["test"])
        if train_folders != val_folders:
            only = sorted(set(train_folders) ^ set(val_folders))
            raise UserError(
                f"ImageNet: images/train and images/val must hold the same class folders (labels are their sorted "
                f"positions); {len(only)} differ, e.g. {', '.join(only[:5])}"
            )
        return {
            "train": _folder_entries(split_dirs["train"], classnames, train_folders, text_file),
            "val": [],
            "test": _folder_entries(split_dirs["test"], classnames, val_folders, text_file),
        }

    # CoOp compatibility
    read_classnames = staticmethod(read_classnames)

    def read_data(self, classnames, split_dir):
        """CoOp's instance method: the items of ``images/<split_dir>``, labelled by sorted folder."""
        image_dir = osp.join(self.image_dir, split_dir)
        entries = _folder_entries(image_dir, classnames, _subfolders(image_dir), "classnames")
        return to_datums(entries, image_dir)


class ImageNetVariant(SplitDataset):
    """A test-only ImageNet variant: ``<dataset_dir>/<image_subdir>/<wnid>/*`` plus ``<dataset_dir>/classnames.txt``.

    Labels are the positions of the sorted wnid folders (0..199 for ImageNet-A/R); ``train_x`` and ``test`` are
    the same list and there is no val split. ``DATASET.NUM_SHOTS`` and ``SUBSAMPLE_CLASSES`` do not apply.
    """

    def __init__(self, cfg):
        self._set_paths(cfg.DATASET.ROOT)
        entries = self.image_entries(self.dataset_dir)["test"]
        hint = f"Check the dataset with: {prepare_command(self.config_name, self.root, '--verify-only')}"
        data = to_datums(entries, self.image_dir, hint)
        DatasetBase.__init__(self, train_x=data, test=data)

    @classmethod
    def required_files(cls):
        return ["classnames.txt"]

    @classmethod
    def class_folders(cls, image_dir, classnames):
        """The class folders in label order: the sub-folders, sorted (files such as A/R's README.txt are skipped)."""
        return _subfolders(image_dir)

    @classmethod
    def image_entries(cls, dataset_dir):
        text_file = osp.join(dataset_dir, "classnames.txt")
        classnames = read_classnames(text_file, cls.config_name, osp.dirname(dataset_dir))
        image_dir = osp.join(dataset_dir, cls.image_subdir)
        folders = cls.class_folders(image_dir, classnames)
        return {"train": [], "val": [], "test": cls.folder_entries(image_dir, classnames, folders, text_file)}

    @classmethod
    def folder_entries(cls, image_dir, classnames, folders, text_file):
        return _folder_entries(image_dir, classnames, folders, text_file)
