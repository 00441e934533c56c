"""The earlier run a method reads (PromptKD's teacher), made for code that builds every method generically.

A trainer that needs one declares ``EARLIER_RUN = (trainer, key naming the run, key naming its CLIP)``;
:func:`earlier_run_opts` trains that trainer (its ``tiny_digits.yaml``, one epoch) on the same data and backbone as
the caller (the contract and precision tests, ``tools.selfcheck``), once per folder, and returns the ``KEY VALUE``
options that point the method at it. Nothing is faked: the method loads a real finished run of the other trainer.
"""
from pathlib import Path

from dassl.engine import TRAINER_REGISTRY

REPO = Path(__file__).resolve().parent.parent


def earlier_run_opts(name, argv, backbone, workdir):
    """``[]`` for a method that needs no earlier run; otherwise the options naming a finished one.

    Args:
        name: the registered trainer. argv: ``(flags, pairs)``: the caller's ``train.py`` flags (``--root``,
            ``--seed``, ``--dataset-config-file``; no ``--trainer``, ``--config-file`` or ``--output-dir``) and its
            ``KEY VALUE`` pairs (data sizes, device). backbone: the CLIP both runs use. workdir: where the run is kept.
    """
    spec = getattr(TRAINER_REGISTRY.get(name), "EARLIER_RUN", None)
    if not spec:
        return []
    trainer, dir_key, backbone_key = spec
    out = Path(workdir) / f"earlier-{trainer}-{Path(str(backbone)).stem}"
    if not (out / "result.json").is_file():
        import train

        config = REPO / "configs" / "trainers" / trainer / "tiny_digits.yaml"
        rc = train.main([*argv[0], "--trainer", trainer, "--config-file", str(config), "--output-dir", str(out),
                         *argv[1], "MODEL.BACKBONE.NAME", str(backbone), "OPTIM.MAX_EPOCH", "1",
                         "DATASET.SUBSAMPLE_CLASSES", "base"])
        assert rc == 0 and (out / "result.json").is_file(), f"the earlier {trainer} run for {name} failed"
    return [dir_key, str(out), backbone_key, str(backbone)]
