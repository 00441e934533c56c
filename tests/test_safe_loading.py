"""Nothing in a checkpoint runs: every reader is ``torch.load(weights_only=True)``, admitting by name only what
the original Dassl's checkpoints hold; a file that asks for more is one ``error:`` line naming what it asks for.

The malicious file here holds an object whose unpickling calls ``open(path, "w")``: a plain ``pickle``/
``torch.load(weights_only=False)`` creates that file (checked first, so the tests can fail), the project's readers
must not. It is given as a ``--model-dir`` checkpoint, as the checkpoint a run resumes, as CasPL's ``KD.BOOST_DIR``,
as PromptKD's ``TRAINER.PROMPTKD.TEACHER_DIR``, as a CLIP backbone and as a teacher cache.
"""
import datetime
import hashlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import clip
import dassl_tiny as tiny
import train
from clip.checkpoint import CheckpointFileError
from dassl.optim.lr_scheduler import ConstantWarmupScheduler, LinearWarmupScheduler
from dassl.utils import BadFileError, UntrustedFileError, load_checkpoint
from datasets.fixtures import make_fixture
from trainers import teacher_cache

from tiny_clip import write_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


class Opens:
    """Unpickling this calls ``open(path, "w")``: it creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious(path, marker, legacy=False, state_dict=None):
    """A checkpoint-shaped file whose unpickling creates ``marker``; returns ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": state_dict or {"weight": torch.zeros(2)}, "epoch": 1, "optimizer": None,
             "scheduler": None, "val_result": None, "note": Opens(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(autouse=True)
def no_trust(monkeypatch):
    monkeypatch.delenv("DASSL_TRUSTED_CHECKPOINTS", raising=False)


def one_error(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and len(err) == 1, err
    return errors[0]


def test_the_malicious_file_does_run_code_when_fully_unpickled(tmp_path):
    """The premise of this file's tests: a full unpickle runs the file's call."""
    marker = tmp_path / "ran"
    torch.load(malicious(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy_format"])
def test_load_checkpoint_refuses_it_naming_the_global(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = malicious(tmp_path / "evil.pth", marker, legacy=legacy)
    with pytest.raises(UntrustedFileError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert not marker.exists()
    assert info.value.names == ["io.open"] and "io.open" in message and str(path) in message
    assert "DASSL_TRUSTED_CHECKPOINTS" in message and "weights_only" not in message
    assert len(message.splitlines()) == 1
    assert isinstance(info.value, BadFileError)  # a UserError: train.py prints it as one line, exit status 2


def _harmless(path):
    """A file that needs a global the safe loader refuses, but whose unpickling does nothing harmful."""
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3, "made": datetime.date(2024, 1, 2)}, path)
    return str(path)


def test_a_trusted_file_is_named_by_path_or_sha256(tmp_path, monkeypatch, capsys):
    path = _harmless(tmp_path / "mine.pth")
    with pytest.raises(UntrustedFileError, match="asks for datetime.date"):
        load_checkpoint(path)
    other = hashlib.sha256(b"another file").hexdigest()
    for entry in (path, str(tmp_path / "." / "mine.pth"), hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                  os.pathsep.join([other, path])):
        monkeypatch.setenv("DASSL_TRUSTED_CHECKPOINTS", entry)
        assert load_checkpoint(path)["made"] == datetime.date(2024, 1, 2)
        assert "trusted by DASSL_TRUSTED_CHECKPOINTS" in capsys.readouterr().out
    for entry in (other, str(tmp_path / "theirs.pth"), ""):  # another file's digest or path trusts nothing here
        monkeypatch.setenv("DASSL_TRUSTED_CHECKPOINTS", entry)
        with pytest.raises(UntrustedFileError):
            load_checkpoint(path)


def _dassl_checkpoint(path, successor_cls, successor_kwargs, optim_cls, steps=2):
    """A checkpoint as the original Dassl writes it: its warm-up scheduler's ``state_dict()`` is its ``__dict__``
    less the optimizer, so the ``successor`` scheduler object is pickled with its own ``__dict__``, optimizer and
    the optimizer's state (momentum buffers) included."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optim = optim_cls(model.parameters(), lr=0.1)
    successor = successor_cls(optim, **successor_kwargs)
    for _ in range(steps):  # the optimizer gets state (a defaultdict of tensors), the schedulers move on
        optim.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        optim.step()
        successor.step()
    warmup = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.1],
              "last_epoch": steps, "_step_count": steps + 1, "verbose": False,
              "_get_lr_called_within_step": False, "_last_lr": successor.get_last_lr()}
    torch.save({"state_dict": model.state_dict(), "epoch": steps, "optimizer": optim.state_dict(),
                "scheduler": warmup, "val_result": None}, path)
    return successor.state_dict()


@pytest.mark.parametrize("successor_cls,kwargs,optim_cls", [
    (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 10}, torch.optim.SGD),
    (torch.optim.lr_scheduler.StepLR, {"step_size": 1, "gamma": 0.5}, torch.optim.Adam),
    (torch.optim.lr_scheduler.MultiStepLR, {"milestones": [1, 3]}, torch.optim.RMSprop),
    (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 5}, torch.optim.AdamW),
], ids=["cosine_sgd", "single_step_adam", "multi_step_rmsprop", "cosine_adamw"])
def test_an_original_dassl_checkpoint_loads_and_resumes_its_scheduler(tmp_path, successor_cls, kwargs, optim_cls):
    path = tmp_path / "model.pth.tar-2"
    saved = _dassl_checkpoint(path, successor_cls, kwargs, optim_cls)
    with pytest.raises(Exception):  # torch's safe loader alone refuses it ...
        torch.load(path, weights_only=True)
    checkpoint = load_checkpoint(str(path))  # ... the project's admits exactly its scheduler objects
    assert isinstance(checkpoint["scheduler"]["successor"], successor_cls)

    optim = optim_cls(nn.Linear(4, 3).parameters(), lr=0.1)
    warmup_cls = ConstantWarmupScheduler if "cons_lr" in checkpoint["scheduler"] else LinearWarmupScheduler
    sched = warmup_cls(optim, successor_cls(optim, **kwargs), warmup_epoch=1, cons_lr=1e-5)
    sched.load_state_dict(checkpoint["scheduler"])
    assert sched.successor.optimizer is optim  # drives the live optimizer, not the pickled copy
    assert sched.successor.last_epoch == saved["last_epoch"]
    assert sched.successor.get_last_lr() == saved["_last_lr"]


# ------------------------------------------------------------------------------------------------------------------
# Through train.py: one error line naming the global, exit status 2, nothing ran
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe_tiny")
    tiny.write_tiny_images(root)
    return root


def test_model_dir_checkpoint_through_train_py(images, tmp_path, capsys):
    marker = tmp_path / "ran"
    model_dir = tmp_path / "trained"
    malicious(model_dir / "linear_probe" / "model.pth.tar-4", marker)
    out = tmp_path / "eval"
    argv = tiny.tiny_argv(images, out, "--eval-only", "--model-dir", str(model_dir), "--load-epoch", "4")
    assert train.main(argv) == 2
    line = one_error(capsys)
    assert "io.open" in line and "model.pth.tar-4" in line
    assert not marker.exists() and not out.exists()


def test_resumed_checkpoint_through_train_py(images, tmp_path, capsys):
    """An output folder whose checkpoint pointer names the malicious file: the run that resumes it stops."""
    marker = tmp_path / "ran"
    out = tmp_path / "run"
    malicious(out / "linear_probe" / "model-last.pth.tar", marker)
    (out / "linear_probe" / "checkpoint").write_text("model-last.pth.tar\n")
    assert train.main(tiny.tiny_argv(images, out)) == 2
    line = one_error(capsys)
    assert "io.open" in line and "model-last.pth.tar" in line
    assert not marker.exists()
    assert (out / "linear_probe" / "model-last.pth.tar").exists()  # the user's files are left as they were


@pytest.fixture(scope="module")
def clip_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe_clip")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    return root, write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=4)


def clip_argv(env, trainer, out, opts):
    root, backbone = env
    return ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
            "--config-file", str(REPO / "configs/trainers" / trainer / "tiny_digits.yaml"), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(backbone), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", *opts]


@pytest.mark.parametrize("trainer,key", [("CoOp", "KD.BOOST_DIR"), ("PromptKD", "TRAINER.PROMPTKD.TEACHER_DIR")])
def test_earlier_run_checkpoints_through_train_py(clip_env, tmp_path, capsys, trainer, key):
    """CasPL's boosting prompts and PromptKD's teacher are read from a checkpoint file given in the config."""
    marker = tmp_path / "ran"
    evil = malicious(tmp_path / "given" / "model-best.pth.tar", marker)
    opts = [key, str(evil)]
    if trainer == "PromptKD":
        opts += ["TRAINER.PROMPTKD.TEACHER_NAME", str(clip_env[1])]
    else:  # boosting prompts that fit the tiny CLIP
        opts += ["KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2",
                 "KD.PROMPT_DEPTH_VISION", "3"]
    out = tmp_path / "out"
    assert train.main(clip_argv(clip_env, trainer, out, opts)) == 2
    line = one_error(capsys)
    assert "io.open" in line and str(evil) in line
    assert not marker.exists() and not out.exists()


def test_a_backbone_holding_pickled_objects_is_named_not_called_damaged(tmp_path):
    marker = tmp_path / "ran"
    backbone = tmp_path / "ViT-tiny.pt"
    write_tiny_checkpoint(backbone, kind="vit")
    state = torch.load(backbone, weights_only=True)
    state["note"] = Opens(marker)
    torch.save(state, backbone)  # a valid torch archive, with one pickled call
    with pytest.raises(CheckpointFileError) as info:
        clip.load(str(backbone))
    message = str(info.value)
    assert "io.open" in message and "damaged" not in message and len(message.splitlines()) == 1
    assert not marker.exists()


def test_a_teacher_cache_holding_pickled_objects_is_unusable_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "cache.pt"
    teacher_cache.save_features(str(path), "k" * 64, ["a.png"], torch.ones(1, 4))
    assert teacher_cache.load_features(str(path), "k" * 64, ["a.png"])[0] is not None  # the valid file loads
    payload = torch.load(path, weights_only=True)
    payload["note"] = Opens(marker)
    torch.save(payload, path)
    features, why = teacher_cache.load_features(str(path), "k" * 64, ["a.png"])
    assert features is None and "io.open" in why
    assert not marker.exists()
