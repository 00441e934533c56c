"""open_clip checkpoints (clip/openclip.py): randomly initialised small open_clip models as the oracle, their
preprocessing, and the hub download against a local server. ``open_clip`` (open-clip-torch) is a test oracle only.
"""

import pytest
import torch

import clip
from clip.openclip import INCEPTION_MEAN, OPENCLIP_MODELS, convert_state_dict, hub_url

from http_server import FileServer

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenClipCLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)


def small_open_clip(quick_gelu=False, seed=0):
    """A randomly initialised open_clip CLIP of OpenAI's architecture (head width 64), perturbed off its init."""
    torch.manual_seed(seed)
    model = OpenClipCLIP(embed_dim=32, quick_gelu=quick_gelu,
                         vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32),
                         text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2))
    with torch.no_grad():  # zero-initialised biases and LayerNorms would hide mismatches: randomise everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g), clip.tokenize(["a photo of a cat.", "a dog", "x y z w"])


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory):
    model = small_open_clip()
    path = tmp_path_factory.mktemp("oc") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, path


def test_features_equal_open_clip_within_1e5(oracle_file):
    ref, path = oracle_file
    ours, preprocess = clip.load(path, activation="gelu", precision="fp32")
    images, text = inputs()
    with torch.no_grad():
        # open_clip's own model computes the same function: measured <= 5 ulps
        assert_close_ulps(ours.encode_image(images), ref.encode_image(images), 64)
        assert_close_ulps(ours.encode_text(text), ref.encode_text(text), 64)
        # the activation matters: OpenAI's QuickGELU on these weights is measurably different
        quick, _ = clip.load(path, precision="fp32")
        assert (quick.encode_image(images) - ref.encode_image(images)).abs().max() > 1e-4
    assert isinstance(ours.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_quick_gelu_open_clip_models_match_too():
    ref = small_open_clip(quick_gelu=True, seed=3)
    ours = clip.build_model(ref.state_dict(), activation="quick_gelu")
    images, text = inputs()
    with torch.no_grad():
        assert_close_ulps(ours.encode_image(images), ref.encode_image(images), 64)
        assert_close_ulps(ours.encode_text(text), ref.encode_text(text), 64)


def test_training_checkpoint_with_module_prefix_loads(oracle_file):
    ref, _ = oracle_file
    wrapped = {f"module.{k}": v for k, v in ref.state_dict().items()}
    ours = clip.build_model(convert_state_dict(wrapped), activation="gelu")
    assert torch.equal(ours.visual.proj, ref.visual.proj)


def test_registered_names_download_from_the_hub_layout(oracle_file, tmp_path, monkeypatch):
    """Without huggingface_hub, a registered name is fetched from
    <endpoint>/<repo>/resolve/main/open_clip_pytorch_model.bin into the cache under its own name, built with GELU
    and preprocessed with its registered mean/std (through huggingface_hub: tests/test_clip_hf.py)."""
    monkeypatch.setattr(clip.hf_hub, "module", lambda: None)
    ref, path = oracle_file
    assert hub_url("laion/CLIP-ViT-B-16-laion2B-s34B-b88K") == \
        "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_pytorch_model.bin"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example")
    assert hub_url("a/b").startswith("http://mirror.example/a/b/")
    with FileServer() as server:
        server.files["laion/tiny-test/resolve/main/open_clip_pytorch_model.bin"] = path.read_bytes()
        clip.register_openclip("tiny-oc:test", "laion/tiny-test", endpoint=server.url, mean=INCEPTION_MEAN,
                               std=INCEPTION_MEAN)
        try:
            model, preprocess = clip.load("tiny-oc:test", download_root=tmp_path, precision="fp32")
            assert (tmp_path / "open_clip-tiny-oc-test.bin").is_file()
            n = len(server.log)
            clip.load("tiny-oc:test", download_root=tmp_path, precision="fp32")  # cached: no request
            assert len(server.log) == n
        finally:
            clip.pretrained._REGISTRY.pop("tiny-oc:test")
    images, _ = inputs()
    with torch.no_grad():
        assert_close_ulps(model.encode_image(images), ref.encode_image(images), 64)
    norm = preprocess.transforms[-1]
    assert tuple(norm.mean) == INCEPTION_MEAN and tuple(norm.std) == INCEPTION_MEAN
    # the preprocessing equals open_clip's own for the same settings
    from PIL import Image
    oc_pre = open_clip.image_transform(32, is_train=False, mean=INCEPTION_MEAN, std=INCEPTION_MEAN)
    img = Image.frombytes("RGB", (40, 52), bytes(range(256)) * (40 * 52 * 3 // 256) + bytes(40 * 52 * 3 % 256))
    assert torch.allclose(preprocess(img), oc_pre(img), atol=1e-6)


def test_registry_entries_and_full_size_shapes():
    for name, (repo, _) in OPENCLIP_MODELS.items():
        opts = clip.pretrained_options(name)
        assert opts["activation"] == "gelu" and name in clip.available_models() and repo.startswith("laion/")
    assert clip.pretrained_options("ViT-L-14:laion2b_s32b_b82k")["mean"] == INCEPTION_MEAN
    assert clip.pretrained_options("ViT-B-16:datacomp_xl_s13b_b90k")["mean"] == clip.transforms.OPENAI_MEAN
    # an open_clip ViT-B-16 / ViT-L-14 has exactly our architecture's parameter shapes (meta device: no memory)
    for oc_name, ours_name in (("ViT-B-16", "ViT-B/16"), ("ViT-L-14", "ViT-L/14")):
        with torch.device("meta"):
            theirs = OpenClipCLIP(**open_clip.get_model_config(oc_name))
        ours = clip.create_model(ours_name, device="meta")
        shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_train_config_takes_the_checkpoints_normalisation():
    """Every method's data pipeline normalises with INPUT.PIXEL_MEAN/STD: an open_clip backbone registered with
    its own values replaces OpenAI's there (LAION's ViT-L/14: 0.5), and a config's own values are kept."""
    from trainers.api import build_cfg

    def cfg(*opts):
        return build_cfg(["--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/vit_b16_ctxv1.yaml", *opts])

    assert tuple(cfg("MODEL.BACKBONE.NAME", "ViT-L-14:laion2b_s32b_b82k").INPUT.PIXEL_MEAN) == INCEPTION_MEAN
    assert cfg("MODEL.BACKBONE.NAME", "ViT-B-16:laion2b_s34b_b88k").INPUT.PIXEL_MEAN == \
        list(clip.transforms.OPENAI_MEAN)
    own = cfg("MODEL.BACKBONE.NAME", "ViT-L-14:laion2b_s32b_b82k", "INPUT.PIXEL_MEAN", "[0.4, 0.4, 0.4]")
    assert own.INPUT.PIXEL_MEAN == [0.4, 0.4, 0.4]


def test_a_method_trains_on_a_registered_open_clip_backbone(oracle_file, tmp_path, monkeypatch):
    """MODEL.BACKBONE.NAME with an open_clip name: the trainers' loader builds it with GELU, and MPL (both
    encoders prompted) trains and evaluates on it through train.py."""
    import json

    import train
    from datasets.fixtures import make_fixture
    from trainers.base import load_clip

    _, path = oracle_file
    clip.register_pretrained("oc-tiny:test", builder=lambda root: path, options={"activation": "gelu"})
    try:
        class Cfg:  # the one key load_clip reads
            class MODEL:
                class BACKBONE:
                    NAME = "oc-tiny:test"
        assert isinstance(load_clip(Cfg).visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
        make_fixture("eurosat", tmp_path / "data", n_per_class=2, image_size=32)
        out = tmp_path / "run"
        rc = train.main(["--root", str(tmp_path / "data"), "--seed", "1", "--trainer", "MPL",
                         "--dataset-config-file", "configs/datasets/eurosat.yaml",
                         "--config-file", "configs/trainers/MPL/tiny_digits.yaml", "--output-dir", str(out),
                         "MODEL.BACKBONE.NAME", "oc-tiny:test", "INPUT.SIZE", "(32, 32)",
                         "TRAINER.MPL.PROMPT_DEPTH", "2", "TRAINER.MPL.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0",
                         "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1"])
        assert rc == 0
        result = json.loads((out / "result.json").read_text())
        assert result["backbone"] == "oc-tiny:test" and result["accuracy"] is not None
    finally:
        clip.pretrained._REGISTRY.pop("oc-tiny:test", None)
