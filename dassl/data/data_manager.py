"""Dataset -> transforms -> data loaders (``reference/dassl-api.md`` sections 6.3, 6.4 and 6.6).

Data order: the reference's
----------------------------
The loaders draw their randomness exactly where Dassl's do, from the global random generators seeded by
``set_random_seed(cfg.SEED)``: ``RandomSampler`` (PyTorch's own class, no generator) draws a seed from torch's
global RNG each time an epoch starts and permutes with it; the ``DataLoader`` draws its base seed from the
same RNG when it is iterated and seeds worker ``i`` (Python ``random``, NumPy, torch) from it; with
``DATALOADER.NUM_WORKERS 0`` augmentations run in the main process on the global RNGs. So for a seed the
batches and augmentations are those of the real Dassl (and of a plain ``torch.utils.data.DataLoader`` with a
``RandomSampler`` after ``torch.manual_seed(seed)``; a test checks it), and they depend on everything else that
draws from the global RNGs in between (prompt initialisation, dropout), as there.

Resuming stays exact because every checkpoint holds the global random states at the moment it was saved (see
:mod:`dassl.engine.trainer`); a within-epoch checkpoint also holds those of the epoch's start.

``build_data_loader(..., generator=g)`` (not in Dassl) makes a loader use its own ``torch.Generator`` for the
sampler and the worker seeds instead, e.g. for a distributed sampler; the trainer saves its state too.
"""
import torch
import torchvision.transforms as T
from tabulate import tabulate
from torch.utils.data import Dataset as TorchDataset

from dassl.utils import UserError, read_image

from .datasets import build_dataset
from .distributed_sampler import sharded_loader_args
from .samplers import build_sampler
from .transforms import INTERPOLATION_MODES, build_transform

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "ImageReadError"]


class ImageReadError(UserError, OSError):
    """An image file of the dataset exists but cannot be decoded."""


def build_data_loader(
    cfg,
    sampler_type="SequentialSampler",
    data_source=None,
    batch_size=64,
    n_domain=0,
    n_ins=2,
    tfm=None,
    is_train=True,
    dataset_wrapper=None,
    generator=None,
):
    """A ``torch.utils.data.DataLoader`` over ``data_source`` (a list of ``Datum``).

    ``drop_last`` only for training and only when the data holds at least one full batch (so a tiny few-shot set
    still gives one batch); ``num_workers = cfg.DATALOADER.NUM_WORKERS``; memory is pinned when CUDA is used.
    The loader's randomness comes from the global RNGs, as in Dassl, unless a ``generator`` is given (see the
    module docstring).
    """
    if data_source is None or len(data_source) == 0:
        raise ValueError(f"build_data_loader: no data to load ({sampler_type}, is_train={is_train}): the split is empty")

    sampler = build_sampler(
        sampler_type,
        cfg=cfg,
        data_source=data_source,
        batch_size=batch_size,
        n_domain=n_domain,
        n_ins=n_ins,
        generator=generator,
    )

    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper

    drop_last = is_train and len(data_source) >= batch_size
    batching = dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    # torchrun: this process's shard of every batch (see dassl/data/distributed_sampler.py)
    batching = sharded_loader_args(sampler, batch_size, drop_last, is_train) or batching

    data_loader = torch.utils.data.DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
        persistent_workers=not is_train and cfg.DATALOADER.NUM_WORKERS > 0,  # evaluation: workers start once
        generator=generator,
        **batching,
    )
    assert len(data_loader) > 0
    return data_loader


class DataManager:
    """Build the dataset named by ``cfg.DATASET.NAME``, its transforms and its loaders.

    Args:
        cfg: the config.
        custom_tfm_train / custom_tfm_test: transforms to use instead of :func:`build_transform`'s.
        dataset_wrapper: a ``DatasetWrapper`` subclass to use instead of :class:`DatasetWrapper`.

    Attributes: ``dataset``, ``train_loader_x``, ``train_loader_u`` (``None`` without ``train_u``), ``val_loader``
    (``None`` without validation data), ``test_loader``; properties ``num_classes``, ``num_source_domains``,
    ``lab2cname``.
    """

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train

        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loader_cfg = cfg.DATALOADER
        train_loader_x = build_data_loader(
            cfg,
            sampler_type=loader_cfg.TRAIN_X.SAMPLER,
            data_source=dataset.train_x,
            batch_size=loader_cfg.TRAIN_X.BATCH_SIZE,
            n_domain=loader_cfg.TRAIN_X.N_DOMAIN,
            n_ins=loader_cfg.TRAIN_X.N_INS,
            tfm=tfm_train,
            is_train=True,
            dataset_wrapper=dataset_wrapper,
        )

        train_loader_u = None
        if dataset.train_u:
            u_cfg = loader_cfg.TRAIN_X if loader_cfg.TRAIN_U.SAME_AS_X else loader_cfg.TRAIN_U
            train_loader_u = build_data_loader(
                cfg,
                sampler_type=u_cfg.SAMPLER,
                data_source=dataset.train_u,
                batch_size=u_cfg.BATCH_SIZE,
                n_domain=u_cfg.N_DOMAIN,
                n_ins=u_cfg.N_INS,
                tfm=tfm_train,
                is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        def test_loader_over(data_source):
            return build_data_loader(
                cfg,
                sampler_type=loader_cfg.TEST.SAMPLER,
                data_source=data_source,
                batch_size=loader_cfg.TEST.BATCH_SIZE,
                tfm=tfm_test,
                is_train=False,
                dataset_wrapper=dataset_wrapper,
            )

        val_loader = test_loader_over(dataset.val) if dataset.val else None
        if not dataset.test:
            raise ValueError(f"dataset {cfg.DATASET.NAME} has no test data (its test split is empty)")
        test_loader = test_loader_over(dataset.test)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname

        self.dataset = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        """Print the dataset name, domains, class count and split sizes as a borderless table."""
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))


class DatasetWrapper(TorchDataset):
    """A torch ``Dataset`` over a list of ``Datum``: reads each image and applies the transform.

    ``__getitem__(idx)`` returns ``{"label", "domain", "impath", "index", "img"}`` (+ ``"img0"`` with
    ``DATALOADER.RETURN_IMG0``):

    * no transform: ``img`` is the PIL image;
    * a list/tuple of transforms: ``img``, ``img2``, ``img3``, ... one per transform;
    * for training with ``DATALOADER.K_TRANSFORMS = k > 1``: each of those is a list of ``k`` independent
      augmentations of the image (a single tensor when ``k == 1``);
    * ``img0``: the image resized to ``INPUT.SIZE`` and turned into a tensor (normalised if ``normalize`` is in
      ``INPUT.TRANSFORMS``), without augmentation.
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # a transform, or a list/tuple of them
        self.is_train = is_train
        # Augmenting an image K > 1 times is only done during training
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0

        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")

        # Transform that applies no augmentation, for img0
        to_tensor = [T.Resize(cfg.INPUT.SIZE, interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION])]
        to_tensor += [T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor += [T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)]
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}

        try:
            img0 = read_image(item.impath)
        except (OSError, ValueError) as err:  # missing, truncated or not an image
            raise ImageReadError(f'cannot read image "{item.impath}" (item {idx}): {err}') from err

        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)

        if self.return_img0:
            output["img0"] = self.to_tensor(img0)  # without any augmentation

        return output

    def _transform_image(self, tfm, img0):
        imgs = [tfm(img0) for _ in range(self.k_tfm)]
        return imgs[0] if len(imgs) == 1 else imgs
