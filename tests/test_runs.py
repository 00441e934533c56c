"""A method's run through ``train.py``: bad config values stop it before anything is written, a run describes
itself (``config.yaml``), and ``--eval-only`` finds the checkpoint the README says.
"""
import json

import pytest
import yaml

import train
from trainers.api import run_cfg

from tiny_runs import REPO, tiny_argv


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory, eurosat_root, tiny_ckpt):
    """A CoOp run of 2 epochs on the base classes (its last epoch deployed: no model-best)."""
    out = tmp_path_factory.mktemp("runs") / "coop"
    argv = tiny_argv(eurosat_root, tiny_ckpt, "CoOp", out, ["OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert train.main(argv) == 0
    return out


def one_error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name,opts,says", [
    ("CoOp", ["TRAINER.COOP.PREC", "fp64"], "TRAINER.COOP.PREC is 'fp64'; choose one of fp32, fp16, bf16, amp"),
    ("CoOp", ["TRAINER.COOP.N_CTX", "-1"], "TRAINER.COOP.N_CTX is -1; it must be a whole number at least 1"),
    ("MPL", ["TRAINER.MPL.N_RM_OP", "3"], "impossible MPL schedule: vision layer 1 removes 3 prompt tokens but only 1"),
    ("CoOp", ["TRAINER.COOP.N_CTX", "four"], "command-line options"),
    ("CoOp", ["TRAINER.COOP.CLASS_TOKEN_POSITION", "left"], "TRAINER.COOP.CLASS_TOKEN_POSITION is 'left'"),
    ("CoOp", ["OPTIM.MAX_EPOCH", "0"], "OPTIM.MAX_EPOCH is 0; it must be a whole number at least 1"),
    ("CoOp", ["OPTIM.LR", "-1.0"], "OPTIM.LR is -1.0; the learning rate must be positive"),
    ("CoOp", ["DATALOADER.TRAIN_X.BATCH_SIZE", "0"], "DATALOADER.TRAIN_X.BATCH_SIZE is 0"),
    ("CoOp", ["DATASET.NUM_SHOTS", "-5"], "DATASET.NUM_SHOTS is -5"),
    ("CoOp", ["DATASET.SUBSAMPLE_CLASSES", "half"], "DATASET.SUBSAMPLE_CLASSES is 'half'; choose one of all, base, new"),
    ("CoOp", ["TRAINER.LINEAR_PROBE.TYPE", "mlp"], "TRAINER.LINEAR_PROBE.TYPE is 'mlp'"),
    ("MaPLe", ["TRAINER.MAPLE.PROMPT_DEPTH", "0"], "TRAINER.MAPLE.PROMPT_DEPTH is 0"),
])
def test_a_bad_config_value_is_one_line_and_leaves_no_folder(eurosat_root, tiny_ckpt, tmp_path, capsys, name, opts,
                                                            says):
    out = tmp_path / "out"
    assert train.main(tiny_argv(eurosat_root, tiny_ckpt, name, out, opts)) == 2
    assert says in one_error(capsys)
    assert not out.exists()


def test_a_config_file_must_be_yaml(eurosat_root, tiny_ckpt, tmp_path, capsys):
    code = tmp_path / "config.py"
    code.write_text("open('/tmp/should-not-exist', 'w')\n")
    argv = tiny_argv(eurosat_root, tiny_ckpt, "CoOp", tmp_path / "out")
    argv[argv.index("--config-file") + 1] = str(code)
    assert train.main(argv) == 2
    assert "is not a .yaml file" in one_error(capsys) and not (tmp_path / "out").exists()


def test_a_run_describes_itself(coop_run):
    result = json.loads((coop_run / "result.json").read_text())
    assert result["resolved_config"] == "config.yaml"
    saved = yaml.safe_load((coop_run / "config.yaml").read_text())
    assert saved["TRAINER"]["NAME"] == "CoOp" and saved["OPTIM"]["MAX_EPOCH"] == 2
    assert saved["DATASET"]["SUBSAMPLE_CLASSES"] == "base"
    cfg = run_cfg(str(coop_run), ["USE_CUDA", "False"])  # the config the run resolved, rebuilt and checked
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a" and cfg.MODEL.BACKBONE.NAME == saved["MODEL"]["BACKBONE"]["NAME"]


def test_eval_only_without_an_epoch_loads_the_epoch_the_run_recorded(coop_run, eurosat_root, tiny_ckpt, tmp_path):
    assert not (coop_run / "prompt_learner" / "model-best.pth.tar").exists()
    out = tmp_path / "eval"
    argv = tiny_argv(eurosat_root, tiny_ckpt, "CoOp", out, ["DATASET.SUBSAMPLE_CLASSES", "base"])
    assert train.main(["--eval-only", "--model-dir", str(coop_run), *argv]) == 0
    log = (out / "log.txt").read_text()
    assert f'Loading weights to prompt_learner from "{coop_run / "prompt_learner" / "model.pth.tar-2"}" (epoch = 2)' \
        in log
    # the deployed weights are the last epoch's: the same accuracy on the same images
    assert json.loads((out / "result.json").read_text())["accuracy"] == \
        json.loads((coop_run / "result.json").read_text())["accuracy"]


def test_method_modules_stay_below_the_tools():
    """tools/ is above trainers/ in the import graph: no method reads a run through tools (it reads config.yaml)."""
    for path in (REPO / "trainers").glob("*.py"):
        text = path.read_text()
        assert "from tools" not in text and "import tools" not in text, path.name
