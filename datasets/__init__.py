"""CoOp-format datasets for CLIP prompt learning, registered in ``dassl.data.datasets.DATASET_REGISTRY``.

Importing this package registers every dataset (``import datasets`` in ``train.py``). The classes read the
folders and split files of the CoOp / MaPLe / MPL repositories (see ``DATASETS.md``); ``python -m
datasets.prepare`` downloads, extracts and verifies them, and ``datasets.fixtures`` writes tiny copies of their
layouts for tests.
"""
from . import (  # noqa: F401  (imported for their registrations)
    caltech101,
    caltech256,
    digits,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagefolder_dataset,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
