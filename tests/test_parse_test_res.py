"""parse_test_res.py on logs in Dassl's real format: training and eval-only logs, one- and two-decimal results,
--ci95, --multi-exp, --keyword, log.txt-<timestamp> files, and the "Nothing found" failure."""
import subprocess
import sys
from pathlib import Path

import pytest

import parse_test_res

REPO = Path(__file__).resolve().parents[1]

CONFIG_DUMP = """\
************
** Config **
************
DATALOADER:
  K_TRANSFORMS: 1
  NUM_WORKERS: 8
  TEST:
    BATCH_SIZE: 100
    SAMPLER: SequentialSampler
  TRAIN_X:
    BATCH_SIZE: 4
    N_DOMAIN: 0
DATASET:
  ALL_AS_UNLABELED: False
  CIFAR_C_TYPE: 
  NAME: {dataset}
  NUM_LABELED: -1
  NUM_SHOTS: 16
  ROOT: /data
  SOURCE_DOMAINS: ()
  SUBSAMPLE_CLASSES: {subsample}
  VAL_PERCENT: 0.1
OPTIM:
  LR: 0.0035
  MAX_EPOCH: 5
  NAME: sgd
OUTPUT_DIR: {output_dir}
SEED: {seed}
TEST:
  EVALUATOR: Classification
  FINAL_MODEL: last_step
TRAINER:
  MPL:
    N_CTX: 1
    PREC: fp16
  NAME: MPL
USE_CUDA: True
VERBOSE: True
Collecting env info ...
** System info **
PyTorch version: 2.1.0
Is debug build: False

Loading trainer: MPL
Loading dataset: {dataset}
Reading split from /data/eurosat/split_zhou_EuroSAT.json
Loading preprocessed few-shot data from /data/eurosat/split_fewshot/shot_16-seed_{seed}.pkl
SUBSAMPLE {subsample_upper} CLASSES!
Building transform_train
+ random resized crop (size=(224, 224), scale=(0.08, 1.0))
---------  -------
Dataset    EuroSAT
# classes  5
# train_x  80
# val      20
# test     4,200
---------  -------
Loading CLIP (backbone: ViT-B/16)
Building custom CLIP
Loading evaluator: Classification
"""


def _result_block(acc, decimals=1, total=4200):
    correct = round(total * acc / 100)
    f = f"{{:.{decimals}f}}"
    return (f"=> result\n* total: {total:,}\n* correct: {correct:,}\n* accuracy: {f.format(acc)}%\n"
            f"* error: {f.format(100 - acc)}%\n* macro_f1: {f.format(acc - 0.4)}%\n")


def dassl_log(acc, seed=1, *, eval_only=False, end_line="Finish training", decimals=1, val_acc=None,
              finished=True, dataset="EuroSAT", subsample="base", output_dir="output/run"):
    """A log.txt as Dassl writes it; ``val_acc`` adds a validation result block before the end of training."""
    args = (f"***************\n** Arguments **\n***************\nbackbone: \n"
            f"config_file: configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml\n"
            f"dataset_config_file: configs/datasets/eurosat.yaml\neval_only: {eval_only}\nhead: \n"
            f"load_epoch: {5 if eval_only else None}\n"
            f"model_dir: {'output/train_base/seed%d' % seed if eval_only else ''}\n"
            f"no_train: False\nopts: ['DATASET.NUM_SHOTS', '16', 'DATASET.SUBSAMPLE_CLASSES', '{subsample}']\n"
            f"output_dir: {output_dir}\nresume: \nroot: /data\nseed: {seed}\nsource_domains: None\n"
            f"target_domains: None\ntrainer: MPL\ntransforms: None\n")
    text = args + CONFIG_DUMP.format(dataset=dataset, subsample=subsample, subsample_upper=subsample.upper(),
                                     output_dir=output_dir, seed=seed)
    if eval_only:
        text += ('Loading weights to MultiModalPromptLearner from "output/train_base/seed1/MultiModalPromptLearner/'
                 'model.pth.tar-5" (epoch = 5)\nEvaluate on the *test* set\n')
        if finished:
            text += _result_block(acc, decimals)
        return text
    text += "No checkpoint found, train from scratch\nInitialize tensorboard (log_dir=output/run/tensorboard)\n"
    for epoch in range(1, 6):
        text += (f"epoch [{epoch}/5] batch [20/20] time 0.089 (0.150) data 0.000 (0.012) loss 1.2345 (1.5678) "
                 f"lr 3.5000e-03 eta 0:00:{12 - 2 * epoch:02d}\n")
        if val_acc is not None:
            text += "Evaluate on the *val* set\n" + _result_block(val_acc, decimals, total=20)
    if not finished:
        return text  # crashed or still running
    text += ("Checkpoint saved to output/run/MultiModalPromptLearner/model.pth.tar-5\n"
             f"{end_line}\nDeploy the last-epoch model\nEvaluate on the *test* set\n")
    return text + _result_block(acc, decimals) + "Elapsed: 0:13:32\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_main(capsys, *argv):
    parse_test_res.main(parse_test_res.build_parser().parse_args([str(a) for a in argv]))
    return capsys.readouterr()


def test_training_logs_parse_without_test_log(tmp_path, capsys):
    for seed, acc in [(1, 90.0), (2, 91.0), (3, 92.5)]:
        # a validation block before the end of training must not count
        write(tmp_path / f"seed{seed}" / "log.txt", dassl_log(acc, seed, val_acc=50.0))
    out = run_main(capsys, tmp_path).out
    assert f"Parsing files in {tmp_path}" in out
    assert f"file: {tmp_path / 'seed1' / 'log.txt'}. accuracy: 90.00%. " in out
    assert f"file: {tmp_path / 'seed3' / 'log.txt'}. accuracy: 92.50%. " in out
    # mean (90 + 91 + 92.5) / 3 = 91.1667; population std sqrt((1.1667² + 0.1667² + 1.3333²) / 3) = 1.0274
    assert "* accuracy: 91.17% +- 1.03%" in out
    assert out.splitlines()[-1] == "==="


def test_ci95(tmp_path, capsys):
    for seed, acc in [(1, 90.0), (2, 91.0), (3, 92.5)]:
        write(tmp_path / f"seed{seed}" / "log.txt", dassl_log(acc, seed))
    # 1.96 * 1.0274 / sqrt(3) = 1.1626
    assert "* accuracy: 91.17% +- 1.16%" in run_main(capsys, tmp_path, "--ci95").out


def test_old_end_line_and_two_decimal_format(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", dassl_log(90.26, 1, end_line="Finished training", decimals=2))
    write(tmp_path / "seed2" / "log.txt", dassl_log(90.1, 2, decimals=1))
    out = run_main(capsys, tmp_path).out
    assert "accuracy: 90.26%. " in out and "accuracy: 90.10%. " in out
    # mean (90.26 + 90.1) / 2 = 90.18; population std 0.08
    assert "* accuracy: 90.18% +- 0.08%" in out


def test_eval_only_logs(tmp_path, capsys):
    for seed, acc in [(1, 70.0), (2, 72.0)]:
        write(tmp_path / f"seed{seed}" / "log.txt", dassl_log(acc, seed, eval_only=True, subsample="new"))
    # recognised as eval-only from the arguments block, so no flag is needed ...
    assert "* accuracy: 71.00% +- 1.00%" in run_main(capsys, tmp_path).out
    # ... and --test-log reads them as the reference does
    assert "* accuracy: 71.00% +- 1.00%" in run_main(capsys, tmp_path, "--test-log").out


def test_test_log_flag_on_training_logs_takes_the_final_test(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", dassl_log(88.8, 1, val_acc=40.0))
    assert "* accuracy: 88.80% +- 0.00%" in run_main(capsys, tmp_path, "--test-log").out


def test_keyword(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", dassl_log(90.0, 1))
    out = run_main(capsys, tmp_path, "--keyword", "macro_f1").out
    assert "macro_f1: 89.60%. " in out and "* macro_f1: 89.60% +- 0.00%" in out


def test_multi_exp(tmp_path, capsys):
    for exp, accs in [("exp-1", [80.0, 82.0]), ("exp-2", [60.0, 64.0])]:
        for seed, acc in enumerate(accs, 1):
            write(tmp_path / exp / f"seed{seed}" / "log.txt", dassl_log(acc, seed))
    out = run_main(capsys, tmp_path, "--multi-exp").out
    assert "* accuracy: 81.00% +- 1.00%" in out and "* accuracy: 62.00% +- 2.00%" in out
    tail = out.splitlines()[-2:]
    assert tail == ["Average performance", "* accuracy: 71.50%"]  # (81 + 62) / 2


def test_newest_complete_log_wins(tmp_path, capsys):
    seed = tmp_path / "seed1"
    write(seed / "log.txt", dassl_log(80.0))  # the first run
    write(seed / "log.txt-2024-05-01-10-00-00", dassl_log(85.0))  # a re-run
    write(seed / "log.txt-2024-06-01-10-00-00", dassl_log(99.0, finished=False))  # a newer re-run that crashed
    captured = run_main(capsys, tmp_path)
    assert f"file: {seed / 'log.txt-2024-05-01-10-00-00'}. accuracy: 85.00%. " in captured.out
    assert "* accuracy: 85.00% +- 0.00%" in captured.out
    assert "log.txt-2024-06-01-10-00-00" in captured.err  # the skipped log is named


def test_unfinished_training_log_is_not_counted(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", dassl_log(90.0, 1))
    write(tmp_path / "seed2" / "log.txt", dassl_log(10.0, 2, val_acc=33.0, finished=False))
    out = run_main(capsys, tmp_path).out
    assert "* accuracy: 90.00% +- 0.00%" in out and "33.00" not in out


def test_nothing_found_cli(tmp_path):
    write(tmp_path / "seed1" / "log.txt", dassl_log(90.0, finished=False))
    p = subprocess.run([sys.executable, str(REPO / "parse_test_res.py"), str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 1
    assert f"Nothing found in {tmp_path}" in p.stderr


def test_cli_end_to_end(tmp_path):
    for seed, acc in [(1, 90.0), (2, 92.0)]:
        write(tmp_path / f"seed{seed}" / "log.txt", dassl_log(acc, seed))
    p = subprocess.run([sys.executable, str(REPO / "parse_test_res.py"), str(tmp_path), "--ci95"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # std 1.0, ci95 = 1.96 * 1 / sqrt(2) = 1.3859
    assert "* accuracy: 91.00% +- 1.39%" in p.stdout


@pytest.mark.parametrize("decimals", [1, 2])
def test_log_reader_fields(tmp_path, decimals):
    from tools.dassl_log import read_log

    log = read_log(write(tmp_path / "log.txt", dassl_log(94.25 if decimals == 2 else 94.3, 2, decimals=decimals,
                                                         dataset="DTD", output_dir="output/x/seed2")))
    assert log.finished and not log.eval_only
    assert log.metrics["accuracy"] == (94.25 if decimals == 2 else 94.3)
    assert log.num_test == 4200 and log.elapsed_s == 13 * 60 + 32
    assert log.cfg["DATASET.NAME"] == "DTD" and log.cfg["SEED"] == "2"
    assert log.cfg["DATALOADER.TEST.BATCH_SIZE"] == "100" and log.cfg["TRAINER.NAME"] == "MPL"
    assert log.cfg["TRAINER.MPL.N_CTX"] == "1" and log.cfg["OPTIM.MAX_EPOCH"] == "5"
    assert log.args["config_file"].endswith("vit_b4_c1_add2_rm1.yaml") and log.args["output_dir"] == "output/x/seed2"
