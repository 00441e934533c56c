"""Dataset and method names: canonical keys, display names, the papers' column and row order."""
from __future__ import annotations

import re

# Canonical key (cfg.DATASET.NAME, the CoOp dataset class) -> display name, in the MaPLe/PromptSRC table order.
DATASETS = {
    "ImageNet": "ImageNet",
    "Caltech101": "Caltech101",
    "OxfordPets": "OxfordPets",
    "StanfordCars": "StanfordCars",
    "OxfordFlowers": "Flowers102",
    "Food101": "Food101",
    "FGVCAircraft": "FGVCAircraft",
    "SUN397": "SUN397",
    "DTD": "DTD",
    "EuroSAT": "EuroSAT",
    "UCF101": "UCF101",
    # domain generalisation targets
    "ImageNetV2": "ImageNetV2",
    "ImageNetSketch": "ImageNet-Sketch",
    "ImageNetA": "ImageNet-A",
    "ImageNetR": "ImageNet-R",
    # not in the papers' tables
    "Caltech256": "Caltech256",
    "Digits": "Digits",  # the offline demo
}
DG_TARGETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")

_ALIASES = {
    # dataset config stems (configs/datasets/<stem>.yaml) and the short names papers use
    "oxfordflowers": "OxfordFlowers", "flowers102": "OxfordFlowers", "flowers": "OxfordFlowers",
    "pets": "OxfordPets", "cars": "StanfordCars", "food": "Food101", "aircraft": "FGVCAircraft",
    "fgvcaircraft": "FGVCAircraft", "sun": "SUN397", "ucf": "UCF101", "imagenetsketch": "ImageNetSketch",
    "imagenetv2": "ImageNetV2", "imageneta": "ImageNetA", "imagenetr": "ImageNetR",
    "describabletextures": "DTD",  # cfg.DATASET.NAME of DTD (the class name), as result.json records it
}

# Row order of the papers (baselines first, MPL last); methods not listed follow alphabetically.
METHOD_ORDER = ("ZeroshotCLIP", "CLIP", "CoOp", "CoCoOp", "ProDA", "VPT", "IVLP", "MaPLe", "PromptSRC", "CasPL", "MPL")
# Published tables call zero-shot CLIP "CLIP"; CoOp's trainer for it is "ZeroshotCLIP".
METHOD_ALIASES = {"zeroshotclip": "clip", "zsclip": "clip"}


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_dataset(name: str | None) -> str | None:
    """``"oxford_flowers"``, ``"OxfordFlowers"``, ``"Flowers102"`` -> ``"OxfordFlowers"``; unknown names unchanged."""
    if name is None:
        return None
    key = _squash(name)
    for canon in DATASETS:
        if _squash(canon) == key:
            return canon
    return _ALIASES.get(key, name)


def display_dataset(name: str) -> str:
    return DATASETS.get(name, name)


def dataset_sort_key(name: str):
    order = list(DATASETS)
    return (order.index(name), "") if name in order else (len(order), name)


def same_method(a: str, b: str) -> bool:
    """Case-insensitive, with zero-shot CLIP's two names treated as one."""
    a, b = a.lower(), b.lower()
    return METHOD_ALIASES.get(a, a) == METHOD_ALIASES.get(b, b)


def method_sort_key(name: str):
    for i, m in enumerate(METHOD_ORDER):
        if same_method(m, name):
            return (i, "")
    return (len(METHOD_ORDER), name.lower())
