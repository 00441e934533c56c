"""Predicting on new images with a trained run: ``TEST.SAVE_PREDICTIONS`` (predictions.csv), ``load_run`` /
``Classifier`` and ``python -m tools.predict``.

Demo data (Digits, the shipped tiny-digits CLIP, CoOp, 1 shot, 1 epoch) and a dataset of one's own
(``datasets.imagefolder``): prediction on the eval-only run's test images gives its top-1 for every image.
Every registered method classifies through its evaluation path (untrained runs on the tiny CLIP).
"""
import csv
import json
import uuid
from pathlib import Path

import pytest
import torch

import train
import trainers
from trainers.api import load_run
from trainers.compat import UserError
from tools.predict import main

from tiny_runs import CLASSNAMES, build_for_classes, earlier_opts, saved_method_run, saved_run, tiny_cfg

BASE = ["zero", "one", "two", "three", "four"]
NEW = ["five", "six", "seven", "eight", "nine"]
OTHER_NAMES = ["Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


def run_train(argv):
    mp = pytest.MonkeyPatch()
    try:
        assert train.main([str(a) for a in argv]) == 0
    finally:
        mp.undo()


def demo_argv(root, out, subsample, *opts, dataset="configs/datasets/digits.yaml", trainer="CoOp", flags=()):
    return [*flags, "--root", root / "data", "--seed", "1", "--trainer", trainer, "--dataset-config-file", dataset,
            "--config-file", f"configs/trainers/{trainer}/tiny_digits.yaml", "--output-dir", out,
            "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", subsample, "DATALOADER.NUM_WORKERS", "0", *opts]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """CoOp on the demo digits: trained on the base digits (1 epoch, predictions saved), evaluated on the new
    ones (predictions saved) and on the base ones (the default: none saved)."""
    root = tmp_path_factory.mktemp("predict")
    trained, new, base = root / "train", root / "test_new", root / "test_base"
    run_train(demo_argv(root, trained, "base", "OPTIM.MAX_EPOCH", "1", "TEST.SAVE_PREDICTIONS", "True"))
    run_train(demo_argv(root, new, "new", "TEST.SAVE_PREDICTIONS", "True", flags=["--eval-only", "--model-dir", trained]))
    run_train(demo_argv(root, base, "base", flags=["--eval-only", "--model-dir", trained, "--load-epoch", "1"]))
    return root, trained, new, base


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_csv_lists_each_test_image_with_its_top_classes(demo):
    _, trained, new, base = demo
    result = json.loads((new / "result.json").read_text())
    assert result["classnames"] == NEW
    rows = read_csv(new / "predictions.csv")
    assert list(rows[0]) == ["path", "label", "prediction", "score"] + [
        f"{c}_{i}" for i in range(2, 6) for c in ("prediction", "score")]
    assert len(rows) == result["num_test"] and len({r["path"] for r in rows}) == len(rows)
    for r in rows:
        assert Path(r["path"]).is_file() and r["label"] == Path(r["path"]).parent.name  # Digits: images/<class>/
        names = [r["prediction"]] + [r[f"prediction_{i}"] for i in range(2, 6)]
        scores = [float(r["score"])] + [float(r[f"score_{i}"]) for i in range(2, 6)]
        assert sorted(names) == sorted(NEW) and scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-4  # all five classes: the softmax sums to one
    accuracy = 100 * sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(result["accuracy"], abs=1e-9)
    # a training run saves them for its final test too; without the key nothing is written
    assert len(read_csv(trained / "predictions.csv")) == json.loads((trained / "result.json").read_text())["num_test"]
    assert not (base / "predictions.csv").exists()
    assert json.loads((base / "result.json").read_text())["classnames"] == BASE


def test_predict_gives_the_eval_only_runs_top1_for_every_image(demo, tmp_path, capsys):
    _, _, new, _ = demo
    rows = read_csv(new / "predictions.csv")
    clf = load_run(new)
    assert clf.classnames == NEW
    predictions = clf.classify([r["path"] for r in rows], top_k=5)
    assert [p.classes[0] for p in predictions] == [r["prediction"] for r in rows]
    for p, r in zip(predictions, rows):
        assert abs(p.scores[0] - float(r["score"])) < 2e-6 and p.classes[1] == r["prediction_2"]
    # the command line, on a folder of some of those images in class sub-folders (searched recursively)
    photos = tmp_path / "photos"
    for r in rows[::10]:
        target = photos / r["label"] / Path(r["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(r["path"]).read_bytes())
    out = tmp_path / "preds.csv"
    assert main([str(new), str(photos), "--out", str(out), "--top-k", "2"]) == 0
    assert f"wrote {len(rows[::10])} predictions" in capsys.readouterr().err
    got = read_csv(out)
    assert list(got[0]) == ["path", "prediction", "score", "prediction_2", "score_2"]
    expected = {(r["label"], Path(r["path"]).name): r["prediction"] for r in rows[::10]}
    assert {(Path(r["path"]).parent.name, Path(r["path"]).name): r["prediction"] for r in got} == expected


def test_the_training_run_predicts_its_own_and_new_class_names(demo, tmp_path, capsys):
    _, trained, new, _ = demo
    rows = read_csv(new / "predictions.csv")
    clf = load_run(trained)
    assert clf.classnames == BASE
    rows = rows[::3]
    paths = [r["path"] for r in rows]
    assert {p.classes[0] for p in clf.classify(paths[:20])} <= set(BASE)
    # the new digits' names: the same answers as the eval-only run on them
    assert [p.classes[0] for p in clf.classify(paths, classnames=NEW)] == [r["prediction"] for r in rows]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NEW) + "\n\n")
    for given in (["--classes", ",".join(NEW)], ["--classnames", str(names)]):
        assert main([str(trained), paths[0], *given]) == 0
        printed = read_csv_text(capsys.readouterr().out)
        assert printed == [{"path": paths[0], "prediction": rows[0]["prediction"],
                            "score": f"{float(rows[0]['score']):.6f}"}]


def read_csv_text(text):
    return list(csv.DictReader(text.splitlines()))


def test_own_dataset_predictions_match_its_eval_only_run(tmp_path, tiny_ckpt):
    from datasets.imagefolder import CONFIG_DIR, main as imagefolder
    from test_imagefolder import CLASSES, make_images

    name = f"tpr_{uuid.uuid4().hex[:8]}"
    try:
        assert imagefolder([str(make_images(tmp_path / "photos", n_per_class=8)), "--name", name, "--root",
                            str(tmp_path / "data")]) == 0
        opts = ["MODEL.BACKBONE.NAME", tiny_ckpt, "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32"]
        dataset = f"configs/datasets/{name}.yaml"
        trained, new = tmp_path / "train", tmp_path / "test_new"
        run_train(demo_argv(tmp_path, trained, "base", "OPTIM.MAX_EPOCH", "1", *opts, dataset=dataset))
        run_train(demo_argv(tmp_path, new, "new", "TEST.SAVE_PREDICTIONS", "True", *opts, dataset=dataset,
                            flags=["--eval-only", "--model-dir", trained]))
    finally:
        (Path(CONFIG_DIR) / f"{name}.yaml").unlink(missing_ok=True)
    rows = read_csv(new / "predictions.csv")
    assert len(rows) == json.loads((new / "result.json").read_text())["num_test"] > 0
    clf = load_run(new)  # the run's config.yaml is enough: the dataset's yaml is gone
    assert sorted(clf.classnames) == sorted(c.replace("_", " ").replace("-", " ") for c in CLASSES[2:]) or \
        len(clf.classnames) == 2
    assert [p.classes[0] for p in clf.classify([r["path"] for r in rows])] == [r["prediction"] for r in rows]


# ---------------------------------------------------------------------------------------------------------
# Every method, options, refusals
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt, tiny_teacher_ckpt, eurosat_root):
    return tmp_path_factory.mktemp("methods"), tiny_ckpt, tiny_teacher_ckpt, eurosat_root


def method_run(env, name, opts=(), folder=None):
    root, ckpt, teacher, data = env
    return saved_method_run(root, data, ckpt, teacher, name, opts, folder)


def eurosat_images(env, n=6):
    return [str(f) for f in sorted((env[3] / "eurosat" / "2750").rglob("*.jpg"))[:n]]


#: PromptKD builds its teacher's features too (over 5 s): the slow tier
METHODS = [pytest.param(m.name, marks=pytest.mark.slow) if m.name == "PromptKD" else m.name
           for m in trainers.list_methods()]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_classifies_through_its_evaluation_path(env, name):
    root, ckpt, teacher, data = env
    extra = earlier_opts(name, ckpt, root) + (["KD.BACKBONE_NAME", str(teacher)] if name == "CasPL" else [])
    reference = build_for_classes(tiny_cfg(data, ckpt, name, root / "out", extra))
    clf = load_run(saved_run(reference, root / f"run-{name}-ref"), device="cpu")
    files = eurosat_images(env)
    batch = torch.stack([clf._load(p) for p in files])
    with reference.evaluating() if hasattr(reference, "evaluating") else torch.no_grad():
        expected = reference.model_inference(batch).to(torch.float32)
    torch.testing.assert_close(clf.logits(files), expected, rtol=0, atol=1e-5)
    predictions = clf.classify(files, top_k=3)
    assert [p.path for p in predictions] == files
    assert [p.classes[0] for p in predictions] == [CLASSNAMES[i] for i in expected.argmax(-1)]


def test_device_precision_and_batch_size_options(env):
    folder = method_run(env, "CoOp")
    files = eurosat_images(env)
    fp32 = load_run(folder, device="cpu", precision="fp32", batch_size=64)
    bf16 = load_run(folder, device="cpu", precision="bf16", batch_size=2)
    assert str(fp32.trainer().precision) == "fp32" and str(bf16.trainer().precision) == "bf16"
    assert next(bf16.trainer().model.clip_model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(bf16.logits(files), fp32.logits(files), rtol=0, atol=0.1)
    torch.testing.assert_close(load_run(folder, batch_size=1).logits(files), fp32.logits(files), rtol=0, atol=1e-5)
    for kwargs, words in (({"device": "tpu"}, "choose one of auto, cpu, cuda"),
                          ({"precision": "fp8"}, "PREC is 'fp8'; choose one of"),
                          ({"batch_size": 0}, "batch size 0: give a whole number of at least 1")):
        with pytest.raises(UserError, match=words):
            load_run(folder, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            load_run(folder, device="cuda")


def test_class_specific_contexts_refuse_new_class_names(env, tmp_path, capsys):
    folder = method_run(env, "CoOp", ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.CSC", "True"], folder="run-csc")
    clf = load_run(folder)
    files = eurosat_images(env)
    assert len(clf.classify(files)) == len(files)  # its own classes
    with pytest.raises(UserError, match=r"one row per class of the 5 classes it was trained on.*CSC False"):
        clf.classify(files, classnames=OTHER_NAMES)
    out = tmp_path / "p.csv"
    assert main([str(folder), files[0], "--classes", ",".join(OTHER_NAMES), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the checkpoint's ctx hold one row per class")
    assert not out.exists()


def test_runs_from_before_result_json_listed_their_classes(env, tmp_path):
    folder = method_run(env, "CoOp", folder="run-old")
    result = json.loads((folder / "result.json").read_text())
    del result["classnames"]
    (folder / "result.json").write_text(json.dumps(result))
    assert load_run(folder).classnames == CLASSNAMES  # a training run: the classes its checkpoint records
    evaluated = tmp_path / "eval-only"  # an evaluation-only run may have had other classes: they must be given
    evaluated.mkdir()
    (evaluated / "config.yaml").write_text((folder / "config.yaml").read_text())
    (evaluated / "result.json").write_text(json.dumps({"eval_only": True, "model_dir": str(folder), "epochs": 1}))
    clf = load_run(evaluated)
    with pytest.raises(UserError, match="records no class names.*give the class names"):
        clf.classify(eurosat_images(env, 2))
    assert [len(p.classes) for p in clf.classify(eurosat_images(env, 2), classnames=OTHER_NAMES, top_k=2)] == [2, 2]


def test_bad_input_is_one_line_and_nothing_is_written(env, tmp_path, capsys):
    folder = method_run(env, "CoOp")
    image = eurosat_images(env, 1)[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out.csv"
    cases = [
        ([str(tmp_path / "nowhere"), image], 'no run folder at'),
        ([str(tmp_path / "unfinished"), image], "has no result.json: the run did not finish"),
        ([str(folder), str(tmp_path / "missing.png")], "no file or folder at"),
        ([str(folder), str(tmp_path / "empty")], "no image files in the folder"),
        ([str(folder), str(tmp_path / "notes.txt")], "cannot read the image"),
        ([str(folder)], "give images or folders to classify, or --export HEAD"),
        ([str(folder), image, "--classes", "cat"], "--classes: give at least two non-empty class names"),
        ([str(folder), image, "--classes", "cat,dog,cat"], "each class name once; repeated: cat"),
        ([str(folder), image, "--classnames", str(tmp_path / "none.txt")], "class-name file not found"),
        ([str(folder), image, "--top-k", "0"], "--top-k is 0"),
        ([str(folder), image, "--out", str(tmp_path / "no" / "p.csv")], "does not exist"),
    ]
    for argv, words in cases:
        assert main(argv + (["--out", str(out)] if "--out" not in argv else [])) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (argv, err)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt", "unfinished"]


# ---------------------------------------------------------------------------------------------------------
# predictions.csv under torchrun: each rank's rows, gathered in the split's order
# ---------------------------------------------------------------------------------------------------------
N_IMAGES, N_CLASSES, BATCH = 23, 7, 4


def _record(out_dir, batches):
    from dassl.engine.predictions import PredictionRecorder

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(N_IMAGES, N_CLASSES, generator=g), torch.randint(N_CLASSES, (N_IMAGES,), generator=g)
    recorder = PredictionRecorder([f"class {i}" for i in range(N_CLASSES)], str(out_dir))
    for idx in batches:
        recorder.add({"impath": [f"/data/{i:03d}.png" for i in idx], "label": labels[idx]}, logits[idx])
    return recorder.write()


def _rank(rank, world, port, out_dir):
    import os

    import torch.distributed as dist
    from torch.utils.data import SequentialSampler

    from dassl.data.distributed_sampler import ShardedEvalBatchSampler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _record(out_dir, list(ShardedEvalBatchSampler(SequentialSampler(range(N_IMAGES)), BATCH, rank, world)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and the project: about 25 s
def test_predictions_of_two_processes_are_gathered_in_order(tmp_path):
    import socket

    import torch.multiprocessing as mp

    single = Path(_record(tmp_path / "one", [list(range(i, min(i + BATCH, N_IMAGES)))
                                             for i in range(0, N_IMAGES, BATCH)]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, str(tmp_path / "two")), nprocs=2, join=True, start_method="spawn")
    rows = read_csv(tmp_path / "two" / "predictions.csv")
    assert [r["path"] for r in rows] == [f"/data/{i:03d}.png" for i in range(N_IMAGES)]
    assert (tmp_path / "two" / "predictions.csv").read_text() == single.read_text()
