"""Image transforms built from the config (``from dassl.data.transforms import build_transform``)."""
from .transforms import AVAI_CHOICES, INTERPOLATION_MODES, build_transform

__all__ = ["AVAI_CHOICES", "INTERPOLATION_MODES", "build_transform"]
