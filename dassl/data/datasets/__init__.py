"""Dataset base classes and the dataset registry (``from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase``)."""
from .base_dataset import Datum, DatasetBase
from .build import DATASET_REGISTRY, build_dataset

__all__ = ["DATASET_REGISTRY", "build_dataset", "Datum", "DatasetBase"]
