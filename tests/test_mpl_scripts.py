"""MPL end to end through the real protocol scripts, on a generated EuroSAT and a tiny CLIP checkpoint.

What a user runs is what is tested: ``bash scripts/mpl/base2new_train.sh eurosat 1`` then
``base2new_test.sh``; a finished run is skipped, a killed one is resumed, checkpoints hold only prompts.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datasets.fixtures import make_fixture

from tiny_clip import write_tiny_checkpoint

pytestmark = pytest.mark.slow  # end to end through the real scripts

REPO = Path(__file__).resolve().parents[1]
TAIL = "eurosat/shots_2/MPL/vit_b4_c1_add2_rm1/seed1"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpl_e2e")
    make_fixture("eurosat", root / "data", n_per_class=4, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit")
    e = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(root / "output"), SHOTS="2", PYTHON=sys.executable,
             OMP_NUM_THREADS="1")
    opts = ["--", "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "TRAINER.MPL.PROMPT_DEPTH", "2",
            "TRAINER.MPL.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0"]
    return root, e, opts


def script(name, *args, env, opts, **kw):
    cmd = ["bash", str(REPO / "scripts" / "mpl" / name), *args, *opts]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def test_base2new_train_then_test_then_skip(env):
    root, e, opts = env
    out = root / "output"
    train = script("base2new_train.sh", "eurosat", "1", "2", env=e, opts=opts)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    run_dir = out / "base2new/train_base" / TAIL
    log = (run_dir / "log.txt").read_text()
    assert "Finish training" in log and "=> result" in log and "* accuracy:" in log
    result = json.loads((run_dir / "result.json").read_text())
    assert result["subsample"] == "base" and result["num_classes"] == 5 and result["epochs"] == 2
    ckpt = run_dir / "MultiModalPromptLearner" / "model.pth.tar-2"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # only the prompt learner is saved (and the names of its classes): no CLIP weights, no class-dependent buffers
    assert not any(k.startswith(("visual", "transformer", "clip_model", "token_")) for k in state)
    assert json.loads(state["trained_classes._extra_state"]["classnames"])[0] == "Annual Crop Land"
    assert sum(v.numel() for v in state.values() if torch.is_tensor(v)) == result["learnable_params"]

    test = script("base2new_test.sh", "eurosat", "1", env=e, opts=opts)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    new = json.loads((out / "base2new/test_new" / TAIL / "result.json").read_text())
    assert new["subsample"] == "new" and new["eval_only"] and new["num_classes"] == 5
    assert "* accuracy:" in (out / "base2new/test_new" / TAIL / "log.txt").read_text()

    stamp = (run_dir / "result.json").stat().st_mtime_ns
    again = script("base2new_train.sh", "eurosat", "1", "2", env=e, opts=opts)
    assert again.returncode == 0 and "skip this job" in again.stdout
    assert (run_dir / "result.json").stat().st_mtime_ns == stamp


def test_killed_run_is_resumed_not_skipped(env):
    """Killed after its first epoch with the default settings (the rolling checkpoint), the run resumes."""
    root, e, opts = env
    e = dict(e, OUTPUT=str(root / "output_kill"))
    run_dir = root / "output_kill/base2new/train_base" / TAIL
    cmd = ["bash", str(REPO / "scripts/mpl/base2new_train.sh"), "eurosat", "1", "3", *opts]
    proc = subprocess.Popen(cmd, env=e, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = run_dir / "MultiModalPromptLearner" / "checkpoint"  # written after the first epoch's model-last
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (run_dir / "result.json").exists()  # killed before the end: not a finished run

    rerun = script("base2new_train.sh", "eurosat", "1", "3", env=e, opts=opts)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "Unfinished run found" in rerun.stdout and "will resume training" in rerun.stdout
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 3


def test_reference_whole_model_checkpoint_loads_in_eval_only(env):
    """A checkpoint in the official repository's format (the whole CustomCLIP under MultiModalPromptLearner,
    prompts under ``prompt_learner.``, frozen CLIP weights and class buffers beside them) evaluates exactly like
    our prompt-only checkpoint holding the same prompts."""
    root, e, opts = env
    out = root / "output"
    ours = out / "base2new/train_base" / TAIL
    if not (ours / "result.json").exists():  # run alone: train first
        assert script("base2new_train.sh", "eurosat", "1", "2", env=e, opts=opts).returncode == 0
    ckpt = torch.load(ours / "MultiModalPromptLearner/model.pth.tar-2", map_location="cpu", weights_only=False)
    whole = {f"prompt_learner.{k}": v for k, v in ckpt["state_dict"].items()}
    whole["prompt_learner.token_prefix"] = torch.zeros(5, 1, 64)  # class-dependent buffers the reference saves
    whole["prompt_learner.token_suffix"] = torch.zeros(5, 75, 64)
    whole["image_encoder.conv1.weight"] = torch.zeros(64, 3, 8, 8)  # frozen CLIP weights the reference saves
    whole["logit_scale"] = torch.tensor(4.6)
    ref_dir = root / "reference_run"
    (ref_dir / "MultiModalPromptLearner").mkdir(parents=True)
    torch.save({"state_dict": whole, "epoch": 2, "optimizer": None, "scheduler": None, "val_result": None},
               ref_dir / "MultiModalPromptLearner" / "model.pth.tar-2")

    def evaluate(model_dir, out_dir):
        cmd = [sys.executable, "train.py", "--root", e["DATA"], "--seed", "1", "--trainer", "MPL",
               "--dataset-config-file", "configs/datasets/eurosat.yaml",
               "--config-file", "configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml", "--output-dir", str(out_dir),
               "--model-dir", str(model_dir), "--load-epoch", "2", "--eval-only",
               "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "new", *opts[1:]]
        proc = subprocess.run(cmd, env=e, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((out_dir / "result.json").read_text())

    a = evaluate(ours, root / "eval_ours")
    b = evaluate(ref_dir, root / "eval_reference")
    assert a["num_test"] == b["num_test"] > 0
    assert a["accuracy"] == b["accuracy"] and a["macro_f1"] == b["macro_f1"]


@pytest.mark.parametrize("backbone,expected", [
    ("/nonexistent/ViT-B-16.pt", "MODEL.BACKBONE.NAME: unknown model '/nonexistent/ViT-B-16.pt'"),
    ("ViT-B/16", "put it at"),  # offline: the download fails with where to put the file
])
def test_missing_backbone_is_one_clear_line(env, tmp_path, monkeypatch, capsys, backbone, expected):
    """In-process (train.main), as the CLI would run it: one error line, exit status 2, no output folder."""
    import train

    root, e, opts = env
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "empty_cache"))
    if backbone == "ViT-B/16":  # make sure no real download can happen, even on a machine with network access
        for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(var, "http://127.0.0.1:9")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
    argv = ["--root", e["DATA"], "--trainer", "MPL",
            "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
            "--config-file", str(REPO / "configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml"),
            "--output-dir", str(tmp_path / "out"), *opts[1:], "MODEL.BACKBONE.NAME", backbone]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # a failed start leaves no folder that looks like a run
