"""The tiny-digits CLIP: the shipped checkpoint, its zero-shot accuracy, its synthetic data and its pretraining."""
import dataclasses
import functools
import hashlib
import re

import pytest
import torch
import torch.nn.functional as F

import clip
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from datasets.digits import CLASSNAMES
from PIL import Image
from pretrain import synthetic, tiny_digits

#: measured for the shipped checkpoint: 75.6% (all 10 classes, test split); asserted with a margin
SHIPPED_ZERO_SHOT = 0.756
MARGIN = 0.05


@pytest.fixture(scope="module")
def shipped():
    path = tiny_digits.checkpoint_path()
    return path, clip.read_state_dict(path)


def test_shipped_checkpoint_is_verified_and_in_openai_format(shipped):
    path, state_dict = shipped
    assert path == str(tiny_digits.SHIPPED)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == tiny_digits.SHA256
    assert clip.config_from_state_dict(state_dict) == tiny_digits.ARCH
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state_dict and "text_projection" in state_dict
    model = clip.build_model(state_dict)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000
    assert model.vocab_size == 49408 and model.context_length == 77 and model.visual.input_resolution == 32


def test_zero_shot_on_the_digits_test_split_from_disk(shipped, tmp_path):
    """fp32 on the CPU, the 540 test images as the dataset stores them, prompt "a photo of a {classname}."."""
    _, state_dict = shipped
    model = clip.build_model(state_dict)
    assert model.dtype == torch.float32
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS = str(tmp_path), "Digits", -1
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    test = build_dataset(cfg).test
    transform = clip.image_transform(model.visual.input_resolution)
    images = torch.stack([transform(Image.open(item.impath)) for item in test])
    labels = torch.tensor([item.label for item in test])
    with torch.no_grad():
        text = F.normalize(model.encode_text(clip.tokenize([f"a photo of a {c}." for c in CLASSNAMES])), dim=-1)
        pred = (F.normalize(model.encode_image(images), dim=-1) @ text.T).argmax(1)
    accuracy = (pred == labels).double().mean().item()
    assert accuracy >= 0.2  # at least twice chance (10 classes)
    assert accuracy >= SHIPPED_ZERO_SHOT - MARGIN
    # the in-memory evaluation of the pretraining script sees the same images
    assert tiny_digits.zero_shot_accuracy(model)["all"] == pytest.approx(accuracy)


def test_clip_load_by_name(tmp_path):
    model, preprocess = clip.load("tiny-digits", download_root=tmp_path)
    assert model.visual.input_resolution == 32 and preprocess(Image.new("RGB", (32, 32))).shape == (3, 32, 32)


def test_synthetic_data_is_deterministic_for_a_seed():
    a, b, c = (synthetic.SyntheticDigits(seed=s) for s in (0, 0, 1))
    images_a, digits_a, captions_a = a.batch(12)
    images_b, digits_b, captions_b = b.batch(12)
    images_c, _, _ = c.batch(12)
    assert torch.equal(images_a, images_b) and torch.equal(digits_a, digits_b) and captions_a == captions_b
    assert not torch.equal(images_a, images_c)
    assert images_a.shape == (12, 3, 32, 32) and 0 <= images_a.min() and images_a.max() <= 1
    for digit, text in zip(digits_a.tolist(), captions_a):
        assert re.search(rf"\b({CLASSNAMES[digit]}|{digit})\b", text), text


def test_fonts_and_glyphs():
    names = [name for name, _ in synthetic.fonts()]
    assert names[-1] == "PIL-default" and len(names) == len(synthetic.FONT_FILES) + 1
    masks, digits = synthetic.glyph_bank()
    assert masks.shape[1:] == (1, synthetic.GLYPH_PX, synthetic.GLYPH_PX) and 0 <= masks.min() and masks.max() <= 1
    per_font = (10 + 1) * len(synthetic.STROKE_WEIGHTS)  # sevens come plain and crossed
    assert len(masks) == len(names) * per_font
    first_font = masks[:per_font:len(synthetic.STROKE_WEIGHTS)]  # one weight of each glyph of the first font
    assert all(not torch.equal(first_font[i], first_font[j]) for i in range(11) for j in range(i))
    assert all(m.sum() > 0 for m in masks)


def test_captions_name_digits_as_the_dataset_does():
    assert synthetic.DIGIT_WORDS == CLASSNAMES
    assert "a photo of a {}." in synthetic.TEMPLATES  # the evaluation prompt is a training caption
    assert synthetic.caption(0, 7, numeral=False) == "a photo of a seven."
    assert synthetic.caption(0, 7, numeral=True) == "a photo of a 7."


def test_multi_positive_loss_reduces_to_clip_loss():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    distinct = torch.arange(6)
    logits = 10 * img @ txt.T
    clip_loss = 0.5 * (F.cross_entropy(logits, distinct) + F.cross_entropy(logits.T, distinct))
    assert tiny_digits.image_text_loss(img, txt, distinct, torch.tensor(10.0)) == pytest.approx(clip_loss.item())
    # with repeated digits every caption of the image's digit is a positive
    digits = torch.tensor([0, 0, 1, 1, 2, 2])
    aligned = F.normalize(torch.eye(8)[digits * 2], dim=-1)
    assert tiny_digits.image_text_loss(aligned, aligned, digits, torch.tensor(50.0)) < 0.7  # ~log(2)


TINY = dict(caption_steps=2, steps=3, batch_size=8, warmup=1)


def test_pretraining_is_reproducible():
    a = tiny_digits.pretrain(tiny_digits.PretrainConfig(**TINY), threads=1, log=lambda _: None)
    b = tiny_digits.pretrain(tiny_digits.PretrainConfig(**TINY), threads=1, log=lambda _: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.proj"], tiny_digits.build(0).state_dict()["visual.proj"])  # it trained


def test_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert tiny_digits.main(["--out", str(out), "--threads", "1", *flags]) == 0
    log = capsys.readouterr().out
    assert "zero-shot on the handwritten digits (test, 540 images" in log and "SHA256" in log
    model = clip.build_model(clip.read_state_dict(out))
    assert clip.config_from_state_dict(model.state_dict()) == tiny_digits.ARCH
    assert tiny_digits.main(["--out", str(out), "--threads", "0"]) == 2


def test_checkpoint_is_built_into_the_cache_when_not_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_digits, "SHIPPED", tmp_path / "absent.pt")
    monkeypatch.setattr(tiny_digits, "PretrainConfig", functools.partial(tiny_digits.PretrainConfig, **TINY))
    path = tiny_digits.checkpoint_path(tmp_path / "cache")
    assert path == str(tmp_path / "cache" / tiny_digits.CACHE_NAME)
    mtime = (tmp_path / "cache" / tiny_digits.CACHE_NAME).stat().st_mtime_ns
    assert clip.config_from_state_dict(clip.read_state_dict(path)) == tiny_digits.ARCH
    assert tiny_digits.checkpoint_path(tmp_path / "cache") == path  # reused, not rebuilt
    assert (tmp_path / "cache" / tiny_digits.CACHE_NAME).stat().st_mtime_ns == mtime


def test_a_damaged_shipped_file_is_not_used(tmp_path, monkeypatch):
    damaged = tmp_path / "tiny-digits.pt"
    damaged.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(tiny_digits, "SHIPPED", damaged)
    (tmp_path / "cache").mkdir()
    cached = tmp_path / "cache" / tiny_digits.CACHE_NAME
    cached.write_bytes(b"stands in for a cached build")
    with pytest.warns(UserWarning, match="expected SHA256"):
        assert tiny_digits.checkpoint_path(tmp_path / "cache") == str(cached)


def test_config_fields_have_cli_flags():
    names = {f.name for f in dataclasses.fields(tiny_digits.PretrainConfig)}
    args = tiny_digits._parse(["--out", "x", "--steps", "7"])
    assert args.steps == 7 and all(hasattr(args, n) for n in names)
