"""A tiny dataset and a tiny trainer for engine tests, written only against Dassl's public API.

The trainer is shaped like the CoOp family's (``build_model`` registers a module with its optimizer and
scheduler, ``forward_backward`` steps the scheduler on the last batch, ``load_model`` is overridden with
``strict=False``), so it exercises the same engine paths; it is a linear classifier on 8x8 images.

- ``write_tiny_images(root)``: 3 colour classes as PNG files in ``root/dassl_tiny/<class>/``.
- ``write_yaml(path, text)``: a config file.
- ``tiny_argv(root, out, ...)``: ``train.py`` arguments for a short CPU run on that data.

Importing this module registers the dataset ``DasslTinyColors`` and the trainers ``DasslTinyLinear`` and
``DasslTinyZeroShot``.
"""
import os
import os.path as osp

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import listdir_nohidden, load_checkpoint

CLASSNAMES = ["red", "green", "blue"]
# images per class in each split
N_TRAIN, N_VAL, N_TEST = 5, 2, 3


def write_tiny_images(root, size=8, seed=0):
    """Write noisy single-colour PNGs: ``root/dassl_tiny/<class>/<split>_<i>.png``."""
    rng = np.random.RandomState(seed)
    for label, name in enumerate(CLASSNAMES):
        folder = osp.join(root, "dassl_tiny", name)
        os.makedirs(folder, exist_ok=True)
        for split, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
            for i in range(n):
                img = rng.randint(0, 90, size=(size, size, 3)).astype(np.uint8)
                img[..., label] = rng.randint(120, 255, size=(size, size))
                Image.fromarray(img).save(osp.join(folder, f"{split}_{i}.png"))


@DATASET_REGISTRY.register()
class DasslTinyColors(DatasetBase):
    """Three colour classes read from ``DATASET.ROOT/dassl_tiny`` (the CoOp dataset pattern, without split files)."""

    dataset_dir = "dassl_tiny"

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = osp.join(root, self.dataset_dir)
        splits = {"train": [], "val": [], "test": []}
        for label, name in enumerate(CLASSNAMES):
            folder = osp.join(self.dataset_dir, name)
            for fname in listdir_nohidden(folder, sort=True):
                split = fname.split("_")[0]
                splits[split].append(Datum(impath=osp.join(folder, fname), label=label, classname=name))
        train = splits["train"]
        if cfg.DATASET.NUM_SHOTS >= 1:
            train = self.generate_fewshot_dataset(train, num_shots=cfg.DATASET.NUM_SHOTS)
        super().__init__(train_x=train, val=splits["val"], test=splits["test"])


@TRAINER_REGISTRY.register()
class DasslTinyLinear(TrainerX):
    """Linear classifier on flattened pixels, trained like CoOp's prompt learner."""

    #: Test hook: raise KeyboardInterrupt after this (1-based) epoch's checkpoint, as Ctrl-C would.
    stop_after_epoch = None

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        h, w = cfg.INPUT.SIZE
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, len(classnames)))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("linear_probe", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        loss_summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return loss_summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def after_epoch(self):
        super().after_epoch()
        if self.stop_after_epoch == self.epoch + 1:
            raise KeyboardInterrupt

    def load_model(self, directory, epoch=None):
        # CoOp's override, verbatim in spirit: non-strict load of each registered model.
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar" if epoch is None else "model.pth.tar-" + str(epoch)
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError('Model not found at "{}"'.format(model_path))
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            epoch = checkpoint["epoch"]
            print('Loading weights to {} from "{}" (epoch = {})'.format(name, model_path, epoch))
            self._models[name].load_state_dict(state_dict, strict=False)


@TRAINER_REGISTRY.register()
class DasslTinyZeroShot(TrainerX):
    """Shaped like CoOp's ZeroshotCLIP: a fixed model, nothing registered, used with --eval-only only."""

    def build_model(self):
        h, w = self.cfg.INPUT.SIZE
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, self.num_classes)).to(self.device)

    def model_inference(self, image):
        return self.model(image)


def write_yaml(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


METHOD_YAML = """\
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 4
  TEST:
    BATCH_SIZE: 4
  NUM_WORKERS: 0
INPUT:
  SIZE: (8, 8)
  INTERPOLATION: "bicubic"
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
  RRCROP_SCALE: (0.5, 1.0)
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 4
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAIN:
  PRINT_FREQ: 2
  CHECKPOINT_FREQ: 1
USE_CUDA: False
"""

DATASET_YAML = """\
DATASET:
  NAME: "DasslTinyColors"
"""


def tiny_argv(tmp_path, out, *extra):
    """``train.py`` arguments for a 4-epoch CPU run of DasslTinyLinear on the images under ``tmp_path``."""
    method = write_yaml(tmp_path / "tiny_method.yaml", METHOD_YAML)
    dataset = write_yaml(tmp_path / "tiny_data.yaml", DATASET_YAML)
    return [
        "--root", str(tmp_path), "--seed", "1", "--trainer", "DasslTinyLinear",
        "--dataset-config-file", dataset, "--config-file", method, "--output-dir", str(out), *extra,
    ]


def final_weights(out, epoch=4, name="linear_probe"):
    return torch.load(osp.join(out, name, f"model.pth.tar-{epoch}"), weights_only=True)["state_dict"]
