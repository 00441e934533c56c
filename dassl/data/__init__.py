"""Data: datasets, transforms, samplers and loaders (``from dassl.data import DataManager, DatasetWrapper``)."""
from .data_manager import DataManager, DatasetWrapper

__all__ = ["DataManager", "DatasetWrapper"]
