"""Every bad file is one clear error: table-driven over the file kinds a run reads.

For each kind (CLIP backbone, ``--model-dir``/resume checkpoint, few-shot cache, split file, ImageNet's
``preprocessed.pkl``, downloaded archive) and each way a file goes bad (empty, random bytes, truncated, another
format), the reader raises one error that names the file, says what to do and never suggests
``weights_only=False``; through ``train.py`` that is one ``error:`` line, exit status 2, and no output folder.
"""
import io
import json
import os
import random
import pickle
import tarfile
import zipfile
from types import SimpleNamespace

import pytest
import torch

import clip
from clip.checkpoint import CheckpointFileError
import dassl_tiny as tiny
import train
from dassl.data.datasets import Datum
from dassl.utils import UserError, load_checkpoint
from datasets.download import extract
from datasets.imagenet import ImageNet
from datasets.splits import fewshot_with_cache, read_split_entries

from tiny_clip import write_tiny_checkpoint


def _datum(tmp_path, i=0):
    path = tmp_path / "img" / f"{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return Datum(impath=str(path), label=0, classname="cat")


# kind -> (write a valid file at path, read it the way a run does)
def _valid_backbone(tmp_path, path):
    write_tiny_checkpoint(path, kind="vit")


def _valid_checkpoint(tmp_path, path):
    torch.save({"state_dict": {"weight": torch.zeros(3, 4)}, "epoch": 1, "optimizer": None, "scheduler": None,
                "val_result": None}, path)


def _valid_fewshot(tmp_path, path):
    with open(path, "wb") as f:
        pickle.dump({"train": [_datum(tmp_path, i) for i in range(50)], "val": [_datum(tmp_path)]}, f,
                    protocol=pickle.HIGHEST_PROTOCOL)


def _valid_preprocessed(tmp_path, path):
    with open(path, "wb") as f:
        pickle.dump({"train": [_datum(tmp_path, i) for i in range(50)], "test": [_datum(tmp_path)]}, f,
                    protocol=pickle.HIGHEST_PROTOCOL)


def _valid_split(tmp_path, path):
    path.write_text(json.dumps({k: [["img/0.png", 0, "cat"]] * 50 for k in ("train", "val", "test")}))


def _valid_archive(tmp_path, path):
    with tarfile.open(path, "w:gz") as tar:
        data = os.urandom(50_000)  # incompressible, so that a truncation cuts the member short
        info = tarfile.TarInfo("folder/data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _read_backbone(tmp_path, path):
    clip.load(str(path))


def _read_checkpoint(tmp_path, path):
    load_checkpoint(str(path))


def _read_fewshot(tmp_path, path):
    fake = SimpleNamespace(generate_fewshot_dataset=None)
    fewshot_with_cache(fake, [_datum(tmp_path)], [_datum(tmp_path)], 16, 1, str(path.parent))


def _read_split(tmp_path, path):
    read_split_entries(str(path), str(tmp_path))


def _read_preprocessed(tmp_path, path):
    ImageNet._load_preprocessed(SimpleNamespace(preprocessed=str(path), dataset_dir=str(tmp_path)))


def _read_archive(tmp_path, path):
    extract(str(path), str(tmp_path / "extract"))


KINDS = {
    "backbone": ("ViT-tiny.pt", _valid_backbone, _read_backbone, (CheckpointFileError,)),
    "checkpoint": ("model.pth.tar-1", _valid_checkpoint, _read_checkpoint, (UserError,)),
    "fewshot_cache": ("shot_16-seed_1.pkl", _valid_fewshot, _read_fewshot, (UserError,)),
    "split_file": ("split_zhou_Tiny.json", _valid_split, _read_split, (UserError,)),
    "imagenet_preprocessed": ("preprocessed.pkl", _valid_preprocessed, _read_preprocessed, (UserError,)),
    "archive": ("data.tar.gz", _valid_archive, _read_archive, (UserError,)),
}


def _damage(kind, how, path):
    if how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(random.Random(0).randbytes(100))  # fixed bytes: os.urandom made a pickle error rare, not absent
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "other_format":  # a valid file of another kind: text for pickles and archives, a zip for torch
        if kind in ("backbone", "checkpoint"):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("readme.txt", "not a checkpoint")
        elif kind == "split_file":
            path.write_text("[1, 2, 3]")
        else:
            path.write_text("<html>Quota exceeded</html>")


@pytest.mark.parametrize("how", ["empty", "random", "truncated", "other_format"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_file_is_one_clear_error(tmp_path, kind, how):
    name, write_valid, read, errors = KINDS[kind]
    path = tmp_path / "files" / name
    path.parent.mkdir()
    write_valid(tmp_path, path)
    read(tmp_path, path)  # the valid file reads
    _damage(kind, how, path)
    with pytest.raises(errors) as info:
        read(tmp_path, path)
    message = str(info.value)
    assert str(path) in message, message
    assert "weights_only" not in message and "Traceback" not in message
    assert any(word in message for word in ("delete", "again", "download", "fetch", "rebuild")), message
    assert len(message.splitlines()) == 1


def test_a_cache_naming_foreign_code_is_refused_not_run(tmp_path):
    """Dataset caches are pickles: ours reads only Datum lists, so a tampered cache cannot run code."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cache = tmp_path / "split_fewshot" / "shot_16-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(pickle.dumps({"train": [Evil()], "val": []}))
    with pytest.raises(UserError, match="which a dataset cache never holds; delete it"):
        _read_fewshot(tmp_path, cache)
    assert not marker.exists()


def test_wrong_architecture_backbone_and_checkpoint(tmp_path):
    other = tmp_path / "resnet_head.pt"
    torch.save({"fc.weight": torch.zeros(10, 512)}, other)  # a state dict of another model
    with pytest.raises(CheckpointFileError, match="do not describe a CLIP model"):
        clip.load(str(other))


# ------------------------------------------------------------------------------------------------------------------
# Through train.py: exit status 2, one error line, no folder left that looks like a run
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def quiet_env():
    """Runs in this process skip the environment report (tests/conftest.py does it for every test)."""


def _one_error(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("how", ["random", "truncated"])
def test_bad_model_dir_checkpoint_through_train_py(tmp_path, capsys, quiet_env, how):
    tiny.write_tiny_images(tmp_path)
    model_dir = tmp_path / "trained" / "linear_probe"
    model_dir.mkdir(parents=True)
    ckpt = model_dir / "model.pth.tar-4"
    torch.save({"state_dict": {"1.weight": torch.zeros(3, 192), "1.bias": torch.zeros(3)}, "epoch": 4}, ckpt)
    _damage("checkpoint", how, ckpt)
    out = tmp_path / "eval"
    argv = tiny.tiny_argv(tmp_path, out, "--eval-only", "--model-dir", str(model_dir.parent), "--load-epoch", "4")
    assert train.main(argv) == 2
    line = _one_error(capsys)
    assert str(ckpt) in line and "weights_only" not in line
    assert not out.exists()  # a failed start leaves nothing behind


def test_wrong_shape_model_dir_checkpoint_through_train_py(tmp_path, capsys, quiet_env):
    tiny.write_tiny_images(tmp_path)
    model_dir = tmp_path / "trained" / "linear_probe"
    model_dir.mkdir(parents=True)
    torch.save({"state_dict": {"1.weight": torch.zeros(5, 7)}, "epoch": 4}, model_dir / "model.pth.tar-4")
    out = tmp_path / "eval"
    argv = tiny.tiny_argv(tmp_path, out, "--eval-only", "--model-dir", str(model_dir.parent), "--load-epoch", "4")
    assert train.main(argv) == 2
    line = _one_error(capsys)
    assert "does not fit trainer DasslTinyLinear" in line and str(model_dir.parent) in line
    assert not out.exists()
