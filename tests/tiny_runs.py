"""Builders shared by the tests that build methods on the tiny CLIP (configs, trainers, a fixed batch).

- :func:`tiny_argv` / :func:`tiny_cfg`: ``train.py`` words / a checked config for a method on the tiny CLIP and the
  generated EuroSAT (the method's ``tiny_digits.yaml``, small data, the CPU pinned: ``USE_CUDA False``).
- :func:`earlier_opts`: for a method that reads an earlier run (PromptKD's teacher), a real checkpoint file of that
  run's learner, built on the same CLIP without training, and the options naming it.
- :func:`build_for_classes`: the trainer built for class names without reading a dataset.
- :func:`fixed_batch`: a reproducible batch dict, as the training loader yields it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
#: the generated EuroSAT's first classes, in label order (what base-class runs see)
CLASSNAMES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"]
#: small data: 32-pixel images, 2 shots, batch 4, no workers, the CPU
DATA_OPTS = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
             "DATALOADER.TEST.BATCH_SIZE", "16", "DATASET.NUM_SHOTS", "2", "USE_CUDA", "False"]


def config_path(name: str, config: str = "tiny_digits") -> str:
    import trainers

    return trainers.method_of(name).config_path(config)


def tiny_argv(root, ckpt, name, out, opts: Sequence[str] = (), config: str = "tiny_digits", seed: int = 1,
              dataset: str = "eurosat") -> list:
    """``train.py``'s words for method ``name`` on the tiny CLIP ``ckpt`` and the data under ``root``."""
    return ["--root", str(root), "--seed", str(seed), "--trainer", name,
            "--dataset-config-file", str(REPO / "configs" / "datasets" / f"{dataset}.yaml"),
            "--config-file", config_path(name, config), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(ckpt), *DATA_OPTS, *[str(o) for o in opts]]


def tiny_cfg(root, ckpt, name, out, opts: Sequence[str] = (), **kw):
    from trainers.api import build_cfg

    return build_cfg(tiny_argv(root, ckpt, name, out, opts, **kw))


def earlier_opts(name, ckpt, workdir) -> list:
    """``[]``, or the options that point a method at its earlier run (PromptKD's teacher): a checkpoint file of the
    earlier method's learner (built on ``ckpt`` for :data:`CLASSNAMES`, untrained), and the CLIP it was built on."""
    import trainers
    from trainers.api import build_cfg

    spec = trainers.method_of(name).earlier_run
    if spec is None:
        return []
    path = Path(workdir) / f"earlier-{spec.trainer}-{Path(str(ckpt)).stem}.pth.tar"
    if not path.is_file():
        cfg = build_cfg(tiny_argv(workdir, ckpt, spec.trainer, Path(workdir) / "earlier-out"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            earlier = trainers.method_of(spec.trainer).cls(cfg, classnames=CLASSNAMES)
        learner = earlier.model.prompt_learner
        torch.save({"state_dict": learner.state_dict(), "epoch": 1}, path)
    return [spec.run_key, str(path), spec.backbone_key, str(ckpt)]


def build_for_classes(cfg, classnames: Sequence[str] = CLASSNAMES, seed: int = 0):
    """The trainer of ``cfg`` built for ``classnames`` (no dataset read), after ``torch.manual_seed(seed)``."""
    import trainers

    torch.manual_seed(seed)
    return trainers.method_of(cfg.TRAINER.NAME).cls(cfg, classnames=list(classnames))


def fixed_batch(n: int = 4, n_classes: int = len(CLASSNAMES), size: int = 32, seed: int = 0) -> dict:
    """Images, labels, paths and indices as the training loader yields them (labels cover the classes)."""
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.randn(n, 3, size, size, generator=g), "label": torch.arange(n) % n_classes,
            "impath": [f"/data/img{i}.jpg" for i in range(n)], "index": torch.arange(n),
            "domain": torch.zeros(n, dtype=torch.long)}


def saved_run(trainer, folder, classnames: Sequence[str] = CLASSNAMES) -> Path:
    """A finished run folder for ``trainer`` (built for ``classnames``, untrained) as ``train.py`` leaves one:
    ``config.yaml``, its learner saved as epoch 1 (the engine's own save) and a ``result.json`` naming the classes
    and the epoch; without the training, for tests of what reads a run (prediction, export)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(trainer.cfg.dump())
    if trainer.get_model_names():
        trainer.save_model(0, str(folder))
    (folder / "result.json").write_text(json.dumps({"eval_only": False, "epochs": 1, "classnames": list(classnames),
                                                    "method": trainer.cfg.TRAINER.NAME}))
    return folder


def saved_method_run(workdir, data, ckpt, teacher, name, opts: Sequence[str] = (), folder=None) -> Path:
    """:func:`saved_run` of method ``name`` on the tiny CLIP ``ckpt`` and EuroSAT under ``data`` (CasPL's phase-1
    teacher: ``teacher``; PromptKD's earlier run: :func:`earlier_opts`), in ``workdir/<folder or run-NAME>``."""
    extra = earlier_opts(name, ckpt, workdir)
    if name == "CasPL":
        extra += ["KD.BACKBONE_NAME", str(teacher)]
    cfg = tiny_cfg(data, ckpt, name, Path(workdir) / "out", [*extra, *opts])
    return saved_run(build_for_classes(cfg), Path(workdir) / (folder or f"run-{name}"))
