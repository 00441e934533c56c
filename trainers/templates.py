"""Hand-written prompt templates, as data, and the text features of class names in them.

``{}`` is the class name (underscores already replaced).

- :data:`IMAGENET_TEMPLATES`: CLIP's 80 ImageNet templates, in the CoOp repository's order.
- :data:`IMAGENET_TEMPLATES_SELECT`: the 7 that zero-shot CLIP's ensemble uses (with the dataset's own template).
- :data:`CUSTOM_TEMPLATES`: ``cfg.DATASET.NAME`` -> the zero-shot template of that dataset (the CoOp family's
  table, plus the project's Digits and Caltech256). A method whose references use other templates keeps its
  table of differences in its own module; :func:`dataset_template` looks a dataset up in a table, falling back to
  "a photo of a {}.".
- :func:`zeroshot_text_features`: CLIP's features of the class names in one or more templates.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

import clip

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

#: The 7 templates of zero-shot CLIP's ensemble.
IMAGENET_TEMPLATES_SELECT: List[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

#: ``cfg.DATASET.NAME`` -> zero-shot template (the CoOp family's ``CUSTOM_TEMPLATES`` plus the project's datasets).
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


def dataset_template(dataset_name: str, table: Optional[Mapping[str, str]] = None,
                     default: str = DEFAULT_TEMPLATE) -> str:
    """The template of ``cfg.DATASET.NAME`` in ``table`` (default :data:`CUSTOM_TEMPLATES`), else ``default``."""
    return (CUSTOM_TEMPLATES if table is None else table).get(dataset_name, default)


@torch.no_grad()
def zeroshot_text_features(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                           chunk: int = 1024, normalise_each: bool = True) -> torch.Tensor:
    """(C, E) features of the class names in ``templates``, in the model's dtype.

    ``normalise_each`` (zero-shot CLIP): each template's features L2-normalised, averaged over the templates, and
    normalised again (with one template: that template's normalised features). False: the plain mean of the
    unnormalised features.
    """
    names = [name.replace("_", " ") for name in classnames]
    device = clip_model.token_embedding.weight.device
    total = 0
    for template in templates:
        texts = [template.replace("{}", name) for name in names]
        feats = []
        for start in range(0, len(texts), chunk):
            ids = clip.tokenize(texts[start:start + chunk], context_length=clip_model.context_length).to(device)
            feats.append(clip_model.encode_text(ids))
        feats = torch.cat(feats)
        total = total + (feats / feats.norm(dim=-1, keepdim=True) if normalise_each else feats)
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True) if normalise_each else mean
