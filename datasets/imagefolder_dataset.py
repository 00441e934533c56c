"""Your own dataset in one command: a folder of class sub-folders (ImageFolder layout) as a CoOp-format dataset.

::

    python -m datasets.imagefolder PATH/TO/FOLDER --name mypets --root $DATA      # once
    bash scripts/mpl/base2new_train.sh mypets 1                                    # then like any dataset

``PATH/TO/FOLDER/<class folder>/<image>`` becomes ``$DATA/mypets/``::

    images/                  the image folder (a symbolic link to PATH/TO/FOLDER; --copy copies it instead)
    split_mypets.json        CoOp's split format, {"train"|"val"|"test": [[relpath, label, classname], ...]}
    classnames.txt           one "folder<TAB>class name" line per class: edit the names the prompts use
    split_fewshot/           few-shot caches, as for every dataset

and ``configs/datasets/mypets.yaml`` (``DATASET.NAME: ImageFolder_mypets``), which ``--dataset-config-file`` and
the protocol scripts read. Labels are the sorted folder names' positions, so base classes are the first half
(``ceil(n/2)``) in that order, as for the other datasets. Class names default to the folder names with ``_`` and
``-`` read as spaces. The split is drawn once, per class, with ``random.Random(seed)`` (fractions by option,
default 50/20/30 as CoOp's DTD split); running the command again keeps an existing split unless ``--force``.
Every image is opened and decoded first (:mod:`datasets.images`): unreadable files stop the command, listed, or
are left out with ``--skip-unreadable``; the dataset is then recorded as verified (``.prepare.json``).

Registration: importing this module (the ``datasets`` package does) registers one dataset class per generated yaml in ``configs/datasets/``
(recognised by its first line, :data:`YAML_MARKER`), named ``ImageFolder_<name>``, with ``config_name`` ``<name>``
(so ``python -m datasets.prepare <name> --check`` and the scripts' check work).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import random
import re
import shutil
import sys

from dassl.data.datasets import DATASET_REGISTRY

from .errors import UserError
from .splits import SplitDataset, atomic_write, missing_files_message, read_split_entries

__all__ = ["ImageFolderDataset", "make_imagefolder", "register_imagefolder", "read_classnames", "draw_split",
           "IMAGE_EXTENSIONS", "CONFIG_DIR", "main"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CLASSNAMES_FILE = "classnames.txt"
IMAGE_SUBDIR = "images"
YAML_MARKER = "# ImageFolder dataset written by python -m datasets.imagefolder"
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, "configs", "datasets")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _split_file(name: str) -> str:
    return f"split_{name}.json"


def read_classnames(path: str) -> dict[str, str]:
    """``classnames.txt`` -> ``{folder: class name}``."""
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            folder, sep, cname = line.partition("\t")
            if not sep or not cname.strip():
                raise UserError(f"{path}, line {n}: expected 'folder<TAB>class name', got {line!r}; fix the line "
                                "(the class name is what the prompts say)")
            names[folder] = cname.strip()
    return names


class ImageFolderDataset(SplitDataset):
    """A dataset made by ``python -m datasets.imagefolder``; subclasses name their folder (see the module doc)."""

    image_subdir = IMAGE_SUBDIR
    builds_itself = True  # no download: ``datasets.prepare NAME --check`` checks the files below

    @classmethod
    def image_entries(cls, dataset_dir):
        """The split's entries with the class names of ``classnames.txt`` (which the user may have edited)."""
        entries = read_split_entries(osp.join(dataset_dir, cls.split_file), cls.split_prefix(dataset_dir))
        mapping_path = osp.join(dataset_dir, CLASSNAMES_FILE)
        if not osp.isfile(mapping_path):
            return entries
        mapping = read_classnames(mapping_path)
        prefix = cls.split_prefix(dataset_dir)
        out = {}
        for key, items in entries.items():
            out[key] = []
            for impath, label, cname in items:
                folder = osp.relpath(impath, prefix).split(os.sep)[0]
                out[key].append((impath, label, mapping.get(folder, cname)))
        return out

    @classmethod
    def generate_split(cls, dataset_dir):
        """Nothing to build: check that the command's files are there (the split is never redrawn here)."""
        missing = [p for p in (osp.join(dataset_dir, IMAGE_SUBDIR), osp.join(dataset_dir, cls.split_file))
                   if not osp.exists(p)]
        if missing:
            raise UserError(f"{cls.__name__}: {', '.join(missing)} not found; make the dataset with: python -m "
                            f"datasets.imagefolder PATH/TO/IMAGE/FOLDER --name {cls.config_name} "
                            f"--root {osp.dirname(dataset_dir)}")
        return None


def register_imagefolder(name: str):
    """Register (once) and return the dataset class ``ImageFolder_<name>`` reading ``DATASET.ROOT/<name>``."""
    cls_name = f"ImageFolder_{name}"
    if cls_name in DATASET_REGISTRY:
        return DATASET_REGISTRY.get(cls_name)
    cls = type(cls_name, (ImageFolderDataset,), {
        "dataset_dir": name, "split_file": _split_file(name), "config_name": name,
        "__doc__": f"The ImageFolder dataset {name!r} (made by python -m datasets.imagefolder)."})
    cls.__module__ = __name__
    DATASET_REGISTRY.register(cls)
    return cls


def _registered_from_configs(config_dir: str = CONFIG_DIR) -> None:
    for path in sorted(glob.glob(osp.join(config_dir, "*.yaml"))):
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline().rstrip("\n")
        except OSError:
            continue
        if first == YAML_MARKER:
            register_imagefolder(osp.splitext(osp.basename(path))[0])


def _class_folders(src: str) -> list[tuple[str, list[str]]]:
    folders = []
    for entry in sorted(os.listdir(src)):
        path = osp.join(src, entry)
        if entry.startswith(".") or not osp.isdir(path):
            continue
        images = sorted(osp.relpath(osp.join(d, f), src)
                        for d, _, files in os.walk(path, followlinks=True) for f in files
                        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        folders.append((entry, images))
    return folders


def draw_split(folders, fractions=(0.5, 0.2, 0.3), seed: int = 1, classnames=None):
    """Per class: shuffle with ``random.Random(seed)``, then ``round`` the train and val fractions; rest is test.

    Every class keeps at least one image in each part (the error says which class is too small otherwise).
    """
    p_train, p_val, _ = fractions
    rng = random.Random(seed)
    split = {"train": [], "val": [], "test": []}
    for label, (folder, images) in enumerate(folders):
        items = list(images)
        rng.shuffle(items)
        n = len(items)
        n_train = max(1, round(n * p_train))
        n_val = max(1, round(n * p_val))
        if n_train + n_val >= n:
            raise UserError(f"class folder {folder!r} has {n} image(s): too few for a train, val and test image "
                            "each at these fractions; add images or remove the folder")
        cname = (classnames or {}).get(folder, folder)
        for key, part in (("train", items[:n_train]), ("val", items[n_train:n_train + n_val]),
                          ("test", items[n_train + n_val:])):
            split[key].extend([rel.replace(os.sep, "/"), label, cname] for rel in part)
    return split


def default_classname(folder: str) -> str:
    """``golden_retriever`` / ``golden-retriever`` -> ``golden retriever``."""
    return re.sub(r"[_-]+", " ", folder).strip()


def make_imagefolder(src, name, root, fractions=(0.5, 0.2, 0.3), seed=1, copy=False, force=False,
                     config_dir=CONFIG_DIR, skip_unreadable=False, workers=8):
    """Make ``root/name`` (split, class names, image link or copy) and ``config_dir/name.yaml``; return a summary.

    Everything is checked before anything is written, every image included: each one is opened and decoded in
    full (:mod:`datasets.images`), so a zero-byte file, a text file named ``.jpg`` or a truncated JPEG is found
    now, not by a training run. Unreadable files stop the command (listed with their reasons), or with
    ``skip_unreadable`` are left out of the split (the summary's ``"left_out"`` lists them). The dataset is then
    recorded as verified (``.prepare.json``), so ``python -m datasets.prepare NAME --check`` does not open the
    images again. An existing split is kept (``force=True`` redraws it); it must name only readable images.
    """
    src = osp.abspath(osp.expanduser(str(src)))
    root = osp.abspath(osp.expanduser(str(root)))
    if not _NAME_RE.match(name):
        raise UserError(f"--name {name!r}: use lower-case letters, digits and '_', starting with a letter "
                        "(it names the folder, the yaml and the scripts' dataset argument)")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise UserError(f"--train/--val/--test {fractions}: the fractions must be >= 0 and add up to 1 "
                        "(train > 0)")
    if not osp.isdir(src):
        raise UserError(f"{src} is not a folder; give the folder whose sub-folders are the classes")
    folders = [(f, ims) for f, ims in _class_folders(src)]
    empty = [f for f, ims in folders if not ims]
    if empty:
        raise UserError(f"class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}; "
                        "add images or remove them")
    from .images import describe, unreadable_images

    found = sum(len(ims) for _, ims in folders)
    bad = unreadable_images([osp.join(src, rel) for _, ims in folders for rel in ims], workers)
    if bad and not skip_unreadable:
        raise UserError(f"{len(bad)} of {found} image files in {src} cannot be read; replace or delete them, or "
                        "pass --skip-unreadable to leave them out of the split:\n"
                        + missing_files_message(describe(bad)))
    left_out = {osp.relpath(path, src) for path, _ in bad}
    folders = [(f, [rel for rel in ims if rel not in left_out]) for f, ims in folders]
    empty = [f for f, ims in folders if not ims]
    if empty:
        raise UserError(f"class folder(s) without readable images: {', '.join(empty)}; add images or remove them")
    if len(folders) < 2:
        raise UserError(f"{src} has {len(folders)} class sub-folder(s); a classification dataset needs at least 2 "
                        "(layout: FOLDER/<class>/<image>)")
    from dassl.data.datasets import DATASET_REGISTRY as reg  # noqa: N811
    clash = [c for c in reg.registered_names() if getattr(reg.get(c), "config_name", "") == name
             and not issubclass(reg.get(c), ImageFolderDataset)]
    if clash:
        raise UserError(f"--name {name!r} is the name of the built-in dataset {clash[0]}; choose another name")

    dataset_dir = osp.join(root, name)
    image_dir = osp.join(dataset_dir, IMAGE_SUBDIR)
    split_path = osp.join(dataset_dir, _split_file(name))
    names_path = osp.join(dataset_dir, CLASSNAMES_FILE)
    if osp.lexists(image_dir) and osp.realpath(image_dir) != osp.realpath(src) and not force:
        raise UserError(f"{image_dir} already exists and is not {src}; pass --force to replace it, or choose "
                        "another --name")
    # everything that can fail is decided before anything is written
    new_names = not osp.isfile(names_path)
    classnames = ({f: default_classname(f) for f, _ in folders} if new_names else read_classnames(names_path))
    kept = osp.isfile(split_path) and not force
    split = None if kept else draw_split(folders, fractions, seed, classnames)
    if kept:  # it must name only images that are there and readable
        readable = {osp.normpath(rel) for _, ims in folders for rel in ims}
        entries = read_split_entries(split_path, image_dir)
        named = [osp.relpath(e[0], image_dir) for part in entries.values() for e in part]
        wrong = sorted({rel for rel in named if osp.normpath(rel) not in readable})
        if wrong:
            raise UserError(f"the existing split {split_path} names {len(wrong)} file(s) that are missing or "
                            "unreadable in the image folder; pass --force (and --skip-unreadable) to draw a new "
                            "split without them:\n" + missing_files_message(wrong))

    os.makedirs(dataset_dir, exist_ok=True)
    if osp.realpath(image_dir) != osp.realpath(src):
        if osp.islink(image_dir) or osp.isfile(image_dir):
            os.remove(image_dir)
        elif osp.isdir(image_dir):
            shutil.rmtree(image_dir)
        if copy:
            tmp = image_dir + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            os.replace(tmp, image_dir)
        else:
            os.symlink(src, image_dir, target_is_directory=True)
    if new_names:
        text = ("# folder<TAB>class name (the words the prompts use); edit the names, keep the folders\n"
                + "".join(f"{f}\t{classnames[f]}\n" for f, _ in folders))
        atomic_write(names_path, lambda fh: fh.write(text))
    if split is not None:
        atomic_write(split_path, lambda fh: json.dump(split, fh, indent=4, separators=(",", ": ")))
    yaml_path = osp.join(config_dir, f"{name}.yaml")
    yaml = f'{YAML_MARKER}\n# from {src}\nDATASET:\n  NAME: "ImageFolder_{name}"\n'
    atomic_write(yaml_path, lambda fh: fh.write(yaml))
    cls = register_imagefolder(name)
    from .prepare import mark_verified, verified_summary

    mark_verified(cls, root, verified_summary(cls.image_entries(dataset_dir), dataset_dir))
    with open(split_path, encoding="utf-8") as fh:
        counts = {k: len(v) for k, v in json.load(fh).items()}
    return {"dataset_dir": dataset_dir, "split": split_path, "split_kept": kept, "classnames": names_path,
            "config": yaml_path, "classes": len(folders), "counts": counts, "left_out": describe(bad)}


def _parser():
    p = argparse.ArgumentParser(prog="python -m datasets.imagefolder",
                                description="Turn a folder of class sub-folders into a CoOp-format dataset.")
    p.add_argument("folder", help="the image folder: FOLDER/<class>/<image>")
    p.add_argument("--name", required=True, help="dataset name (the scripts' DATASET argument)")
    p.add_argument("--root", default=os.environ.get("DATA", "./data"), help="data root (default $DATA or ./data)")
    p.add_argument("--train", type=float, default=0.5, help="fraction of each class for training (default 0.5)")
    p.add_argument("--val", type=float, default=0.2, help="fraction for validation (default 0.2)")
    p.add_argument("--test", type=float, default=None, help="fraction for test (default: the rest)")
    p.add_argument("--seed", type=int, default=1, help="seed of the split (default 1)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking the folder")
    p.add_argument("--force", action="store_true", help="redraw an existing split / replace the image folder")
    p.add_argument("--config-dir", default=CONFIG_DIR, help="where the dataset yaml goes (default "
                   "configs/datasets, which the protocol scripts read)")
    p.add_argument("--skip-unreadable", action="store_true", help="leave files that do not decode as images out "
                   "of the split (default: stop and list them)")
    p.add_argument("--workers", type=int, default=8, help="threads that open the images (default 8)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    test = args.test if args.test is not None else round(1 - args.train - args.val, 10)
    try:
        info = make_imagefolder(args.folder, args.name, args.root, (args.train, args.val, test), args.seed,
                                copy=args.copy, force=args.force, config_dir=args.config_dir,
                                skip_unreadable=args.skip_unreadable, workers=args.workers)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if info["left_out"]:
        print(f"left out {len(info['left_out'])} unreadable file(s):\n" + missing_files_message(info["left_out"]))
    c = info["counts"]
    print(f"{args.name}: {info['classes']} classes, {c['train']} train / {c['val']} val / {c['test']} test images "
          f"in {info['dataset_dir']}")
    print(("kept the existing split " if info["split_kept"] else "wrote the split ") + info["split"])
    print(f"class names (edit them): {info['classnames']}")
    print(f"dataset config: {info['config']}")
    print(f"next: bash scripts/mpl/base2new_train.sh {args.name} 1   (with DATA={osp.abspath(args.root)})")
    return 0


_registered_from_configs()
