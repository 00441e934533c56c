"""DataManager end to end on a tiny on-disk dataset: few-shot cache, summary table, loaders, batches, seeding."""
import os
import pickle
import re

import pytest
import torch
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data import DataManager, DatasetWrapper
from dassl.data.data_manager import ImageReadError, build_data_loader
from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dassl.utils import UserError, set_random_seed

CLASSES = ["cat", "dog", "owl"]
SIZES = {"train": 6, "val": 5, "test": 2}  # images per class in each split


def _make_images(root):
    """root/<split>/<class>/<i>.png, 12x16 pixels, each image one distinct colour."""
    for split, n in SIZES.items():
        for label, name in enumerate(CLASSES):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                colour = (40 * label, 20 * i, 200 if split == "test" else 100)
                Image.new("RGB", (16, 12), colour).save(root / split / name / f"{i}.png")


@DATASET_REGISTRY.register()
class TinyFolderForDataTest(DatasetBase):
    """Written the way the CoOp datasets are: read the splits, few-shot with a (shots, seed) pickle cache."""

    dataset_dir = "tiny"

    def __init__(self, cfg):
        root = os.path.join(cfg.DATASET.ROOT, self.dataset_dir)
        train, val, test = (self._read(os.path.join(root, split)) for split in ("train", "val", "test"))
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            cache = os.path.join(root, "split_fewshot", f"shot_{num_shots}-seed_{cfg.SEED}.pkl")
            if os.path.exists(cache):
                print(f"Loading preprocessed few-shot data from {cache}")
                with open(cache, "rb") as f:
                    data = pickle.load(f)
                train, val = data["train"], data["val"]
            else:
                train = self.generate_fewshot_dataset(train, num_shots=num_shots)
                val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                print(f"Saving preprocessed few-shot data to {cache}")
                with open(cache, "wb") as f:
                    pickle.dump({"train": train, "val": val}, f, protocol=pickle.HIGHEST_PROTOCOL)
        super().__init__(train_x=train, val=val, test=test)

    @staticmethod
    def _read(folder):
        return [
            Datum(impath=os.path.join(folder, name, fname), label=label, classname=name)
            for label, name in enumerate(CLASSES)
            for fname in sorted(os.listdir(os.path.join(folder, name)))
        ]


@pytest.fixture
def cfg(tmp_path):
    _make_images(tmp_path / "tiny")
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.DATASET.NAME = "TinyFolderForDataTest"
    cfg.DATASET.NUM_SHOTS = 5
    cfg.SEED = 1
    cfg.USE_CUDA = False
    cfg.INPUT.SIZE = (8, 8)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 4
    return cfg


def _build(cfg, seed=1):
    set_random_seed(seed)  # as train.py does before the trainer builds its DataManager
    return DataManager(cfg)


def _epoch_order(loader):
    return [i for batch in loader for i in batch["index"].tolist()]


def test_end_to_end_few_shot_cache_summary_and_batches(cfg, tmp_path, capsys):
    dm = _build(cfg)
    out = capsys.readouterr().out
    cache = tmp_path / "tiny" / "split_fewshot" / "shot_5-seed_1.pkl"
    assert "Loading dataset: TinyFolderForDataTest" in out
    assert "Creating a 5-shot dataset\nCreating a 4-shot dataset\nSaving preprocessed few-shot data to" in out
    assert out.index("Building transform_train") < out.index("Building transform_test")
    table = [
        "---------  ---------------------",
        "Dataset    TinyFolderForDataTest",
        "# classes  3",
        "# train_x  15",
        "# val      12",  # val takes min(K, 4) = 4 per class
        "# test     6",
        "---------  ---------------------",
    ]
    assert out.splitlines()[-7:] == table

    assert dm.num_classes == 3 and dm.lab2cname == {0: "cat", 1: "dog", 2: "owl"} and dm.num_source_domains == 0
    assert dm.dataset.classnames == CLASSES and dm.train_loader_u is None
    assert sorted(dict.fromkeys(d.label for d in dm.dataset.val)) == [0, 1, 2]
    assert all(sum(d.label == c for d in dm.dataset.val) == 4 for c in range(3))

    # train: 15 images, batch 4 -> 3 full batches, the partial one dropped; test: sequential, nothing dropped
    assert len(dm.train_loader_x) == 3 and len(dm.test_loader) == 2 and len(dm.val_loader) == 3
    batch = next(iter(dm.train_loader_x))
    assert sorted(batch) == ["domain", "img", "impath", "index", "label"]
    assert batch["img"].shape == (4, 3, 8, 8) and batch["img"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and len(batch["impath"]) == 4
    assert [dm.dataset.train_x[i].impath for i in batch["index"].tolist()] == batch["impath"]
    test_paths = [p for b in dm.test_loader for p in b["impath"]]
    assert test_paths == [d.impath for d in dm.dataset.test]
    assert dm.train_loader_x.pin_memory is False and dm.train_loader_x.num_workers == 0

    # Second run: the cache (a pickle of Datum) is reused and gives the same shots.
    dm2 = _build(cfg)
    out = capsys.readouterr().out
    assert f"Loading preprocessed few-shot data from {cache}" in out and "Creating" not in out
    assert [d.impath for d in dm2.dataset.train_x] == [d.impath for d in dm.dataset.train_x]


def test_small_set_keeps_its_only_batch(cfg):
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 32  # more than the 15 images: drop_last is off
    dm = _build(cfg)
    assert len(dm.train_loader_x) == 1 and next(iter(dm.train_loader_x))["img"].shape[0] == 15


def _plain_torch_epochs(cfg, dm, seed, epochs):
    """What a plain ``DataLoader`` + ``RandomSampler`` yields after ``torch.manual_seed(seed)`` (Dassl's loader)."""
    from torch.utils.data import DataLoader, RandomSampler

    data = DatasetWrapper(cfg, dm.dataset.train_x, transform=dm.train_loader_x.dataset.transform, is_train=True)
    set_random_seed(seed)
    loader = DataLoader(data, batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, sampler=RandomSampler(data),
                        num_workers=cfg.DATALOADER.NUM_WORKERS, drop_last=True)
    return [[(b["index"], b["img"]) for b in loader] for _ in range(epochs)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than cores on small CI machines
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_and_augmentations_are_those_of_a_plain_torch_loader_with_the_global_seed(cfg, workers):
    """Dassl's loaders are plain torch loaders on the global RNG: ours give the same batches, bit for bit."""
    cfg.DATALOADER.NUM_WORKERS = workers
    dm = _build(cfg)
    set_random_seed(1)
    ours = [[(b["index"], b["img"]) for b in dm.train_loader_x] for _ in range(2)]
    plain = _plain_torch_epochs(cfg, dm, 1, 2)
    assert [[i.tolist() for i, _ in e] for e in ours] == [[i.tolist() for i, _ in e] for e in plain]
    assert all(torch.equal(x, y) for e, f in zip(ours, plain) for (_, x), (_, y) in zip(e, f))
    assert [i.tolist() for i, _ in ours[0]] != [i.tolist() for i, _ in ours[1]]  # a new permutation each epoch
    # The order follows the global RNG, as in Dassl: anything drawn before an epoch changes it.
    set_random_seed(1)
    torch.randn(3)
    assert [b["index"].tolist() for b in dm.train_loader_x] != [i.tolist() for i, _ in ours[0]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than cores on small CI machines
def test_worker_processes_give_reproducible_batches(cfg):
    cfg.DATALOADER.NUM_WORKERS = 2

    def one_epoch():
        dm = _build(cfg)
        return [(b["index"], b["img"]) for b in dm.train_loader_x]

    first, again = one_epoch(), one_epoch()
    assert all(torch.equal(i1, i2) and torch.equal(x1, x2) for (i1, x1), (i2, x2) in zip(first, again))


def test_k_transforms_img0_and_transform_lists(cfg, tmp_path):
    cfg.DATALOADER.K_TRANSFORMS = 2
    cfg.DATALOADER.RETURN_IMG0 = True
    dm = _build(cfg)
    item = dm.train_loader_x.dataset[0]
    assert isinstance(item["img"], list) and len(item["img"]) == 2 and item["img"][0].shape == (3, 8, 8)
    assert item["img0"].shape == (3, 8, 8)
    assert not isinstance(dm.test_loader.dataset[0]["img"], list)  # k only applies to training

    tfms = [lambda im: im.size, lambda im: im.mode]
    item = DatasetWrapper(cfg, dm.dataset.test, transform=tfms, is_train=True)[0]
    assert item["img"] == [(16, 12), (16, 12)] and item["img2"] == ["RGB", "RGB"]
    cfg.DATALOADER.K_TRANSFORMS = 1
    item = DatasetWrapper(cfg, dm.dataset.test, transform=None)[1]
    assert isinstance(item["img"], Image.Image) and item["index"] == 1 and item["label"] == 0
    cfg.DATALOADER.K_TRANSFORMS = 2
    with pytest.raises(ValueError, match="transform is None"):
        DatasetWrapper(cfg, dm.dataset.test, transform=None, is_train=True)


def test_custom_transforms_and_unreadable_image(cfg, tmp_path, capsys):
    cfg.VERBOSE = False
    dm = DataManager(cfg, custom_tfm_train=lambda im: torch.zeros(3, 2, 2), custom_tfm_test=lambda im: torch.ones(1))
    out = capsys.readouterr().out
    assert "* Using custom transform for training" in out and "* Using custom transform for testing" in out
    assert "Building transform" not in out and "Loading dataset" not in out and "# classes" not in out
    assert next(iter(dm.train_loader_x))["img"].shape == (4, 3, 2, 2)

    broken = tmp_path / "tiny" / "test" / "cat" / "0.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=re.escape(f'cannot read image "{broken}"')) as err:
        next(iter(dm.test_loader))
    assert isinstance(err.value, UserError)


def test_empty_split_is_a_clear_error(cfg):
    with pytest.raises(ValueError, match="the split is empty"):
        build_data_loader(cfg, data_source=[], batch_size=4)
