"""build_transform: Dassl's log lines, op order, cfg defaults, output shapes, determinism, every choice name."""
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data.transforms import AVAI_CHOICES, INTERPOLATION_MODES, build_transform

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _cfg(transforms=("random_resized_crop", "random_flip", "normalize"), size=(224, 224)):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = size
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.INPUT.TRANSFORMS = transforms
    return cfg


def _image(w=40, h=30):
    """A deterministic gradient image, not square, so resizing and cropping show."""
    data = bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(h) for x in range(w) for c in range(3))
    return Image.frombytes("RGB", (w, h), data)


def test_coop_config_prints_dassl_lines(capsys):
    cfg = _cfg()
    build_transform(cfg, is_train=True)
    build_transform(cfg, is_train=False)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_train",
        "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
        "Building transform_test",
        "+ resize the smaller edge to 224",
        "+ 224x224 center crop",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]


def test_train_ops_follow_dassl_order_and_cfg_defaults():
    cfg = _cfg(("normalize", "random_flip", "random_resized_crop"))  # listed out of order
    ops = build_transform(cfg, is_train=True).transforms
    assert [type(op) for op in ops] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    rrc = ops[0]
    assert rrc.size == (224, 224) and rrc.scale == (0.08, 1.0) and rrc.interpolation == INTERPOLATION_MODES["bicubic"]
    assert ops[1].p == 0.5
    assert ops[3].mean == CLIP_MEAN and ops[3].std == CLIP_STD

    # Without a crop the image is first resized to INPUT.SIZE (aspect not kept).
    ops = build_transform(_cfg(("random_flip",)), is_train=True).transforms
    assert isinstance(ops[0], T.Resize) and ops[0].size == (224, 224)


def test_output_shapes_and_test_transform_is_resize_then_center_crop():
    cfg = _cfg(size=(16, 16))
    img = _image()
    assert build_transform(cfg, is_train=True)(img).shape == (3, 16, 16)

    out = build_transform(cfg, is_train=False)(img)
    # shorter side (30) -> 16, so 40x30 -> 21x16, then the central 16x16
    resized = F.resize(img, 16, interpolation=T.InterpolationMode.BICUBIC)
    assert resized.size == (21, 16)
    expected = F.normalize(F.to_tensor(F.center_crop(resized, [16, 16])), CLIP_MEAN, CLIP_STD)
    assert torch.equal(out, expected)

    cfg = _cfg(size=(12, 20))  # non-square target: smaller edge to max(SIZE), then a 12x20 crop
    assert build_transform(cfg, is_train=False)(img).shape == (3, 12, 20)


def test_train_transform_is_deterministic_given_the_seed():
    tfm = build_transform(_cfg(size=(16, 16)), is_train=True)
    img = _image()
    torch.manual_seed(3)
    first = torch.stack([tfm(img) for _ in range(4)])
    torch.manual_seed(3)
    again = torch.stack([tfm(img) for _ in range(4)])
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])  # the crops do vary from call to call
    torch.manual_seed(4)
    assert not torch.equal(first, torch.stack([tfm(img) for _ in range(4)]))


@pytest.mark.parametrize("choice", AVAI_CHOICES)
def test_every_choice_builds_and_runs(choice, capsys):
    cfg = _cfg((choice, "normalize"), size=(16, 16))
    cfg.INPUT.GB_K = 3
    torch.manual_seed(0)
    out = build_transform(cfg, is_train=True)(_image())
    assert out.shape == (3, 16, 16) and torch.isfinite(out).all()
    assert build_transform(cfg, is_train=False)(_image()).shape == (3, 16, 16)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Building transform_train" and "Building transform_test" in lines


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Invalid transform choice \('random_flipp'\).*random_resized_crop"):
        build_transform(_cfg(("random_flipp",)), is_train=True)
    cfg = _cfg()
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="bilinear"):
        build_transform(cfg, is_train=False)


def test_no_transform_and_explicit_choices(capsys):
    cfg = _cfg()
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg) is None
    assert capsys.readouterr().out == "Note: no transform is applied!\n"
    ops = build_transform(_cfg(), is_train=False, choices=["instance_norm"]).transforms
    assert type(ops[-1]).__name__ == "InstanceNormalization" and not any(isinstance(o, T.Normalize) for o in ops)


def test_every_randaugment_op_runs_at_both_ends_of_its_range():
    from dassl.data.transforms.randaugment import fixmatch_list, randaugment_list, randaugment_list2

    img = _image()
    for op, lo, hi in randaugment_list() + randaugment_list2() + fixmatch_list():
        for v in (lo, hi):
            out = op(img, v)
            assert out.size == img.size and out.mode == "RGB", op.__name__
