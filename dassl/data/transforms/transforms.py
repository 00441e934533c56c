"""Image transforms built from ``cfg.INPUT`` (``reference/dassl-api.md`` section 6.7).

:func:`build_transform` returns a ``torchvision.transforms.Compose`` for training or testing. The train pipeline
applies the chosen ops in Dassl's fixed order, whatever order ``INPUT.TRANSFORMS`` lists them in, and prints one
``+ ...`` line per op with Dassl's wording (these lines are part of every CoOp-family log).

Randomness, as in Dassl: torchvision's ops draw from torch's RNG; :class:`Random2DTranslation`,
:class:`GaussianNoise` (whether to apply) and the RandAugment variants from Python's ``random``; :class:`Cutout`
from NumPy's. In DataLoader workers all three are seeded by PyTorch from the loader's seed.
"""
import numpy as np
import random

import torch
import torchvision.transforms.functional as F
from torchvision.transforms import (
    AutoAugment,
    AutoAugmentPolicy,
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    InterpolationMode,
    Normalize,
    RandomApply,
    RandomCrop,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)

from .randaugment import RandAugment, RandAugment2, RandAugmentFixMatch

__all__ = [
    "AVAI_CHOICES",
    "INTERPOLATION_MODES",
    "build_transform",
    "Random2DTranslation",
    "InstanceNormalization",
    "Cutout",
    "GaussianNoise",
    "ImageNetPolicy",
    "CIFAR10Policy",
    "SVHNPolicy",
]

#: Names accepted in ``INPUT.TRANSFORMS`` (or ``choices``).
AVAI_CHOICES = [
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",  # accepted; has no effect (the test pipeline always center-crops)
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
]

#: ``INPUT.INTERPOLATION`` -> torchvision interpolation mode.
INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Random2DTranslation:
    """With probability ``p``, resize to 1.125x the target size and crop a random ``height x width`` window;
    otherwise resize to ``height x width``. Draws from Python's ``random``.

    Input: PIL image. Output: PIL image of size ``(width, height)``.
    """

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return F.resize(img, [self.height, self.width], interpolation=self.interpolation)
        new_width = int(round(self.width * 1.125))
        new_height = int(round(self.height * 1.125))
        resized = F.resize(img, [new_height, new_width], interpolation=self.interpolation)
        x1 = int(round(random.uniform(0, new_width - self.width)))
        y1 = int(round(random.uniform(0, new_height - self.height)))
        return F.crop(resized, top=y1, left=x1, height=self.height, width=self.width)


class InstanceNormalization:
    """Standardise each channel of a ``(C, H, W)`` tensor with its own mean and (unbiased) std."""

    def __init__(self, eps=1e-8):
        self.eps = eps

    def __call__(self, img):
        C, H, W = img.shape
        flat = img.reshape(C, H * W)
        mean = flat.mean(1).view(C, 1, 1)
        std = flat.std(1).view(C, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero ``n_holes`` square patches of side ``length`` (clipped at the border) of a ``(C, H, W)`` tensor.

    Centres are drawn with NumPy's global RNG.
    """

    def __init__(self, n_holes=1, length=16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img):
        h, w = img.size(1), img.size(2)
        mask = np.ones((h, w), np.float32)
        for _ in range(self.n_holes):
            y = np.random.randint(h)
            x = np.random.randint(w)
            y1, y2 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
            x1, x2 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * torch.from_numpy(mask).expand_as(img)


class GaussianNoise:
    """With probability ``p`` add ``N(mean, std^2)`` noise to a tensor (``random`` decides, torch draws the noise)."""

    def __init__(self, mean=0, std=0.15, p=0.5):
        self.mean = mean
        self.std = std
        self.p = p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


def _autoaugment(policy):
    """An AutoAugment policy of the paper (Cubuk et al. 2019), the sub-policies Dassl's classes list.

    torchvision implements the same tables and magnitude ranges; Dassl's version fills the area uncovered by
    geometric ops with grey (128, 128, 128), so the fill is set to match. The draws come from torch's RNG.
    """
    return AutoAugment(policy, interpolation=InterpolationMode.NEAREST, fill=[128, 128, 128])


def ImageNetPolicy():
    """AutoAugment's ImageNet policy (PIL image in, PIL image out)."""
    return _autoaugment(AutoAugmentPolicy.IMAGENET)


def CIFAR10Policy():
    """AutoAugment's CIFAR-10 policy (PIL image in, PIL image out)."""
    return _autoaugment(AutoAugmentPolicy.CIFAR10)


def SVHNPolicy():
    """AutoAugment's SVHN policy (PIL image in, PIL image out)."""
    return _autoaugment(AutoAugmentPolicy.SVHN)


def _interpolation(cfg):
    name = cfg.INPUT.INTERPOLATION
    if name not in INTERPOLATION_MODES:
        raise ValueError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}, but got {name!r}")
    return INTERPOLATION_MODES[name]


def build_transform(cfg, is_train=True, choices=None):
    """Build the train (``is_train``) or test transform from ``cfg.INPUT``.

    Args:
        cfg: the config; reads ``cfg.INPUT``.
        is_train (bool): training pipeline (augmentations) or test pipeline (resize, center crop).
        choices (list[str]): transform names; ``None`` or empty means ``cfg.INPUT.TRANSFORMS``.

    Returns:
        ``torchvision.transforms.Compose`` taking a PIL image, or ``None`` when ``INPUT.NO_TRANSFORM``.

    An unknown name raises ``ValueError`` listing the valid ones.
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None

    choices = choices or cfg.INPUT.TRANSFORMS
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ValueError(f"Invalid transform choice ({choice!r}), expected one of {AVAI_CHOICES}")

    target_size = f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}"
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)

    if is_train:
        return _build_transform_train(cfg, choices, target_size, normalize)
    return _build_transform_test(cfg, choices, target_size, normalize)


def _build_transform_train(cfg, choices, target_size, normalize):
    print("Building transform_train")
    tfm_train = []
    interp_mode = _interpolation(cfg)
    input_size = cfg.INPUT.SIZE

    # Make sure the image size matches the target size when no crop does it.
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {target_size}")
        tfm_train += [Resize(input_size, interpolation=interp_mode)]

    if "random_translation" in choices:
        print("+ random translation")
        tfm_train += [Random2DTranslation(input_size[0], input_size[1])]

    if "random_crop" in choices:
        crop_padding = cfg.INPUT.CROP_PADDING
        print(f"+ random crop (padding = {crop_padding})")
        tfm_train += [RandomCrop(input_size, padding=crop_padding)]

    if "random_resized_crop" in choices:
        s_ = cfg.INPUT.RRCROP_SCALE
        print(f"+ random resized crop (size={input_size}, scale={s_})")
        tfm_train += [RandomResizedCrop(input_size, scale=s_, interpolation=interp_mode)]

    if "random_flip" in choices:
        print("+ random flip")
        tfm_train += [RandomHorizontalFlip()]

    for name, policy in (("imagenet_policy", ImageNetPolicy), ("cifar10_policy", CIFAR10Policy), ("svhn_policy", SVHNPolicy)):
        if name in choices:
            print(f"+ {name.replace('_', ' ')}")  # "+ imagenet policy"
            tfm_train += [policy()]

    if "randaugment" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        m_ = cfg.INPUT.RANDAUGMENT_M
        print(f"+ randaugment (n={n_}, m={m_})")
        tfm_train += [RandAugment(n_, m_)]

    if "randaugment_fixmatch" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print(f"+ randaugment_fixmatch (n={n_})")
        tfm_train += [RandAugmentFixMatch(n_)]

    if "randaugment2" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print(f"+ randaugment2 (n={n_})")
        tfm_train += [RandAugment2(n_)]

    if "colorjitter" in choices:
        b_ = cfg.INPUT.COLORJITTER_B
        c_ = cfg.INPUT.COLORJITTER_C
        s_ = cfg.INPUT.COLORJITTER_S
        h_ = cfg.INPUT.COLORJITTER_H
        print(f"+ color jitter (brightness={b_}, contrast={c_}, saturation={s_}, hue={h_})")
        tfm_train += [ColorJitter(brightness=b_, contrast=c_, saturation=s_, hue=h_)]

    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm_train += [RandomGrayscale(p=cfg.INPUT.RGS_P)]

    if "gaussian_blur" in choices:
        gb_k, gb_p = cfg.INPUT.GB_K, cfg.INPUT.GB_P
        print(f"+ gaussian blur (kernel={gb_k})")
        tfm_train += [RandomApply([GaussianBlur(gb_k)], p=gb_p)]

    print("+ to torch tensor of range [0, 1]")
    tfm_train += [ToTensor()]

    if "cutout" in choices:
        cutout_n = cfg.INPUT.CUTOUT_N
        cutout_len = cfg.INPUT.CUTOUT_LEN
        print(f"+ cutout (n_holes={cutout_n}, length={cutout_len})")
        tfm_train += [Cutout(cutout_n, cutout_len)]

    tfm_train += _normalization(cfg, choices, normalize, noise=True)
    return Compose(tfm_train)


def _build_transform_test(cfg, choices, target_size, normalize):
    print("Building transform_test")
    tfm_test = []
    interp_mode = _interpolation(cfg)
    input_size = cfg.INPUT.SIZE

    print(f"+ resize the smaller edge to {max(input_size)}")
    tfm_test += [Resize(max(input_size), interpolation=interp_mode)]

    print(f"+ {target_size} center crop")
    tfm_test += [CenterCrop(input_size)]

    print("+ to torch tensor of range [0, 1]")
    tfm_test += [ToTensor()]

    tfm_test += _normalization(cfg, choices, normalize, noise=False)
    return Compose(tfm_test)


def _normalization(cfg, choices, normalize, noise):
    """The tensor ops that end both pipelines: normalize, [gaussian noise (training only)], instance norm."""
    ops = []
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        ops += [normalize]

    if noise and "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        ops += [GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)]

    if "instance_norm" in choices:
        print("+ instance normalization")
        ops += [InstanceNormalization()]
    return ops
