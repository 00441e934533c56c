"""Hugging Face: transformers CLIPModel folders through ``clip.load`` (clip/hf_transformers.py), and hub files
through ``huggingface_hub``'s cache (clip/hf_hub.py).

The oracle is transformers itself (a test-only dependency): a small randomly initialised ``CLIPModel``, saved with
``save_pretrained``, must give the same image and text features through ``clip.load(folder)``. The hub tests build
a Hugging Face cache folder in its real layout (``models--ORG--REPO/{refs,snapshots}``) and run offline.
"""
import json
from pathlib import Path

import pytest
import torch

import clip
from clip import hf_hub
from clip.checkpoint import CheckpointFileError
from clip.download import DownloadError

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

transformers = pytest.importorskip("transformers")

# Tolerance of the feature comparison, in fp32. Both sides compute the same sums in different orders (fused SDPA
# against transformers' attention, one query in our last block, q/k/v as one matrix product), so the features
# (magnitude up to about 3 here) differ by rounding only: fp32's epsilon 1.2e-7 x 3 per rounding, grown over sums
# of at most 256 terms (the MLP's width) by about sqrt(256) = 16 for errors of random sign, is about 6e-6 per
# block at worst; two blocks and a projection per tower, mostly cancelling, stay below 1e-5. Measured over 10
# random models (both activations, seeds 0-4): at most 1.6e-6. The wrong activation on the same weights moves
# them by 1.2e-2 or more (asserted below, so the comparison can fail).
ATOL = 1e-5


def hf_model(hidden_act="quick_gelu", eos_token_id=49407, heads=1, width=64, seed=0, vocab_size=49408):
    """A randomly initialised transformers CLIPModel of OpenAI's architecture (64-wide heads), off its init."""
    torch.manual_seed(seed)
    tower = dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads, num_hidden_layers=2,
                 hidden_act=hidden_act)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=77, eos_token_id=eos_token_id),
        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=32)
    model = transformers.CLIPModel(config)
    with torch.no_grad():  # zero biases and unit LayerNorms would hide mismatches: randomise everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g), clip.tokenize(["a photo of a cat.", "a dog", "x y z w"])


def reference(model, images, ids):
    with torch.no_grad():
        image = model.get_image_features(pixel_values=images)
        text = model.get_text_features(input_ids=ids)
    # transformers 5 returns an output object, 4.x a tensor
    return getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)


@pytest.mark.parametrize("hidden_act,eos_token_id,fmt", [
    ("quick_gelu", 49407, "safetensors"),  # openai/clip-vit-* as transformers writes them today
    ("gelu", 2, "bin"),                    # exact GELU (LAION's), a legacy eos_token_id, pytorch_model.bin
])
def test_features_equal_transformers(tmp_path, hidden_act, eos_token_id, fmt):
    ref = hf_model(hidden_act, eos_token_id)
    folder = tmp_path / "hf"
    if fmt == "safetensors":
        ref.save_pretrained(folder)
    else:  # the older format: a torch.save state dict beside config.json
        ref.config.save_pretrained(folder)
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    assert (folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).is_file()
    images, ids = inputs()
    want_image, want_text = reference(ref, images, ids)
    for path in (folder, next(p for p in folder.iterdir() if p.name != "config.json")):  # the folder or its file
        ours, preprocess = clip.load(path, precision="fp32")
        with torch.no_grad():
            image, text = ours.encode_image(images), ours.encode_text(ids)
        assert (image - want_image).abs().max() < ATOL and (text - want_text).abs().max() < ATOL
        assert ours.logit_scale.item() == pytest.approx(ref.logit_scale.item())
    expected = torch.nn.GELU if hidden_act == "gelu" else clip.layers.QuickGELU
    assert isinstance(ours.transformer.resblocks[0].mlp.gelu, expected)
    assert set(ours.state_dict()) < set(clip.create_model("ViT-B/16", device="meta").state_dict())  # OpenAI's names
    # the test can fail: the other activation on the same weights is far off
    other = clip.load(folder, precision="fp32", activation="gelu" if hidden_act == "quick_gelu" else "quick_gelu")[0]
    with torch.no_grad():
        assert (other.encode_image(images) - want_image).abs().max() > 100 * ATOL


def test_preprocessor_config_gives_the_transform(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}))
    _, preprocess = clip.load(tmp_path, precision="fp32")
    norm = preprocess.transforms[-1]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.25, 0.25, 0.25)
    assert preprocess.transforms[0].interpolation.value == "bilinear"


@pytest.mark.parametrize("change,message", [
    (dict(heads=2), "2 attention heads of width 32; CLIP's architecture has heads 64 wide"),
    (dict(hidden_act="gelu_new"), "hidden_act is 'gelu_new'; supported: quick_gelu, gelu"),
    (dict(vocab_size=1000), "vocab_size 1000 and eos_token_id 49407; only CLIP's own tokenizer"),
    (dict(eos_token_id=7), "eos_token_id 7"),
])
def test_unsupported_configs_are_one_line_errors_naming_what(tmp_path, change, message):
    hf_model(**change).save_pretrained(tmp_path)
    with pytest.raises(CheckpointFileError) as err:
        clip.load(tmp_path)
    text = str(err.value)
    assert message in text and "\n" not in text and "download it again" not in text
    assert text.startswith(f'"{tmp_path}" is not a transformers CLIPModel checkpoint this project loads')


def test_other_models_and_incomplete_folders_are_refused(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path / "ok")
    config = json.loads((tmp_path / "ok/config.json").read_text())
    for name, edit, message in (("siglip", {"model_type": "siglip"}, "a transformers 'siglip' model"),
                                ("vision", {"architectures": ["CLIPVisionModelWithProjection"]}, "(one tower)")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        (folder / "model.safetensors").write_bytes((tmp_path / "ok/model.safetensors").read_bytes())
        with pytest.raises(CheckpointFileError, match=message):
            clip.load(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFileError, match="no config.json in"):
        clip.load(tmp_path / "empty")
    (tmp_path / "ok/model.safetensors").rename(tmp_path / "weights.safetensors")  # no config.json beside it
    with pytest.raises(CheckpointFileError, match="no config.json in"):
        clip.load(tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointFileError, match="has config.json but no weights"):
        clip.load(tmp_path / "ok")


# --------------------------------------------------------------------------------------------- the hub cache
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PINNED = "fedcba9876543210fedcba9876543210fedcba98"


def hub_cache(root: Path, repo: str, files: dict, commit: str = COMMIT, ref: str = "main") -> Path:
    """A Hugging Face cache holding ``files`` of ``repo`` at ``commit`` (what huggingface_hub leaves behind)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub pointed at an empty cache folder, offline: only what a test puts there can be read."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    calls = []
    real = hub.hf_hub_download
    monkeypatch.setattr(hub, "hf_hub_download", lambda *a, **k: (calls.append((a, k)), real(*a, **k))[1])
    return tmp_path / "hf", calls


def open_clip_file(tmp_path):
    from tiny_clip import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path / "oc.pt", kind="vit", seed=5).read_bytes()


def test_open_clip_names_resolve_through_the_hugging_face_cache(offline_hub, tmp_path):
    cache, calls = offline_hub
    data = open_clip_file(tmp_path)
    snapshot = hub_cache(cache, "laion/tiny-oc", {"open_clip_pytorch_model.bin": data})
    clip.register_openclip("tiny-oc:hub", "laion/tiny-oc")
    try:
        assert clip.pretrained.pretrained_path("tiny-oc:hub", tmp_path / "clip-cache") == \
            snapshot / "open_clip_pytorch_model.bin"
        model, _ = clip.load("tiny-oc:hub", download_root=tmp_path / "clip-cache", precision="fp32", token="hf_x")
        assert not (tmp_path / "clip-cache").exists()  # nothing fetched again into the CLIP cache
        assert calls[-1][0] == ("laion/tiny-oc", "open_clip_pytorch_model.bin") and \
            calls[-1][1]["token"] == "hf_x" and calls[-1][1]["revision"] is None
        assert isinstance(model.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)  # the registered activation
        # a revision (load's, or pinned at registration) reads that commit's snapshot
        hub_cache(cache, "laion/tiny-oc", {"open_clip_pytorch_model.bin": data}, commit=PINNED, ref="v2")
        assert clip.pretrained.pretrained_path("tiny-oc:hub", revision=PINNED).parent.name == PINNED
        clip.pretrained._REGISTRY.pop("tiny-oc:hub")
        clip.register_openclip("tiny-oc:hub", "laion/tiny-oc", revision="v2")
        assert clip.pretrained.pretrained_path("tiny-oc:hub").parent.name == PINNED
        # offline and not cached: one line naming the repository and the file
        with pytest.raises(DownloadError, match=r"could not get open_clip_pytorch_model.bin of the Hugging Face hub "
                                                r"repository laion/tiny-oc@deadbeef"):
            clip.pretrained.pretrained_path("tiny-oc:hub", revision="deadbeef")
    finally:
        clip.pretrained._REGISTRY.pop("tiny-oc:hub")


def test_a_file_the_downloader_fetched_before_is_still_used(offline_hub, tmp_path):
    cache, calls = offline_hub
    clip.register_openclip("tiny-oc:old", "laion/not-in-the-hf-cache")
    try:
        old = tmp_path / "clip-cache" / "open_clip-tiny-oc-old.bin"
        old.parent.mkdir()
        old.write_bytes(open_clip_file(tmp_path))
        assert clip.pretrained.pretrained_path("tiny-oc:old", tmp_path / "clip-cache") == old and not calls
    finally:
        clip.pretrained._REGISTRY.pop("tiny-oc:old")


def test_without_huggingface_hub_the_downloader_stays(monkeypatch, tmp_path):
    from http_server import FileServer

    monkeypatch.setattr(hf_hub, "module", lambda: None)
    with FileServer() as server:
        server.files["laion/tiny-oc/resolve/main/open_clip_pytorch_model.bin"] = open_clip_file(tmp_path)
        clip.register_openclip("tiny-oc:dl", "laion/tiny-oc", endpoint=server.url)
        try:
            path = clip.pretrained.pretrained_path("tiny-oc:dl", tmp_path / "cache")
            assert path == tmp_path / "cache" / "open_clip-tiny-oc-dl.bin" and len(server.log) == 1
            with pytest.raises(DownloadError, match="revision= and token= need huggingface_hub"):
                clip.pretrained.pretrained_path("tiny-oc:dl", tmp_path / "cache", revision="v2")
        finally:
            clip.pretrained._REGISTRY.pop("tiny-oc:dl")
    with pytest.raises(DownloadError, match="need huggingface_hub"):
        clip.load("hf-hub:openai/clip-vit-base-patch16")


def test_hf_hub_names_load_transformers_repositories_from_the_cache(offline_hub, tmp_path):
    cache, calls = offline_hub
    ref = hf_model(seed=2)
    ref.save_pretrained(tmp_path / "saved")
    files = {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir()}
    snapshot = hub_cache(cache, "org/tiny-clip", files)
    model, _ = clip.load("hf-hub:org/tiny-clip", precision="fp32")
    images, ids = inputs()
    want_image, _ = reference(ref, images, ids)
    with torch.no_grad():
        assert (model.encode_image(images) - want_image).abs().max() < ATOL
    assert clip.pretrained.pretrained_path("hf-hub:org/tiny-clip") == snapshot
    fetched = [a[1] for a, _ in calls]
    assert "model.safetensors" in fetched and "pytorch_model.bin" not in fetched  # only the first weight file
    hub_cache(cache, "org/tiny-clip", files, commit=PINNED, ref="v1")
    assert clip.pretrained.pretrained_path("hf-hub:org/tiny-clip@v1") == snapshot.parent / PINNED
