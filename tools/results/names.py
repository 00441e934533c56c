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

# A dataset made by ``python -m datasets.imagefolder FOLDER --name NAME`` runs as cfg.DATASET.NAME
# ``ImageFolder_NAME`` (datasets/imagefolder_dataset.py) and is called NAME everywhere else: the scripts' dataset
# argument, its config file, a sweep spec, ``--datasets``. That key is kept (it cannot collide with a built-in
# name or alias); it is shown, and found, as NAME.
OWN_PREFIX = "ImageFolder_"

_ALIASES = {
    # dataset config stems (configs/datasets/<stem>.yaml) and the short names papers use
    "oxfordflowers": "OxfordFlowers", "flowers102": "OxfordFlowers", "flowers": "OxfordFlowers",
    "pets": "OxfordPets", "cars": "StanfordCars", "food": "Food101", "aircraft": "FGVCAircraft",
    "fgvcaircraft": "FGVCAircraft", "sun": "SUN397", "ucf": "UCF101", "imagenetsketch": "ImageNetSketch",
    "imagenetv2": "ImageNetV2", "imageneta": "ImageNetA", "imagenetr": "ImageNetR",
    "describabletextures": "DTD",  # cfg.DATASET.NAME of DTD (the class name), as result.json records it
}

# Row order of the papers (baselines first, MPL last); methods not listed follow alphabetically.
METHOD_ORDER = ("ZeroshotCLIP", "CLIP", "CoOp", "CoCoOp", "ProDA", "KgCoOp", "ProGrad", "VPT", "IVLP", "MaPLe", "PromptSRC",
                "TCP", "CasPL", "PromptKD", "MPL")
# Published tables call zero-shot CLIP "CLIP"; CoOp's trainer for it is "ZeroshotCLIP".
METHOD_ALIASES = {"zeroshotclip": "clip", "zsclip": "clip"}

# A method run with extensions (result.json's "extensions": CasPL's frozen boosting prompts, DePT's head) is
# shown as "<Method> + <Extension>", in the rows right after "<Method>" (tools.results.tables.extensions_of).


def split_extensions(name: str) -> tuple[str, tuple[str, ...]]:
    """``"PromptSRC + CasPL"`` (or ``"PromptSRC+CasPL"``) -> ``("PromptSRC", ("CasPL",))``; ``"MPL"`` ->
    ``("MPL", ())``."""
    base, *extensions = [part.strip() for part in name.split("+")]
    return (base, tuple(e for e in extensions if e)) if base else (name, ())


def split_cascade(name: str) -> tuple[str, bool]:
    """``"PromptSRC + CasPL"`` -> ``("PromptSRC", True)``; ``"MPL"`` -> ``("MPL", False)``."""
    base, extensions = split_extensions(name)
    return base, "caspl" in {e.lower() for e in extensions}


def with_extensions(method: str, extensions) -> str:
    """The display name of ``method`` run with ``extensions``: ``("MaPLe", ["CasPL"])`` -> ``"MaPLe + CasPL"``."""
    return " + ".join([split_extensions(method)[0], *extensions])


def cascade_method(method: str) -> str:
    """The display name of ``method`` run with CasPL boosting prompts: ``"MaPLe"`` -> ``"MaPLe + CasPL"``."""
    return with_extensions(method, ["CasPL"])


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
    """The column name: ``"OxfordFlowers"`` -> ``"Flowers102"``, an own dataset ``"ImageFolder_ecofruit"`` ->
    ``"ecofruit"``."""
    if name in DATASETS:
        return DATASETS[name]
    return name[len(OWN_PREFIX):] if name.startswith(OWN_PREFIX) and len(name) > len(OWN_PREFIX) else name


def resolve_dataset(name: str, found=()) -> str:
    """A dataset named by a user (``--datasets``, ``--source``, a sweep spec) -> the canonical key of the runs.

    An own dataset is named by its own name (``ecofruit`` for ``ImageFolder_ecofruit``); among the datasets
    ``found`` in the runs it wins over a built-in alias of the same spelling (an own dataset may be called ``pets``).
    """
    if name in found:
        return name
    if OWN_PREFIX + name in found:
        return OWN_PREFIX + name
    return canonical_dataset(name)


def dataset_sort_key(name: str):
    order = list(DATASETS)
    return (order.index(name), "") if name in order else (len(order), name)


def _method_key(name: str) -> tuple[str, tuple[str, ...]]:
    base, extensions = split_extensions(name)
    base = base.strip().lower()
    return METHOD_ALIASES.get(base, base), tuple(sorted(e.lower() for e in extensions))


def same_method(a: str, b: str) -> bool:
    """Case-insensitive, with zero-shot CLIP's two names treated as one; ``"X + CasPL"`` and ``"X+CasPL"`` are one
    method, different from ``"X"`` and from ``"X + DePT"``."""
    return _method_key(a) == _method_key(b)


def method_sort_key(name: str):
    """The papers' row order; ``"<Method> + <Extension>"`` rows right after ``"<Method>"``."""
    base, extensions = split_extensions(name)
    ext = tuple(e.lower() for e in extensions)
    for i, m in enumerate(METHOD_ORDER):
        if same_method(m, base):
            return (i, "", ext)
    return (len(METHOD_ORDER), base.strip().lower(), ext)
