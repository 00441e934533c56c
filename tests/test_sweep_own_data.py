"""A sweep over one's own data: ``datasets.imagefolder`` makes the dataset, ``tools.sweep`` runs CoOp's base-to-new
jobs on it through the local pool, and the table it prints at the end is filled (no dashes).

A file of its own so that pytest-xdist runs it beside the other sweep tests (``--dist loadfile``).
"""
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tools.sweep import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_dataset(tmp_path):
    """Generated images of 4 colour classes made into a dataset; its yaml (in the repo's configs/datasets, where the
    scripts and the sweep look) is removed afterwards."""
    from datasets.imagefolder import CONFIG_DIR, make_imagefolder

    name = f"sweepown_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220)),
                        ("yellow", (230, 220, 20))):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (32, 32, 3)) + np.array(colour) * 0.7
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp_path / "photos" / cls / f"{i}.png")
    make_imagefolder(tmp_path / "photos", name, tmp_path / "data")
    yield name
    (Path(CONFIG_DIR) / f"{name}.yaml").unlink(missing_ok=True)


@pytest.mark.slow
def test_a_sweep_over_an_own_dataset_ends_with_a_filled_table(own_dataset, tmp_path, capsys):
    spec = dict(name="own", protocol="base2new", methods=["coop"], datasets=[own_dataset], seeds=[1],
                output=str(tmp_path / "out"), data=str(tmp_path / "data"), executor="local",
                env={"SHOTS": 2, "CFG": "tiny_digits"}, opts={"OPTIM.MAX_EPOCH": 1})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main([str(path), "--workers", "1", "--poll", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "done 2/2" in out
    tables = out[out.index("$ python -m tools.results"):]
    assert f"## Base-to-new: {own_dataset}" in tables
    row = next(line for line in tables.splitlines() if line.startswith("| CoOp |"))
    assert "—" not in row and "n=" not in row, tables
    per_dataset = tables[tables.index(f"| Method | {own_dataset} | Average | src |"):].splitlines()[2]
    assert per_dataset.startswith("| CoOp |") and "—" not in per_dataset, tables
