"""The dataset registry and its builder (``dassl.data.datasets.build``)."""
from dassl.utils import Registry, check_availability

#: Dataset classes, registered by name with ``@DATASET_REGISTRY.register()``. Nothing is pre-registered: the
#: project's ``datasets`` package registers the benchmark datasets when it is imported.
DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """Instantiate the dataset class named ``cfg.DATASET.NAME`` with ``cfg``."""
    avai_datasets = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, avai_datasets)
    if cfg.VERBOSE:
        print("Loading dataset: {}".format(cfg.DATASET.NAME))
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
