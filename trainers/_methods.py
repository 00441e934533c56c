"""Imports every method module so that each registers its trainer and config block."""
from . import mpl, maple  # noqa: F401
