"""CLIP architecture, checkpoint loading, configs on the meta device, precision and the tokenizer's contract."""
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import clip
from tiny_clip import make_tiny_clip, tiny_config, write_tiny_checkpoint
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

CLIP_DIR = Path(clip.__file__).parent


# ------------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_state_dict_and_torchscript_checkpoints_load_identically(tmp_path, kind):
    plain = write_tiny_checkpoint(tmp_path / "plain.pt", kind, seed=5)
    archive = write_tiny_checkpoint(tmp_path / "archive.pt", kind, seed=5, torchscript=True)
    assert not clip.checkpoint.is_torchscript_archive(plain)
    assert clip.checkpoint.is_torchscript_archive(archive)
    (m1, preprocess), (m2, _) = clip.load(plain), clip.load(str(archive))
    ref = make_tiny_clip(kind, seed=5)
    assert m1.dtype == torch.float32 and not m1.training
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = clip.tokenize(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        for model in (m1, m2):
            assert torch.equal(model.encode_image(images), ref.encode_image(images))
            assert torch.equal(model.encode_text(ids), ref.encode_text(ids))
            a, b = model(images, ids), ref(images, ids)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[0].t())
    out = preprocess(Image.new("RGB", (40, 50), (200, 10, 30)))
    assert out.shape == (3, 32, 32)


def _all_positions_encode_image(model, images, ops):
    """The image encoder as the references run it: the last block computes every position, then CLS is read."""
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    x = v.transformer(x, ops=ops, entry=v.ln_pre)
    assert x.shape[1] > 1  # every position came out of the last block
    return v.ln_post(x[:, 0]) @ v.proj


def test_last_vision_block_computes_cls_alone_exactly():
    model = make_tiny_clip("vit", seed=3, vision_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    width = model.visual.width
    prompts = [torch.randn(2, width, requires_grad=True), torch.randn(3, width, requires_grad=True)]
    ops = [clip.LayerOp(add=prompts[0]), None, clip.LayerOp(remove=1, add=prompts[1])]  # an op before the last
    lengths = []
    hook = model.visual.transformer.resblocks[-1].mlp.register_forward_hook(
        lambda m, i, o: lengths.append(i[0].shape[1]))
    ours = model.encode_image(images, ops=ops)
    hook.remove()
    assert lengths == [1]  # the last block's MLP ran on CLS alone
    ref = _all_positions_encode_image(model, images, ops)
    assert_close_ulps(ours, ref, 64)  # OpenAI's CLIP vs ours: measured <= 2 ulps
    weights = torch.randn_like(ref)
    grads = [torch.autograd.grad((out * weights).sum(), prompts) for out in (ours, ref)]
    for a, b in zip(*grads):
        assert_close_ulps(a, b, 64)  # measured <= 5 ulps


def test_build_model_does_not_modify_its_argument_and_accepts_fp16():
    sd = make_tiny_clip("vit", seed=2).state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    half["input_resolution"] = torch.tensor(32)  # extra keys some OpenAI archives carry
    keys = list(half)
    model = clip.build_model(half)
    assert list(half) == keys and half["visual.proj"].dtype == torch.float16
    assert model.dtype == torch.float32
    torch.testing.assert_close(model.visual.proj, sd["visual.proj"].half().float())


def test_openai_parameter_names():
    keys = set(make_tiny_clip("vit").state_dict())
    for key in ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
                "visual.transformer.resblocks.1.attn.in_proj_weight", "visual.transformer.resblocks.1.attn.in_proj_bias",
                "visual.transformer.resblocks.0.attn.out_proj.weight", "visual.transformer.resblocks.0.ln_1.bias",
                "visual.transformer.resblocks.0.mlp.c_fc.weight", "visual.transformer.resblocks.0.mlp.c_proj.bias",
                "visual.transformer.resblocks.0.ln_2.weight", "visual.ln_post.weight", "visual.proj",
                "token_embedding.weight", "positional_embedding", "transformer.resblocks.1.attn.in_proj_weight",
                "ln_final.weight", "text_projection", "logit_scale"]:
        assert key in keys, key
    keys = set(make_tiny_clip("resnet").state_dict())
    for key in ["visual.conv1.weight", "visual.bn3.running_var", "visual.layer1.0.downsample.0.weight",
                "visual.layer4.0.bn3.weight", "visual.attnpool.positional_embedding", "visual.attnpool.q_proj.weight",
                "visual.attnpool.c_proj.bias"]:
        assert key in keys, key


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'ViT-H/99'"):
        clip.load("ViT-H/99", download_root=tmp_path)
    path = write_tiny_checkpoint(tmp_path / "t.pt")
    with pytest.raises(NotImplementedError, match="jit=False"):
        clip.load(path, jit=True)
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="neither a TorchScript CLIP archive nor a state dict"):
        clip.load(tmp_path / "junk.pt")
    torch.save({"visual.proj": torch.zeros(2, 2)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="not an OpenAI CLIP state dict"):
        clip.load(tmp_path / "partial.pt")


# ------------------------------------------------------------------------------------- released configs (meta)
def _vit_params(width, layers, patch, res, embed):
    block = 4 * width * width + 4 * width + 8 * width * width + 5 * width + 4 * width  # attn, mlp, 2 LayerNorms
    grid = (res // patch) ** 2
    return 3 * patch * patch * width + width + (grid + 1) * width + 2 * width + layers * block + 2 * width \
        + width * embed


def _text_params(width, layers, embed, vocab=49408, ctx=77):
    block = 4 * width * width + 4 * width + 8 * width * width + 5 * width + 4 * width
    return vocab * width + ctx * width + layers * block + 2 * width + width * embed


def test_meta_vit_b16_parameter_count_without_memory():
    model = clip.create_model("ViT-B/16", device="meta")
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    count = sum(p.numel() for p in params)
    by_hand = _vit_params(768, 12, 16, 224, 512) + _text_params(512, 12, 512) + 1  # + logit_scale
    assert by_hand == 149_620_737
    assert count == by_hand
    assert (model.visual.width, model.transformer.width, model.embed_dim) == (768, 512, 512)
    assert (model.visual.input_resolution, model.context_length, model.vocab_size) == (224, 77, 49408)
    assert model.visual.layers == model.transformer.layers == 12


@pytest.mark.parametrize("name", clip.available_models()[:9])
def test_build_model_infers_every_released_config(name):
    cfg = clip.model_config(name)
    model = clip.create_model(cfg, device="meta")
    assert clip.config_from_state_dict(model.state_dict()) == cfg
    if model.is_vit:
        assert model.visual.num_tokens == (cfg["image_resolution"] // cfg["vision_patch_size"]) ** 2 + 1


def test_released_registry_urls():
    assert clip.available_models()[:9] == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                                           "ViT-L/14", "ViT-L/14@336px"]
    spec = clip.pretrained._REGISTRY["ViT-B/16"]
    assert spec.url == ("https://openaipublic.azureedge.net/clip/models/"
                        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
    for name in clip.available_models()[:9]:
        spec = clip.pretrained._REGISTRY[name]
        assert spec.url.split("/")[-2] == spec.sha256 and len(spec.sha256) == 64
        assert set(clip.model_config(name)) == set(tiny_config())


# ----------------------------------------------------------------------------------------------------- precision
def test_resolve_precision():
    assert clip.resolve_precision("fp32", "cpu").param_dtype == torch.float32
    bf16 = clip.resolve_precision("bf16", "cpu")
    assert (bf16.effective, bf16.param_dtype, bf16.autocast_dtype) == ("bf16", torch.bfloat16, None)
    amp = clip.resolve_precision("amp", "cuda")
    assert (amp.param_dtype, amp.autocast_dtype, amp.use_grad_scaler) == (torch.float32, torch.float16, True)
    assert clip.resolve_precision("fp16", torch.device("cuda:0")).param_dtype == torch.float16
    for name in ("fp16", "amp"):
        with pytest.warns(RuntimeWarning, match="falling back to 'fp32'"):
            p = clip.resolve_precision(name, "cpu")
        assert (p.name, p.effective, p.param_dtype, p.autocast_dtype, p.use_grad_scaler) == \
            (name, "fp32", torch.float32, None, False)
    with pytest.raises(ValueError, match="fp32, fp16, bf16, amp"):
        clip.resolve_precision("float8", "cpu")


def _forward_backward(model, precision):
    """Prompts in fp32 (master weights) enter a model cast to the run's precision; gradients reach them."""
    p0 = torch.zeros(2, model.visual.width, requires_grad=True)
    t1 = torch.zeros(1, model.transformer.width, requires_grad=True)
    ids = clip.tokenize(["x a photo of a cat.", "x dog"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with precision.autocast("cpu"):
        img = model.encode_image(images, ops=[clip.LayerOp(add=p0.to(model.dtype))])
        txt = model.encode_text_embeddings(model.token_embedding(ids), ids, n_prompt=1,
                                           ops=[None, clip.LayerOp(replace=t1.to(model.dtype))])
        loss = (img @ txt.t()).float().sum()
    loss.backward()
    assert img.dtype == txt.dtype == precision.param_dtype
    assert torch.isfinite(loss)
    assert p0.grad is not None and p0.grad.dtype == torch.float32 and p0.grad.abs().sum() > 0
    assert t1.grad is not None and t1.grad.abs().sum() > 0


def test_bf16_forward_backward_on_cpu():
    model = make_tiny_clip("vit").requires_grad_(False)
    precision = clip.resolve_precision("bf16", "cpu")
    precision.cast_model(model)
    assert model.dtype == torch.bfloat16
    assert model.ln_final.weight.dtype == torch.float32  # LayerNorms keep fp32 parameters, as in OpenAI's CLIP
    _forward_backward(model, precision)


def test_fp16_on_cpu_falls_back_to_fp32_and_runs(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "t.pt")
    with pytest.warns(RuntimeWarning, match="fp16.*falling back"):
        model, _ = clip.load(path, precision="fp16")
    assert model.dtype == torch.float32
    precision = clip.resolve_precision("fp32", "cpu")
    _forward_backward(model.requires_grad_(False), precision)


def test_load_precision_argument(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "t.pt", kind="resnet")
    model, _ = clip.load(path, precision="bf16")
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model.encode_image(torch.randn(1, 3, 32, 32))
    assert out.dtype == torch.bfloat16
    assert clip.load(path)[0].dtype == torch.float32  # precision=None on the CPU: fp32, as OpenAI's loader


def test_layernorm_computes_in_fp32_and_returns_input_dtype():
    ln = clip.layers.LayerNorm(8).to(torch.bfloat16)
    x = torch.randn(2, 8).to(torch.bfloat16)
    y = ln(x)
    ref = torch.nn.functional.layer_norm(x.float(), (8,), ln.weight.float(), ln.bias.float())
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref.to(torch.bfloat16))


def test_no_dtype_literals_outside_precision_module():
    pattern = re.compile(r"\.half\(\)|\.float\(\)|\.double\(\)|\.bfloat16\(\)|torch\.(float16|half|bfloat16|float32|"
                         r"float64|double)\b")
    offenders = [f"{path.name}:{n}: {line.strip()}"
                 for path in sorted(CLIP_DIR.glob("*.py")) if path.name != "precision.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


# ----------------------------------------------------------------------------------------------------- tokenizer
def test_tokenize_contract():
    ids = clip.tokenize("a photo of a cat.")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, 0].item() == 49406 and ids[0].argmax().item() == 7 and ids[0, 7].item() == 49407
    assert clip.tokenize(["a", "b"], context_length=5).shape == (2, 5)
    assert clip.tokenize([]).shape == (0, 77)
    long = "word " * 100
    with pytest.raises(ValueError, match="too long for context length 77"):
        clip.tokenize([long])
    cut = clip.tokenize([long], truncate=True)[0]
    assert cut[-1].item() == 49407 and (cut != 0).all()
    tok = clip.tokenizer()
    assert clip.tokenizer() is tok and tok.vocab_size == 49408
    assert tok.decode(tok.encode("Hello,  World!")) == "hello , world ! "


def test_tokenizer_has_no_import_time_side_effects():
    source = (CLIP_DIR / "tokenization.py").read_text()
    module_level = [line for line in source.splitlines() if line and not line[0].isspace()]
    assert not any(re.search(r"=\s*(BPETokenizer|tokenizer)\(", line) for line in module_level)
    assert not any(line.startswith(("import ftfy", "import regex")) for line in module_level)


def test_bpe_file_ships_with_its_licence_note():
    assert (CLIP_DIR / "bpe_simple_vocab_16e6.txt.gz").is_file()
    note = (CLIP_DIR / "LICENSE-BPE.txt").read_text()
    assert "OpenAI" in note and "MIT License" in note
