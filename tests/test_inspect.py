"""``python -m tools.inspect RUN_DIR`` on a short demo run (Digits, the shipped tiny-digits CLIP, MPL, 1 epoch)."""
import json

import pytest
import torch
from PIL import Image

import clip
import train
import tools.inspect
from tools.inspect import MIN_TSNE_IMAGES, main, nearest_words

from plot_checks import covered_points, text_overlaps, texts_on_images, texts_outside


def demo_train(root, trainer):
    """A short demo run (Digits, tiny-digits, 1 shot, 1 epoch) of ``trainer``; its run folder."""
    run_dir = root / f"output/base2new/train_base/digits/shots_1/{trainer}/tiny_digits/seed1"
    rc = train.main(["--root", str(root / "data"), "--seed", "1", "--trainer", trainer,
                     "--dataset-config-file", "configs/datasets/digits.yaml",
                     "--config-file", f"configs/trainers/{trainer}/tiny_digits.yaml", "--output-dir", str(run_dir),
                     "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
                     "DATALOADER.NUM_WORKERS", "0"])
    assert rc == 0
    return run_dir


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return demo_train(tmp_path_factory.mktemp("inspect"), "MPL")


@pytest.fixture(scope="module")
def text_only_run(tmp_path_factory):
    """CoOp: prompts on the text side only, so its image features and rollout are the frozen CLIP's."""
    return demo_train(tmp_path_factory.mktemp("inspect_coop"), "CoOp")


@pytest.fixture
def figures(monkeypatch):
    """The figures tools.inspect saves, by file name (they are still written)."""
    saved = {}
    real = tools.inspect._save
    monkeypatch.setattr(tools.inspect, "_save", lambda fig, path: (saved.__setitem__(path.name, fig),
                                                                    real(fig, path))[1])
    return saved


def assert_readable(fig):
    """Nothing overlaps: texts with texts or images, texts inside the figure, no legend or label on a point."""
    assert text_overlaps(fig) == [] and texts_outside(fig) == [] and texts_on_images(fig) == []
    for ax in fig.axes:
        assert covered_points(fig, ax) == []


def test_inspect_writes_words_tsne_and_rollout(demo_run, capsys):
    assert main([str(demo_run), "--max-images", "25", "--rollout-images", "2", "--words", "3"]) == 0
    printed = capsys.readouterr().out
    out = demo_run / "inspect"
    words = (out / "context_words.txt").read_text()
    assert words.startswith("MPL: the 3 vocabulary words nearest to each learned context vector")
    # the words listed are the nearest vocabulary entries of the context the run saved
    ctx = torch.load(demo_run / "MultiModalPromptLearner" / "model.pth.tar-1", weights_only=True)["state_dict"]["ctx"]
    embedding = clip.load("tiny-digits", device="cpu")[0].token_embedding.weight
    expected = nearest_words(ctx, embedding, k=3)
    for i, row in enumerate(expected):
        assert f"context {i + 1}: " + ", ".join(f"{w} ({d:.3f})" for w, d in row) in words
    for name, min_size in (("tsne.png", (1000, 500)), ("attention_rollout.png", (800, 400))):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
            assert sum(1 for n in im.convert("L").histogram() if n) > 50  # a picture, not a blank canvas
        assert f"wrote {name.split('.')[0]}: {out / name}" in printed
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["method"] == "MPL" and summary["test_images_in_features"] == 25
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


@pytest.mark.slow
def test_pictures_of_a_method_with_vision_prompts_are_readable(demo_run, figures, capsys):
    assert main([str(demo_run), "--max-images", "30", "--rollout-images", "3", "--out",
                 str(demo_run / "inspect_pictures")]) == 0
    tsne, rollout = figures["tsne.png"], figures["attention_rollout.png"]
    assert [ax.get_title() for ax in tsne.axes if ax.collections][:2] == ["frozen CLIP (no prompts)",
                                                                         "with the learned prompts"]
    images = [ax for ax in rollout.axes if ax.get_images()]
    assert len(images) == 3 * 4  # image, frozen, prompted, difference per test image
    diffs = [ax.get_images()[0].get_array() for ax in images if ax.get_title().startswith("prompts minus frozen")]
    assert len(diffs) == 3 and all(float(abs(d).max()) > tools.inspect.ROLLOUT_ATOL for d in diffs)  # not blank
    for fig in (tsne, rollout):
        assert_readable(fig)
    # colour bars print plain tick labels: no offset or power-of-ten text over the titles
    bars = [ax for ax in rollout.axes if not ax.get_images() and ax.get_visible()]
    assert bars and all(ax.yaxis.get_offset_text().get_text() == "" for ax in bars)


def test_a_text_only_method_draws_no_empty_panels(text_only_run, figures, capsys):
    assert main([str(text_only_run), "--max-images", "30", "--rollout-images", "3"]) == 0
    tsne, rollout = figures["tsne.png"], figures["attention_rollout.png"]
    panels = [ax for ax in tsne.axes if ax.collections]
    assert len(panels) == 1 and "CoOp has no vision prompts" in panels[0].get_title()
    images = [ax for ax in rollout.axes if ax.get_images()]
    assert len(images) == 3 * 2 and not any("minus" in ax.get_title() for ax in images)  # no blank differences
    assert "CoOp's prompts leave the image encoder as the frozen CLIP's" in rollout.get_suptitle()
    for fig in (tsne, rollout):
        assert_readable(fig)


def test_too_few_images_for_t_sne_are_drawn_by_pca(text_only_run, figures, capsys):
    out = text_only_run / "inspect_few"
    assert main([str(text_only_run), "--max-images", str(MIN_TSNE_IMAGES - 8), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"PCA instead of t-SNE: {MIN_TSNE_IMAGES - 8} test images" in printed
    assert (out / "pca.png").is_file() and not (out / "tsne.png").exists()
    fig = figures["pca.png"]
    assert f"t-SNE needs at least {MIN_TSNE_IMAGES} images" in fig.get_suptitle()
    assert_readable(fig)
