"""Imports every method module so that each registers its trainer and config block."""
from . import mpl, maple, zsclip, coop, cocoop, ivlp, vpt, promptsrc  # noqa: F401
