"""Block operations (clip.BlockOp: residual branches, low-rank updates) against blocks written out by hand, and
the text-side speedups (truncation, shared prefix, the CLS-only last vision block) staying exact with them."""
import pytest
import torch
import torch.nn.functional as F

import clip
import clip.model as clip_model_module
from clip import BlockOp, Branch, LayerOp, LowRank
from tiny_clip import make_tiny_clip


def _rand(*shape, seed=0, std=1.0):
    return std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit():
    return make_tiny_clip("vit", seed=1)


@pytest.fixture(scope="module")
def images():
    return _rand(3, 3, 32, 32, seed=11)


class Adapter(torch.nn.Module):
    """A token-wise bottleneck MLP, the shape of MMA's adapters."""

    def __init__(self, width, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.down = torch.nn.Parameter(torch.randn(8, width, generator=g) * 0.2)
        self.up = torch.nn.Parameter(torch.randn(width, 8, generator=g) * 0.2)

    def forward(self, x):
        return F.relu(x @ self.down.t()) @ self.up.t()


def low_rank(target, d_in, d_out, seed, dropout=0.0):
    return LowRank(target, _rand(2, d_in, seed=seed, std=0.3), _rand(d_out, 2, seed=seed + 1, std=0.3), scale=0.7,
                   dropout=dropout)


def every_op(width, seed=0):
    """One block op with a branch on every read and an update of every target."""
    branches = tuple(Branch(Adapter(width, seed + i), scale=0.5, reads=r) for i, r in enumerate(clip.ops.BRANCH_READS))
    updates = tuple(low_rank(t, width * (4 if t == "c_proj" else 1), width * (4 if t == "c_fc" else 1), seed + 10 + i)
                    for i, t in enumerate(clip.ops.LOW_RANK_TARGETS))
    return BlockOp(branches, updates)


# ---------------------------------------------------------------------------------------------- hand references
def ref_block(blk, x, causal, op):
    """One residual block written out: projections, softmax attention, MLP, each with its updates, plus branches."""
    width = x.shape[-1]
    heads = blk.attn.heads
    up = {t: [u for u in (op.updates if op else ()) if u.target == t] for t in clip.ops.LOW_RANK_TARGETS}

    def lin(h, w, b, target):
        y = h @ w.t() + b
        for u in up[target]:
            y = y + u.scale * (h @ u.down.t() @ u.up.t())
        return y

    w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    h1 = blk.ln_1(x)
    q = lin(h1, w[:width], b[:width], "q")
    k = lin(h1, w[width:2 * width], b[width:2 * width], "k")
    v = lin(h1, w[2 * width:], b[2 * width:], "v")

    def heads_of(t):
        return t.view(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)

    scores = heads_of(q) @ heads_of(k).transpose(-1, -2) / (width // heads) ** 0.5
    if causal:
        n = x.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    attn = (scores.softmax(-1) @ heads_of(v)).transpose(1, 2).reshape(x.shape)
    attn = lin(attn, blk.attn.out_proj.weight, blk.attn.out_proj.bias, "out_proj")
    mid = x + attn
    h2 = blk.ln_2(mid)
    hidden = lin(h2, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, "c_fc")
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    out = mid + lin(hidden, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias, "c_proj")
    reads = {"input": x, "ln_1": h1, "mid": mid, "ln_2": h2}
    for br in (op.branches if op else ()):
        out = out + br.scale * br.fn(reads[br.reads])
    return out


def ref_image(model, image, block_ops):
    v = model.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    for i, blk in enumerate(v.transformer.resblocks):
        x = ref_block(blk, x, False, block_ops[i] if i < len(block_ops) else None)
    return v.ln_post(x[:, 0]) @ v.proj


def ref_text(model, ids, block_ops):
    x = model.token_embedding(ids) + model.positional_embedding
    for i, blk in enumerate(model.transformer.resblocks):
        x = ref_block(blk, x, True, block_ops[i] if i < len(block_ops) else None)
    x = model.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection


def class_ids(model, n=12):
    """Class prompts sharing "a photo of a", of different lengths (so sharing and buckets have work)."""
    names = ["cat", "dog", "very large golden retriever", "red fox", "sea", "river bank", "tree", "desert dune",
             "old town hall", "fish", "blue whale", "oak"][:n]
    return clip.tokenize([f"a photo of a {c}." for c in names], context_length=model.context_length)


# ---------------------------------------------------------------------------------------------- tests
def test_vision_block_ops_equal_the_hand_written_blocks(vit, images):
    width = vit.visual.width
    ops = [every_op(width, 0), every_op(width, 50)]
    with torch.no_grad():
        got = vit.encode_image(images, block_ops=ops)
        want = ref_image(vit, images, ops)
        plain = ref_image(vit, images, [])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the ops do something


@pytest.mark.parametrize("truncation,sharing", [(False, False), (True, False), (True, True)])
def test_text_block_ops_equal_the_hand_written_blocks(vit, truncation, sharing, monkeypatch):
    width = vit.transformer.width
    ops = [every_op(width, 3), every_op(width, 30)]
    ids = class_ids(vit)
    calls = []
    real = clip_model_module.find_shared_prefix
    monkeypatch.setattr(clip_model_module, "find_shared_prefix",
                        lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    monkeypatch.setattr(vit, "text_truncation", truncation)
    monkeypatch.setattr(vit, "text_prefix_sharing", sharing)
    monkeypatch.setattr(vit, "text_pass_overhead", 0)  # sharing pays from few classes on
    with torch.no_grad():
        got = vit.encode_text_embeddings(vit.token_embedding(ids), ids, block_ops=ops)
        want = ref_text(vit, ids, ops)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bool(calls and calls[0] is not None) == sharing  # the shared prefix really ran when it was on


def test_text_block_ops_gradients_equal_with_and_without_the_speedups(vit):
    width = vit.transformer.width
    ids = class_ids(vit)

    def grads(fast):
        op = every_op(width, 7)
        for u in op.updates:
            u.down.requires_grad_(True)
        vit.text_truncation = vit.text_prefix_sharing = fast
        vit.text_pass_overhead = 0
        try:
            out = vit.encode_text_embeddings(vit.token_embedding(ids).detach(), ids, block_ops=[None, op])
        finally:
            vit.text_truncation = vit.text_prefix_sharing = True
            vit.text_pass_overhead = 32
        out.square().sum().backward()
        return [u.down.grad for u in op.updates] + [b.fn.down.grad for b in op.branches]

    for a, b in zip(grads(True), grads(False)):  # the same sums in another order: 1e-5 of the largest
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_no_block_op_leaves_no_trace(vit, images):
    ids = class_ids(vit)
    emb = vit.token_embedding(ids)
    n = vit.transformer.layers
    with torch.no_grad():
        assert torch.equal(vit.encode_image(images), vit.encode_image(images, block_ops=[None] * n))
        assert torch.equal(vit.encode_image(images), vit.encode_image(images, block_ops=None))
        assert torch.equal(vit.encode_text_embeddings(emb, ids),
                           vit.encode_text_embeddings(emb, ids, block_ops=[None] * n))


def test_block_ops_compose_with_token_ops(vit, images):
    """A branch with deep prompts in the same pass (what MMA beside CasPL's boosting prompts does): the prompts'
    tokens pass through the branch too."""
    width = vit.visual.width
    prompts = _rand(2, width, seed=4)
    ops, bops = [LayerOp(add=prompts)], [None, every_op(width, 9)]
    with torch.no_grad():
        got = vit.encode_image(images, ops=ops, block_ops=bops)
        v = vit.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(3, 1, -1), x], 1) + v.positional_embedding
        x = v.ln_pre(torch.cat([x, prompts.expand(3, -1, -1)], 1))
        for i, blk in enumerate(v.transformer.resblocks):
            x = ref_block(blk, x, False, bops[i] if i < len(bops) else None)
        want = v.ln_post(x[:, 0]) @ v.proj
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dropout_switches_the_shared_prefix_off(vit, monkeypatch):
    width = vit.transformer.width
    ids = class_ids(vit)
    calls = []
    monkeypatch.setattr(clip_model_module, "find_shared_prefix", lambda *a, **k: calls.append(a) or None)
    monkeypatch.setattr(vit, "text_pass_overhead", 0)
    op = BlockOp(updates=(low_rank("q", width, width, 1, dropout=0.25),))
    vit.encode_text_embeddings(vit.token_embedding(ids), ids, block_ops=[op])
    assert not calls  # every class row draws its own dropout mask
    op.updates[0].dropout = 0.0
    vit.encode_text_embeddings(vit.token_embedding(ids), ids, block_ops=[op])
    assert calls


def test_dropout_acts_on_the_update_input_only(vit, images):
    width = vit.visual.width
    op = BlockOp(updates=(low_rank("v", width, width, 2, dropout=0.5),))
    with torch.no_grad():
        torch.manual_seed(0)
        a = vit.encode_image(images, block_ops=[op])
        torch.manual_seed(0)
        b = vit.encode_image(images, block_ops=[op])
        torch.manual_seed(1)
        c = vit.encode_image(images, block_ops=[op])
        op.updates[0].up = torch.zeros_like(op.updates[0].up)  # no update: dropout has nothing to act on
        torch.manual_seed(1)
        d = vit.encode_image(images, block_ops=[op])
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(d, vit.encode_image(images).detach())


def test_memory_budget_chunks_replay_the_dropout_in_backward(vit):
    """Checkpointed chunks recompute with the same dropout masks, so the gradient is that of the forward."""
    width = vit.transformer.width
    ids = class_ids(vit, 6)
    emb = vit.token_embedding(ids).detach()
    down = _rand(2, width, seed=5, std=0.3).requires_grad_(True)

    def grad(budget):
        op = BlockOp(updates=(LowRank("k", down, _rand(width, 2, seed=6, std=0.3), 0.7, 0.3),))
        torch.manual_seed(3)
        out = vit.encode_text_embeddings(emb, ids, block_ops=[op], memory_budget=budget)
        (g,) = torch.autograd.grad(out.square().sum(), down)
        return g

    one_row = vit.text_memory_bytes(1, int(ids.argmax(-1).max()) + 1)
    # the same random stream: one pass of all rows vs chunks of 2 rows draws masks in the same order
    torch.testing.assert_close(grad(one_row * 2), grad(None), rtol=1e-4, atol=1e-6)


def test_bad_block_ops_are_clear_errors(vit, images):
    width = vit.visual.width
    with pytest.raises(ValueError, match="update must be a clip.LowRank on one of"):
        vit.encode_image(images, block_ops=[BlockOp(updates=(low_rank("qkv", width, width, 0),))])
    with pytest.raises(ValueError, match="branch must be a clip.Branch reading one of"):
        vit.encode_image(images, block_ops=[BlockOp(branches=(Branch(lambda x: x, reads="ln_post"),))])
    with pytest.raises(ValueError, match="down .r, D_in. and up .D_out, r."):
        vit.encode_image(images, block_ops=[BlockOp(updates=(LowRank("q", _rand(2, width), _rand(width, 3)),))])
    with pytest.raises(ValueError, match="block ops for a transformer with"):
        vit.encode_image(images, block_ops=[None] * (vit.visual.transformer.layers + 1))
    resnet = make_tiny_clip("resnet")
    with pytest.raises(ValueError, match="need a Vision Transformer"):
        resnet.encode_image(torch.zeros(1, 3, 64, 64), block_ops=[BlockOp()])


def test_merged_schedules_add_up(vit, images):
    width = vit.visual.width
    a, b = every_op(width, 1), every_op(width, 2)
    merged = clip.merge_block_ops([[None, a], None, [b]])
    assert merged[1] is not None and len(merged) == 2
    with torch.no_grad():
        got = vit.encode_image(images, block_ops=merged)
        want = ref_image(vit, images, [b, a])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert clip.merge_block_ops([None, []]) is None


# ---------------------------------------------------------------------------------------------- representation tokens
def test_prompt_tokens_come_back_after_ln_post_from_a_last_block_of_cls_and_those_tokens(vit, images):
    """Tokens added at a middle block (MMRL's representation tokens) and read after the last block: the last block
    computes CLS and them only, and both equal the full computation written by hand."""
    width = vit.visual.width
    first, second = _rand(3, width, seed=21), _rand(3, width, seed=22)
    ops = [None, LayerOp(add=first)]
    v = vit.visual
    with torch.no_grad():
        feats, tokens = vit.encode_image(images, ops=ops, prompt_tokens=True)
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = v.ln_pre(torch.cat([v.class_embedding.expand(3, 1, -1), x], 1) + v.positional_embedding)
        x = ref_block(v.transformer.resblocks[0], x, False, None)
        x = ref_block(v.transformer.resblocks[1], torch.cat([x, first.expand(3, -1, -1)], 1), False, None)
        x = v.ln_post(x)
        torch.testing.assert_close(feats, x[:, 0] @ v.proj, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tokens, x[:, -3:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feats, vit.encode_image(images, ops=ops), rtol=1e-6, atol=1e-6)
        # replaced at the next block: the new tokens are the ones read
        feats2, tokens2 = vit.encode_image(images, ops=[LayerOp(add=first), LayerOp(replace=second)],
                                           prompt_tokens=True)
    assert tokens2.shape == (3, 3, width) and not torch.allclose(tokens2, tokens)


def test_text_tokens_added_at_a_middle_block_stay_exact_with_the_shared_prefix(monkeypatch):
    """MMRL's text side: tokens inserted after SOS at a middle block (EOT moves), replaced at the next."""
    vit = make_tiny_clip("vit", seed=1, transformer_layers=4)
    width = vit.transformer.width
    ids = class_ids(vit)
    ops = [None, None, LayerOp(add=_rand(5, width, seed=31)), LayerOp(replace=_rand(5, width, seed=32))]
    monkeypatch.setattr(vit, "text_pass_overhead", 0)
    with torch.no_grad():
        shared = vit.encode_text_embeddings(vit.token_embedding(ids), ids, ops=ops)
        monkeypatch.setattr(vit, "text_prefix_sharing", False)
        monkeypatch.setattr(vit, "text_truncation", False)
        plain = vit.encode_text_embeddings(vit.token_embedding(ids), ids, ops=ops)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
