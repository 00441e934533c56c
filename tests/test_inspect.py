"""``python -m tools.inspect RUN_DIR`` on a short demo run (Digits, the shipped tiny-digits CLIP, MPL, 1 epoch)."""
import json

import pytest
import torch
from PIL import Image

import clip
import train
from tools.inspect import main, nearest_words


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    run_dir = root / "output/base2new/train_base/digits/shots_1/MPL/tiny_digits/seed1"
    mp = pytest.MonkeyPatch()
    try:
        rc = train.main(["--root", str(root / "data"), "--seed", "1", "--trainer", "MPL",
                         "--dataset-config-file", "configs/datasets/digits.yaml",
                         "--config-file", "configs/trainers/MPL/tiny_digits.yaml", "--output-dir", str(run_dir),
                         "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
                         "DATALOADER.NUM_WORKERS", "0", "TRAINER.MPL.PREC", "fp32"])
    finally:
        mp.undo()
    assert rc == 0
    return run_dir


def test_inspect_writes_words_tsne_and_rollout(demo_run, capsys):
    assert main([str(demo_run), "--max-images", "25", "--rollout-images", "2", "--words", "3"]) == 0
    printed = capsys.readouterr().out
    out = demo_run / "inspect"
    words = (out / "context_words.txt").read_text()
    assert words.startswith("MPL: the 3 vocabulary words nearest to each learned context vector")
    assert "context 1: x (" in words  # initialised from "X", one epoch moves it little
    for name, min_size in (("tsne.png", (1000, 500)), ("attention_rollout.png", (800, 400))):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
            assert sum(1 for n in im.convert("L").histogram() if n) > 50  # a picture, not a blank canvas
        assert f"wrote {name.split('.')[0]}: {out / name}" in printed
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["method"] == "MPL" and summary["test_images_in_tsne"] == 25
    assert sorted(p.name for p in demo_run.iterdir()) == sorted(
        ["config.yaml", "inspect", "log.txt", "result.json", "tensorboard", "MultiModalPromptLearner"])


def test_unfinished_run_is_refused(tmp_path, capsys):
    (tmp_path / "log.txt").write_text("** Arguments **\n")
    assert main([str(tmp_path)]) == 2
    assert "has no result.json: the run did not finish" in capsys.readouterr().err
    assert not (tmp_path / "inspect").exists()


def test_nearest_words_finds_the_word_itself():
    from tiny_clip import make_tiny_clip

    model = make_tiny_clip("vit")
    ids = clip.tokenize(["cat tree"])[0, 1:3]
    ctx = model.token_embedding.weight[ids].detach() + 1e-4
    found = nearest_words(ctx, model.token_embedding.weight, k=2)
    assert [row[0][0] for row in found] == ["cat", "tree"]
    assert all(row[0][1] < row[1][1] for row in found)
