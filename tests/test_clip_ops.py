"""Per-layer token operations (clip.LayerOp): schedules, equivalences with hand-written references, errors."""
import pytest
import torch

import clip
from clip import LayerOp
from tiny_clip import make_tiny_clip
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

D_VIS = D_TXT = 64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit():
    return make_tiny_clip("vit", seed=1)


@pytest.fixture(scope="module")
def images():
    return _rand(3, 3, 32, 32, seed=11)


@pytest.fixture(scope="module")
def text_ids():
    # different lengths, so the EOT positions differ within the batch
    return clip.tokenize(["x a photo of a cat.", "x a photo of a very large golden retriever dog.", "x dog"])


# ---------------------------------------------------------------------------------------------- hand references
def _vision_tokens(model, image):
    v = model.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    return x + v.positional_embedding


def _vision_head(model, x):
    return model.visual.ln_post(x[:, 0]) @ model.visual.proj


def _blocks(transformer):
    return list(transformer.resblocks)


def _batch(t, b):
    return t.unsqueeze(0).expand(b, -1, -1)


# ------------------------------------------------------------------------------------------ schedules on ViT-B/16
def _mpl_vision_ops(width, device, n_ctx=1, n_add=2, n_rm=1, depth=9):
    ops = [LayerOp(add=torch.empty(n_ctx, width, device=device))]
    ops += [LayerOp(remove=n_rm, add=torch.empty(n_add * n_ctx, width, device=device)) for _ in range(1, depth)]
    return ops + [None] * (12 - depth)


def test_mpl_reference_schedule_on_meta_vit_b16():
    model = clip.create_model("ViT-B/16", device="meta")
    assert model.visual.width == 768 and model.transformer.width == 512 and model.visual.layers == 12
    trace = []
    out = model.encode_image(torch.empty(2, 3, 224, 224, device="meta"), ops=_mpl_vision_ops(768, "meta"),
                             trace=trace)
    assert trace == [198, 199, 200, 201, 202, 203, 204, 205, 206, 206, 206, 206]
    assert out.shape == (2, 512) and out.is_meta
    # the cross-dataset setting (depth 3): 198, 199, 200, 200, ...
    trace = []
    model.encode_image(torch.empty(1, 3, 224, 224, device="meta"), ops=_mpl_vision_ops(768, "meta", depth=3),
                       trace=trace)
    assert trace == [198, 199] + [200] * 10


def test_meta_text_schedule_skips_truncation():
    model = clip.create_model("ViT-B/16", device="meta")
    ids = clip.tokenize(["a photo of a cat."]).to("meta")
    x = torch.empty(1, 77, 512, device="meta")
    ops = [None] + [LayerOp(add=torch.empty(2, 512, device="meta"))] + [None] * 10
    trace = []
    out = model.encode_text_embeddings(x, ids, ops=ops, n_prompt=1, trace=trace)
    assert trace == [77] + [79] * 11 and out.shape == (1, 512)


# ------------------------------------------------------------------------------------------ vision equivalences
def test_no_ops_is_plain_clip(vit, images):
    with torch.no_grad():
        plain = vit.encode_image(images)
        torch.testing.assert_close(vit.encode_image(images, ops=[]), plain, rtol=0, atol=0)
        torch.testing.assert_close(vit.encode_image(images, ops=[None, None]), plain, rtol=0, atol=0)
        torch.testing.assert_close(vit.encode_image(images, ops=[LayerOp()]), plain, rtol=0, atol=0)


def test_add_remove_every_layer_equals_vpt_deep_replacement(vit, images):
    n = 3
    prompts = [_rand(n, D_VIS, seed=20 + i) for i in range(2)]
    ops = [LayerOp(add=prompts[0]), LayerOp(remove=n, add=prompts[1])]
    trace = []
    with torch.no_grad():
        got = vit.encode_image(images, ops=ops, trace=trace)
        # VPT-deep by hand: append the prompt before ln_pre, replace the last n tokens before block 1
        b = images.shape[0]
        x = torch.cat([_vision_tokens(vit, images), _batch(prompts[0], b)], 1)
        x = vit.visual.ln_pre(x)
        for i, block in enumerate(_blocks(vit.visual.transformer)):
            if i > 0:
                x = torch.cat([x[:, :-n], _batch(prompts[i], b)], 1)
            x = block(x)
        want = _vision_head(vit, x)
    assert trace == [17 + n, 17 + n]
    assert_close_ulps(got, want, 64)  # block written out by hand: measured <= 2 ulps


def test_mpl_add_remove_carry_matches_reference_stack_order():
    model = make_tiny_clip("vit", seed=2, vision_layers=4)
    images = _rand(2, 3, 32, 32, seed=3)
    v0 = _rand(1, D_VIS, seed=4)
    deep = [_rand(2, D_VIS, seed=5 + i) for i in range(2)]  # layers 1, 2 add 2 and remove 1; layer 3 carries
    ops = [LayerOp(add=v0)] + [LayerOp(remove=1, add=v) for v in deep] + [None]
    trace = []
    with torch.no_grad():
        got = model.encode_image(images, ops=ops, trace=trace)
        x = model.visual.ln_pre(torch.cat([_vision_tokens(model, images), _batch(v0, 2)], 1))
        for i, block in enumerate(_blocks(model.visual.transformer)):
            if 1 <= i <= 2:  # the reference: x = cat(x[:L - n_rm], V_i)
                x = torch.cat([x[:, :x.shape[1] - 1], _batch(deep[i - 1], 2)], 1)
            x = block(x)
        want = _vision_head(model, x)
    assert trace == [18, 19, 20, 20]
    assert_close_ulps(got, want, 64)  # block written out by hand: measured <= 2 ulps


def test_per_sample_add_and_broadcast_agree(vit, images):
    p = _rand(2, D_VIS, seed=30)
    with torch.no_grad():
        a = vit.encode_image(images, ops=[LayerOp(add=p)])
        b = vit.encode_image(images, ops=[LayerOp(add=p.expand(3, -1, -1).clone())])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_replace_op_overwrites_positions(vit, images):
    p = _rand(2, D_VIS, seed=31)
    with torch.no_grad():
        got = vit.encode_image(images, ops=[None, LayerOp(replace=p, replace_at=5)])
        blocks = _blocks(vit.visual.transformer)
        x = blocks[0](vit.visual.ln_pre(_vision_tokens(vit, images)))
        x = torch.cat([x[:, :5], _batch(p, 3), x[:, 7:]], 1)
        want = _vision_head(vit, blocks[1](x))
    assert_close_ulps(got, want, 64)  # block written out by hand: measured <= 2 ulps


def test_prompts_receive_gradients(vit, images):
    p0 = torch.zeros(2, D_VIS, requires_grad=True)
    p1 = torch.zeros(2, D_VIS, requires_grad=True)
    vit.encode_image(images, ops=[LayerOp(add=p0), LayerOp(remove=1, add=p1)]).sum().backward()
    assert p0.grad is not None and p0.grad.abs().sum() > 0
    assert p1.grad is not None and p1.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------------- text branch
def _text_by_hand(model, ids, inserts):
    """Full-length (no truncation) text features with tokens inserted after SOS before given blocks.

    ``inserts``: {layer: (k, D) tensor}; positional embeddings are added before any insertion.
    """
    x = model.token_embedding(ids) + model.positional_embedding
    eot = ids.argmax(-1)
    seg = 0  # tokens inserted so far (they sit at positions 1 .. seg)
    for i, block in enumerate(_blocks(model.transformer)):
        if i in inserts:
            t = _batch(inserts[i], x.shape[0])
            x = torch.cat([x[:, :1 + seg], t, x[:, 1 + seg:]], 1)
            seg += t.shape[1]
        length = x.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)  # an explicit causal mask
        h = block.ln_1(x)
        attn = torch.nn.functional.multi_head_attention_forward(
            h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), h.shape[-1], block.attn.heads,
            block.attn.in_proj_weight, block.attn.in_proj_bias, None, None, False, 0.0,
            block.attn.out_proj.weight, block.attn.out_proj.bias, training=False, need_weights=False,
            attn_mask=mask)[0].transpose(0, 1)
        x = x + attn
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot + seg] @ model.text_projection


@pytest.mark.parametrize("truncation", [True, False])
def test_text_add_moves_eot_and_pooling_follows(vit, text_ids, truncation):
    vit.text_truncation = truncation
    k0, k1 = _rand(2, D_TXT, seed=40), _rand(3, D_TXT, seed=41)
    try:
        trace = []
        with torch.no_grad():
            got = vit.encode_text_embeddings(vit.token_embedding(text_ids), text_ids,
                                             ops=[LayerOp(add=k0), LayerOp(add=k1)], trace=trace)
            want = _text_by_hand(vit, text_ids, {0: k0, 1: k1})
    finally:
        vit.text_truncation = True
    longest = int(text_ids.argmax(-1).max()) + 1
    assert trace == ([longest + 2, longest + 5] if truncation else [79, 82])
    assert_close_ulps(got, want, 64)  # measured <= 4 ulps


def test_plain_encode_text_matches_hand_reference(vit, text_ids):
    with torch.no_grad():
        assert_close_ulps(vit.encode_text(text_ids), _text_by_hand(vit, text_ids, {}), 64)  # measured <= 4 ulps


def _deep_text_ops(style, n, depth=2):
    if style == "replace":
        return [None] + [LayerOp(replace=_rand(n, D_TXT, seed=50 + i), replace_at=1) for i in range(1, depth)]
    return [None] + [LayerOp(remove=n, add=_rand(n, D_TXT, seed=60 + i)) for i in range(1, depth)]


@pytest.mark.parametrize("style", ["replace", "remove_add"])
@pytest.mark.parametrize("n_prompt", [1, 4])
def test_truncation_is_exact_with_deep_text_prompts(vit, style, n_prompt):
    texts = [" ".join(["x"] * n_prompt) + " " + s for s in
             ["a cat.", "a photo of a large red fire truck parked outside.", "a", "an aerial photo of a forest."]]
    ids = clip.tokenize(texts)
    emb = vit.token_embedding(ids).detach()
    emb[:, 1:1 + n_prompt] = _rand(n_prompt, D_TXT, seed=70)  # learnable context at positions 1..n_prompt
    ops = _deep_text_ops(style, n_prompt)
    results, traces = {}, {}
    for flag in (True, False):
        vit.text_truncation = flag
        traces[flag] = []
        with torch.no_grad():
            results[flag] = vit.encode_text_embeddings(emb, ids, ops=ops, n_prompt=n_prompt, trace=traces[flag])
    vit.text_truncation = True
    assert traces[False] == [77, 77]
    assert traces[True] == [int(ids.argmax(-1).max()) + 1] * 2
    # Exact in real arithmetic; in fp32 only the summation order inside attention and matmuls changes with the
    # length (a few ulps). Normalised features (what CLIP's logits use) agree within 1e-6; raw ones (norm ~ 6
    # here) within 2e-6 plus 1e-5 relative (one element in 128 came out 2.09e-6 apart under another thread count).
    on, off = results[True], results[False]
    torch.testing.assert_close(on / on.norm(dim=-1, keepdim=True), off / off.norm(dim=-1, keepdim=True),
                               rtol=0, atol=1e-6)
    assert_close_ulps(on, off, 64)  # measured <= 5 ulps


def test_encode_text_equals_embeddings_path(vit, text_ids):
    with torch.no_grad():
        a = vit.encode_text(text_ids)
        b = vit.encode_text_embeddings(vit.token_embedding(text_ids), text_ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------- errors
def test_removing_more_than_the_segment_holds(vit, images, text_ids):
    with pytest.raises(ValueError, match=r"layer 1: cannot remove 3 prompt tokens.*holds only 2"):
        vit.encode_image(images, ops=[LayerOp(add=_rand(2, D_VIS)), LayerOp(remove=3)])
    with pytest.raises(ValueError, match=r"layer 0: cannot remove 1 prompt tokens.*holds only 0"):
        vit.encode_image(images, ops=[LayerOp(remove=1)])
    with pytest.raises(ValueError, match=r"layer 1: cannot remove 2 .*holds only 1"):
        vit.encode_text_embeddings(vit.token_embedding(text_ids), text_ids, ops=[None, LayerOp(remove=2)],
                                   n_prompt=1)


def test_add_with_wrong_width(vit, images, text_ids):
    with pytest.raises(ValueError, match=r"layer 0: LayerOp.add has width 32.*width 64"):
        vit.encode_image(images, ops=[LayerOp(add=_rand(1, 32))])
    with pytest.raises(ValueError, match="LayerOp.replace has width 10"):
        vit.encode_text_embeddings(vit.token_embedding(text_ids), text_ids,
                                   ops=[None, LayerOp(replace=_rand(1, 10))])
    with pytest.raises(ValueError, match="shape"):
        vit.encode_image(images, ops=[LayerOp(add=_rand(D_VIS))])


def test_other_op_errors(vit, images):
    with pytest.raises(ValueError, match="3 layer ops for a transformer with 2 layers"):
        vit.encode_image(images, ops=[None, None, None])
    with pytest.raises(ValueError, match="outside the current sequence"):
        vit.encode_image(images, ops=[LayerOp(replace=_rand(2, D_VIS), replace_at=16)])
    with pytest.raises(TypeError, match="clip.LayerOp"):
        vit.encode_image(images, ops=[{"add": None}])


def test_ops_on_resnet_raise():
    model = make_tiny_clip("resnet")
    image = _rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="ModifiedResNet"):
        model.encode_image(image, ops=[LayerOp(add=_rand(1, 64))])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image, ops=[None]), model.encode_image(image))
