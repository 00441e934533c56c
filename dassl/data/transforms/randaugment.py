"""RandAugment variants behind the ``randaugment``, ``randaugment2`` and ``randaugment_fixmatch`` choices.

* :class:`RandAugment` (Cubuk et al. 2020): ``n`` ops drawn with replacement, all at one magnitude ``m`` in
  ``[0, 30]``; the op list and ranges follow Google's UDA RandAugment (as Dassl's does).
* :class:`RandAugment2`: ``n`` ops, each applied with probability ``p`` at a uniformly random magnitude.
* :class:`RandAugmentFixMatch`: FixMatch's list (Sohn et al. 2020), ``n`` ops at uniformly random magnitudes.

Ops take and return PIL images. Choices and magnitudes are drawn from Python's ``random``, the cutout centre from
NumPy's, as in Dassl. These choices are not used by the CoOp family; the spec names them without their op
tables, so the tables here follow the cited designs and may differ from Dassl's in detail.
"""
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

__all__ = ["RandAugment", "RandAugment2", "RandAugmentFixMatch"]

_AFFINE = Image.Transform.AFFINE


def _random_sign(v):
    return -v if random.random() > 0.5 else v


def ShearX(img, v):  # v in [-0.3, 0.3]
    v = _random_sign(v)
    return img.transform(img.size, _AFFINE, (1, v, 0, 0, 1, 0))


def ShearY(img, v):  # v in [-0.3, 0.3]
    v = _random_sign(v)
    return img.transform(img.size, _AFFINE, (1, 0, 0, v, 1, 0))


def TranslateX(img, v):  # v: fraction of the width, in [-0.45, 0.45]
    v = _random_sign(v) * img.size[0]
    return img.transform(img.size, _AFFINE, (1, 0, v, 0, 1, 0))


def TranslateXabs(img, v):  # v: pixels, >= 0
    v = _random_sign(v)
    return img.transform(img.size, _AFFINE, (1, 0, v, 0, 1, 0))


def TranslateY(img, v):  # v: fraction of the height, in [-0.45, 0.45]
    v = _random_sign(v) * img.size[1]
    return img.transform(img.size, _AFFINE, (1, 0, 0, 0, 1, v))


def TranslateYabs(img, v):  # v: pixels, >= 0
    v = _random_sign(v)
    return img.transform(img.size, _AFFINE, (1, 0, 0, 0, 1, v))


def Rotate(img, v):  # degrees in [-30, 30]
    return img.rotate(_random_sign(v))


def AutoContrast(img, _):
    return ImageOps.autocontrast(img)


def Invert(img, _):
    return ImageOps.invert(img)


def Equalize(img, _):
    return ImageOps.equalize(img)


def Identity(img, _):
    return img


def Solarize(img, v):  # threshold in [0, 256]
    return ImageOps.solarize(img, v)


def SolarizeAdd(img, addition=0, threshold=128):
    arr = np.clip(np.asarray(img).astype(np.int64) + int(addition), 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(arr), threshold)


def Posterize(img, v):  # bits kept, at least 1
    return ImageOps.posterize(img, max(1, int(v)))


def Contrast(img, v):  # factor in [0.1, 1.9]
    return ImageEnhance.Contrast(img).enhance(v)


def Color(img, v):  # factor in [0.1, 1.9]
    return ImageEnhance.Color(img).enhance(v)


def Brightness(img, v):  # factor in [0.1, 1.9]
    return ImageEnhance.Brightness(img).enhance(v)


def Sharpness(img, v):  # factor in [0.1, 1.9]
    return ImageEnhance.Sharpness(img).enhance(v)


def CutoutAbs(img, v):  # grey square of side v pixels at a random centre
    if v < 0:
        return img
    w, h = img.size
    x0 = int(max(0, np.random.uniform(w) - v / 2.0))
    y0 = int(max(0, np.random.uniform(h) - v / 2.0))
    xy = (x0, y0, min(w, x0 + v), min(h, y0 + v))
    img = img.copy()
    ImageDraw.Draw(img).rectangle(xy, (125, 123, 114))
    return img


def randaugment_list():
    """(op, min, max) triples of UDA's RandAugment; the magnitude maps ``m / 30`` onto ``[min, max]``."""
    return [
        (AutoContrast, 0, 1),
        (Equalize, 0, 1),
        (Invert, 0, 1),
        (Rotate, 0, 30),
        (Posterize, 0, 4),
        (Solarize, 0, 256),
        (SolarizeAdd, 0, 110),
        (Color, 0.1, 1.9),
        (Contrast, 0.1, 1.9),
        (Brightness, 0.1, 1.9),
        (Sharpness, 0.1, 1.9),
        (ShearX, 0.0, 0.3),
        (ShearY, 0.0, 0.3),
        (CutoutAbs, 0, 40),
        (TranslateXabs, 0.0, 100),
        (TranslateYabs, 0.0, 100),
    ]


def randaugment_list2():
    return [
        (AutoContrast, 0, 1),
        (Brightness, 0.1, 1.9),
        (Color, 0.1, 1.9),
        (Contrast, 0.1, 1.9),
        (Equalize, 0, 1),
        (Identity, 0, 1),
        (Invert, 0, 1),
        (Posterize, 0, 4),
        (Rotate, -30, 30),
        (Sharpness, 0.1, 1.9),
        (ShearX, -0.3, 0.3),
        (ShearY, -0.3, 0.3),
        (Solarize, 0, 256),
        (TranslateX, -0.3, 0.3),
        (TranslateY, -0.3, 0.3),
    ]


def fixmatch_list():
    return [
        (AutoContrast, 0, 1),
        (Brightness, 0.05, 0.95),
        (Color, 0.05, 0.95),
        (Contrast, 0.05, 0.95),
        (Equalize, 0, 1),
        (Identity, 0, 1),
        (Posterize, 4, 8),
        (Rotate, -30, 30),
        (Sharpness, 0.05, 0.95),
        (ShearX, -0.3, 0.3),
        (ShearY, -0.3, 0.3),
        (Solarize, 0, 256),
        (TranslateX, -0.3, 0.3),
        (TranslateY, -0.3, 0.3),
    ]


class RandAugment:
    """Apply ``n`` ops (drawn with replacement) at the fixed magnitude ``m`` in ``[0, 30]``."""

    def __init__(self, n=2, m=10):
        if not 0 <= m <= 30:
            raise ValueError(f"RandAugment magnitude m must be in [0, 30] (INPUT.RANDAUGMENT_M), got {m}")
        self.n = n
        self.m = m
        self.augment_list = randaugment_list()

    def __call__(self, img):
        for op, minval, maxval in random.choices(self.augment_list, k=self.n):
            img = op(img, (self.m / 30) * (maxval - minval) + minval)
        return img


class RandAugment2:
    """Apply each of ``n`` drawn ops with probability ``p``, at a magnitude drawn uniformly in its range."""

    def __init__(self, n=2, p=0.6):
        self.n = n
        self.p = p
        self.augment_list = randaugment_list2()

    def __call__(self, img):
        for op, minval, maxval in random.choices(self.augment_list, k=self.n):
            if random.random() > self.p:
                continue
            img = op(img, random.random() * (maxval - minval) + minval)
        return img


class RandAugmentFixMatch:
    """Apply ``n`` ops of FixMatch's list, each at a magnitude drawn uniformly in its range."""

    def __init__(self, n=2):
        self.n = n
        self.augment_list = fixmatch_list()

    def __call__(self, img):
        for op, minval, maxval in random.choices(self.augment_list, k=self.n):
            img = op(img, random.random() * (maxval - minval) + minval)
        return img

