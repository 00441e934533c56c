"""Data: datasets, transforms, samplers and loaders (``from dassl.data import DataManager, DatasetWrapper``).

``DataManager`` and ``DatasetWrapper`` are imported on first use: the data manager needs torchvision, whose import
costs seconds, and code that only reads datasets (``dassl.data.datasets``, ``python -m datasets.prepare``) does not.
"""
__all__ = ["DataManager", "DatasetWrapper"]


def __getattr__(name):
    if name in __all__:
        from . import data_manager

        return getattr(data_manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
