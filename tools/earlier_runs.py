"""The earlier run a method reads (PromptKD's teacher), made for code that builds every method generically.

A method that needs one registers ``earlier_run=EarlierRun(trainer, key naming the run, key naming its CLIP,
script)`` (:mod:`trainers.registry`); :func:`earlier_run_opts` trains that trainer (its ``tiny_digits.yaml``, one
epoch) on the same data and backbone as the caller (the contract and precision tests, ``tools.selfcheck``), once per
folder, and returns the ``KEY VALUE`` options that point the method at it. Nothing is faked: the method loads a real
finished run of the other trainer.
"""
from pathlib import Path


def earlier_run_opts(name, argv, backbone, workdir):
    """``[]`` for a method that needs no earlier run; otherwise the options naming a finished one.

    Args:
        name: the registered method. argv: ``(flags, pairs)``: the caller's ``train.py`` flags (``--root``,
            ``--seed``, ``--dataset-config-file``; no ``--trainer``, ``--config-file`` or ``--output-dir``) and its
            ``KEY VALUE`` pairs (data sizes, device). backbone: the CLIP both runs use. workdir: where the run is kept.
    """
    import trainers
    from trainers.runner import main

    spec = trainers.method_of(name).earlier_run
    if spec is None:
        return []
    out = Path(workdir) / f"earlier-{spec.trainer}-{Path(str(backbone)).stem}"
    if not (out / "result.json").is_file():
        config = trainers.method_of(spec.trainer).config_path("tiny_digits")
        rc = main([*argv[0], "--trainer", spec.trainer, "--config-file", config, "--output-dir", str(out),
                   *argv[1], "MODEL.BACKBONE.NAME", str(backbone), "OPTIM.MAX_EPOCH", "1",
                   "DATASET.SUBSAMPLE_CLASSES", "base"])
        assert rc == 0 and (out / "result.json").is_file(), f"the earlier {spec.trainer} run for {name} failed"
    return [spec.run_key, str(out), spec.backbone_key, str(backbone)]
