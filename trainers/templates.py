"""Hand-written prompt templates, as data: CLIP's ImageNet ensemble, its 7-template selection, PromptSRC's 60, and
one template per dataset (CoOp's ``CUSTOM_TEMPLATES``). ``{}`` is the class name (underscores already replaced).

- :data:`IMAGENET_TEMPLATES`: CLIP's 80 ImageNet templates, in the CoOp repository's order.
- :data:`IMAGENET_TEMPLATES_SELECT`: the 7 that ``ZeroshotCLIP2`` ensembles (with the dataset's own template).
- :data:`PROMPTSRC_TEMPLATES`: the 60 PromptSRC averages for its frozen text features: the first 60 of its copy
  of the list, with "a photo of a {}." moved to the front (this is PromptSRC's ``IMAGENET_TEMPLATES``).
- :data:`CUSTOM_TEMPLATES`: ``cfg.DATASET.NAME`` -> the zero-shot template of that dataset (CoOp's table, plus the
  project's Digits and Caltech256). :func:`dataset_template` falls back to "a photo of a {}." for other datasets.
"""
from typing import Dict, List

#: CLIP's 80 ImageNet templates (CoOp's order).
IMAGENET_TEMPLATES: List[str] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

#: The 7 templates ZeroshotCLIP2 ensembles.
IMAGENET_TEMPLATES_SELECT: List[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

#: The 60 templates PromptSRC averages for its frozen text features, in its order: "a photo of a {}." first, then
#: the first 59 of the others in CLIP's list (PromptSRC's truncated copy of ``IMAGENET_TEMPLATES``).
PROMPTSRC_TEMPLATES: List[str] = (
    ["a photo of a {}."] + [t for t in IMAGENET_TEMPLATES if t != "a photo of a {}."][:59]
)

#: ``cfg.DATASET.NAME`` -> zero-shot template (CoOp's ``CUSTOM_TEMPLATES`` plus the project's datasets).
CUSTOM_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    "Caltech256": "a photo of a {}.",
    "Digits": "a photo of the number {}.",
}

#: The template of datasets that have none of their own.
DEFAULT_TEMPLATE = "a photo of a {}."


def dataset_template(dataset_name: str) -> str:
    """The zero-shot template of ``cfg.DATASET.NAME`` (``DEFAULT_TEMPLATE`` for datasets not in the table)."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)
