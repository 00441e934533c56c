"""MPL and MaPLe prompt learners: parameter counts, schedules, and equivalence with the reference semantics.

The reference semantics are written out by hand below (``reference_text`` / ``reference_image``), following
the pseudo-code of the official repositories: blocks run on the full 77-token text sequence with a causal
mask; at deep layer i the text context at positions 1..n_ctx is overwritten, and the vision branch keeps
``x[:L - n_rm]`` and appends the layer's new tokens. Our trainers express the same thing as LayerOp schedules.
"""
import pytest
import torch
import torch.nn.functional as F

import clip
from trainers.compat import UserError
from trainers.config import make_block
from trainers.maple import maple_as_mpl
from trainers.mpl import MultiModalPromptLearner, build_schedule
from trainers.prompted_clip import PromptedCLIP

from tiny_clip import make_tiny_clip
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

CLASSES = ["cat", "dog", "sea lion", "red-winged blackbird", "maple tree"]


def mpl_cfg(**kw):
    c = make_block("TRAINER.MPL")
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def meta_vit_b16():
    with torch.device("meta"):
        return clip.create_model("ViT-B/16")


def count(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# Full-size facts on the meta device
# ---------------------------------------------------------------------------------------------------------
def test_parameter_counts_vit_b16_meta():
    model = meta_vit_b16()
    with torch.device("meta"):
        ref = MultiModalPromptLearner(mpl_cfg(N_CTX=1, N_ADD_OP=2, N_RM_OP=1, PROMPT_DEPTH=9), CLASSES, model)
        xd = MultiModalPromptLearner(mpl_cfg(N_CTX=1, N_ADD_OP=2, N_RM_OP=1, PROMPT_DEPTH=3), CLASSES, model)
        maple = MultiModalPromptLearner(maple_as_mpl(make_block("TRAINER.MAPLE")), CLASSES, model, prefix="a photo of a")
    assert count(ref) == 6_702_336
    assert count(xd) == 1_971_456
    assert count(maple) == 3_555_072
    # buffers that depend on the class list are not part of the state dict
    assert not any("token_" in k for k in ref.state_dict())


def visual_trace(learner, model):
    prompts = learner()
    trace = []
    r = model.visual.input_resolution
    with torch.device("meta"):
        image = torch.empty(1, 3, r, r)
    model.encode_image(image, ops=prompts.vision_ops, trace=trace)
    return trace


def test_reference_schedule_sequence_lengths_vit_b16_meta():
    model = meta_vit_b16()
    with torch.device("meta"):
        learner = MultiModalPromptLearner(mpl_cfg(N_CTX=1, N_ADD_OP=2, N_RM_OP=1, PROMPT_DEPTH=9), CLASSES, model)
    assert learner.schedule.prompt_counts("vision", 12) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
    assert visual_trace(learner, model) == [198, 199, 200, 201, 202, 203, 204, 205, 206, 206, 206, 206]


def test_varying_per_layer_schedule_meta():
    model = meta_vit_b16()
    cfg = mpl_cfg(N_CTX=2, PROMPT_DEPTH=5, VISION_ADD=[1, 0, 3, 1], VISION_RM=[2, 0, 1, 4])
    with torch.device("meta"):
        learner = MultiModalPromptLearner(cfg, CLASSES, model)
    # layer 0: 2 (shallow); l1: 2-2+1*2=2; l2: 2-0+0=2; l3: 2-1+3*2=7; l4: 7-4+1*2=5; then carried
    expected = [2, 2, 2, 7, 5] + [5] * 7
    assert learner.schedule.prompt_counts("vision", 12) == expected
    assert visual_trace(learner, model) == [197 + p for p in expected]


def test_impossible_schedule_is_refused():
    model = make_tiny_clip("vit", vision_layers=3, transformer_layers=3)
    with pytest.raises(UserError, match="vision layer 1 removes 2 prompt tokens but only 1 exist"):
        MultiModalPromptLearner(mpl_cfg(N_CTX=1, N_RM_OP=2, PROMPT_DEPTH=3), CLASSES, model)
    with pytest.raises(UserError, match="PROMPT_DEPTH"):
        build_schedule(mpl_cfg(PROMPT_DEPTH=13), 12)
    with pytest.raises(UserError, match="VISION_ADD has 2 entries"):
        build_schedule(mpl_cfg(PROMPT_DEPTH=4, VISION_ADD=[1, 2]), 12)
    with pytest.raises(UserError, match="COUPLING"):
        build_schedule(mpl_cfg(COUPLING="mlp"), 12)


# ---------------------------------------------------------------------------------------------------------
# Equivalence with the reference semantics on a tiny fp32 model
# ---------------------------------------------------------------------------------------------------------
def reference_text(model, embeddings, ids, deep, n_ctx):
    """Reference text path: full length, causal, positions 1..n_ctx overwritten at deep layers."""
    x = embeddings + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            t = deep[i - 1].unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], t, x[:, 1 + n_ctx:]], dim=1)
        x = block(x, causal=True)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ model.text_projection


def reference_image(model, image, shallow, deep, n_rm):
    """Reference vision path: prompts appended before ln_pre; at deep layers keep x[:L-n_rm] and append."""
    v = model.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = torch.cat([x, shallow.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
    x = v.ln_pre(x)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :x.shape[1] - n_rm], deep[i - 1].unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_logits(model, learner, image, n_rm, maple=False):
    cp = learner.class_prompts
    deep_t = list(learner.compound_prompts_text)
    if maple:
        deep_v = [learner.txt2img_proj[0][k](t) for k, t in enumerate(deep_t)]
    else:
        maps = learner.schedule.vision_maps
        deep_v = [torch.cat([learner.txt2img_proj[j][k](t) for j in range(maps[k])]) for k, t in enumerate(deep_t)]
    txt = reference_text(model, cp.assemble(learner.ctx), cp.token_ids, deep_t, cp.n_ctx)
    img = reference_image(model, image, learner.proj(learner.ctx), deep_v, n_rm)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    img = img / img.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * img @ txt.t()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return make_tiny_clip("vit", vision_layers=4, transformer_layers=4)


def images(model, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=g)


@pytest.mark.parametrize("n_ctx,n_add,n_rm,depth", [(1, 2, 1, 4), (2, 2, 1, 3), (2, 3, 2, 4), (2, 1, 1, 2)])
def test_mpl_equals_reference_semantics(tiny, n_ctx, n_add, n_rm, depth):
    torch.manual_seed(3)
    learner = MultiModalPromptLearner(mpl_cfg(N_CTX=n_ctx, N_ADD_OP=n_add, N_RM_OP=n_rm, PROMPT_DEPTH=depth,
                                              INDEPENDENT_INIT=True), CLASSES, tiny)
    net = PromptedCLIP(tiny, learner)
    image = images(tiny)
    with torch.no_grad():
        ours = net(image).logits
        ref = reference_logits(tiny, learner, image, n_rm)
    assert_close_ulps(ours, ref, 64)  # the reference's layer loop: measured <= 14 ulps
    # a schedule with the deep operations dropped gives other logits: the comparison above is not vacuous
    with torch.no_grad():
        prompts = learner()
        txt = net.encode_text(prompts)
        img = net.clip_model.encode_image(image, ops=prompts.vision_ops[:1])
        img = img / img.norm(dim=-1, keepdim=True)
    assert not torch.allclose(net.clip_model.logit_scale.exp() * img @ txt.t(), ours, atol=1e-3)


def test_maple_equals_reference_replacement(tiny):
    torch.manual_seed(4)
    mcfg = make_block("TRAINER.MAPLE")
    mcfg.PROMPT_DEPTH = 4
    learner = MultiModalPromptLearner(maple_as_mpl(mcfg), CLASSES, tiny, prefix="a photo of a")
    for p in learner.txt2img_proj.parameters():  # break the clone init so every layer's map differs
        p.data.normal_()
    image = images(tiny)
    with torch.no_grad():
        ours = PromptedCLIP(tiny, learner)(image).logits
        ref = reference_logits(tiny, learner, image, n_rm=mcfg.N_CTX, maple=True)
    assert_close_ulps(ours, ref, 64)  # the reference's layer loop: measured <= 14 ulps
    # MaPLe's learned context replaces "a photo": the prompt keeps "of a {class}."
    assert learner.class_prompts.texts[0] == "a photo of a cat."
    emb = tiny.token_embedding(clip.tokenize(["a photo"]))[0, 1:3]
    torch.testing.assert_close(learner.ctx.detach(), emb)


def test_mpl_with_add_equal_remove_is_maple(tiny):
    """MPL with one map per layer removing all N_CTX tokens (no carry) is MaPLe's replacement scheme."""
    mcfg = make_block("TRAINER.MAPLE")
    mcfg.PROMPT_DEPTH, mcfg.CTX_INIT = 3, ""
    torch.manual_seed(5)
    maple = MultiModalPromptLearner(maple_as_mpl(mcfg), CLASSES, tiny, prefix="X X", ctx_from_prefix=False)
    mpl = MultiModalPromptLearner(mpl_cfg(N_CTX=2, N_ADD_OP=1, N_RM_OP=2, PROMPT_DEPTH=3, CTX_INIT=""), CLASSES, tiny)
    assert mpl.schedule.prompt_counts("vision", 4) == [2, 2, 2, 2]  # nothing carried
    mpl.load_state_dict(maple.state_dict())
    image = images(tiny)
    with torch.no_grad():
        torch.testing.assert_close(PromptedCLIP(tiny, mpl)(image).logits, PromptedCLIP(tiny, maple)(image).logits)


def test_depth_one_is_shallow_prompting(tiny):
    torch.manual_seed(6)
    learner = MultiModalPromptLearner(mpl_cfg(N_CTX=2, PROMPT_DEPTH=1), CLASSES, tiny)
    assert count(learner) == learner.ctx.numel() + sum(p.numel() for p in learner.proj.parameters())
    image = images(tiny)
    with torch.no_grad():
        ours = PromptedCLIP(tiny, learner)(image).logits
        ref = reference_logits(tiny, learner, image, n_rm=0)
    assert_close_ulps(ours, ref, 64)  # the reference's layer loop: measured <= 14 ulps


def test_reference_init_clones_one_map_and_option_makes_them_independent(tiny):
    ref = MultiModalPromptLearner(mpl_cfg(N_CTX=1, PROMPT_DEPTH=3), CLASSES, tiny)
    w = [m.weight for row in ref.txt2img_proj for m in row]
    assert len(w) == 4 and all(torch.equal(w[0], x) for x in w[1:])
    ind = MultiModalPromptLearner(mpl_cfg(N_CTX=1, PROMPT_DEPTH=3, INDEPENDENT_INIT=True), CLASSES, tiny)
    w = [m.weight for row in ind.txt2img_proj for m in row]
    assert not any(torch.equal(w[0], x) for x in w[1:])
    # the text prompt of the reference: "X a photo of a {class}.", context initialised from "X"
    assert ref.class_prompts.texts[2] == "X a photo of a sea lion."
    torch.testing.assert_close(ref.ctx.detach(), tiny.token_embedding(clip.tokenize(["X"]))[0, 1:2])


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_other_couplings_train(tiny, coupling):
    torch.manual_seed(7)
    learner = MultiModalPromptLearner(mpl_cfg(N_CTX=1, PROMPT_DEPTH=4, COUPLING=coupling), CLASSES, tiny)
    n_maps = 2 if coupling == "shared" else 0
    if coupling == "shared":
        assert len(learner.txt2img_proj) == n_maps
    net = PromptedCLIP(tiny, learner)
    for p in tiny.parameters():
        p.requires_grad_(False)
    loss = F.cross_entropy(net(images(tiny)).logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in learner.parameters())


def test_modular_text_branch(tiny):
    """TEXT_MODE modular adds and removes text tokens too; EOT moves and the result matches a hand computation."""
    torch.manual_seed(8)
    cfg = mpl_cfg(N_CTX=1, PROMPT_DEPTH=3, TEXT_MODE="modular", TEXT_ADD=[2, 1], TEXT_RM=[1, 2], N_ADD_OP=1)
    learner = MultiModalPromptLearner(cfg, CLASSES, tiny)
    assert learner.schedule.prompt_counts("text", 4) == [1, 2, 1, 1]
    prompts = learner()
    cp = learner.class_prompts
    # hand computation: segment after SOS; layer 1 drops the ctx token and inserts t1 (2 tokens), layer 2 drops
    # both and inserts t2 (1 token); no truncation, causal attention over the current length
    x = cp.assemble(learner.ctx) + tiny.positional_embedding
    t1, t2 = (t.unsqueeze(0).expand(x.shape[0], -1, -1) for t in learner.compound_prompts_text)
    blocks = tiny.transformer.resblocks
    x = blocks[0](x, causal=True)
    x = blocks[1](torch.cat([x[:, :1], t1, x[:, 2:]], 1), causal=True)
    x = blocks[2](torch.cat([x[:, :1], t2, x[:, 3:]], 1), causal=True)
    x = blocks[3](x, causal=True)
    eot = cp.token_ids.argmax(-1)  # net change of the segment: 1 -> 1
    ref = tiny.ln_final(x)[torch.arange(len(eot)), eot] @ tiny.text_projection
    with torch.no_grad():
        ours = tiny.encode_text_embeddings(prompts.text_embeddings, prompts.text_ids, ops=prompts.text_ops,
                                           n_prompt=prompts.n_text_prompt)
    assert_close_ulps(ours, ref.detach(), 64)  # measured <= 5 ulps


def test_text_features_cached_during_evaluation(tiny):
    learner = MultiModalPromptLearner(mpl_cfg(N_CTX=1, PROMPT_DEPTH=3), CLASSES, tiny)
    net = PromptedCLIP(tiny, learner)
    calls, built = [], []
    original = tiny.encode_text_embeddings
    tiny.encode_text_embeddings = lambda *a, **k: calls.append(1) or original(*a, **k)
    learner.register_forward_hook(lambda *_: built.append(1))  # the prompts (vision ops too) are built once
    try:
        with torch.no_grad(), net.frozen_text_features():
            first = net(images(tiny, seed=1)).logits
            net(images(tiny, seed=2))
            net(images(tiny, seed=3))
        assert len(calls) == 1 and len(built) == 1
        with torch.no_grad():
            torch.testing.assert_close(net(images(tiny, seed=1)).logits, first)
        before = len(built)
        with net.frozen_text_features():  # with gradients, every call builds its own graph
            net(images(tiny, seed=1)).logits.sum().backward()
            net(images(tiny, seed=2)).logits.sum().backward()
        assert len(built) == before + 3 and learner.ctx.grad is not None
    finally:
        del tiny.encode_text_embeddings


def test_maple_reference_keys_load():
    """The official MaPLe names its per-layer maps ``compound_prompt_projections.<l>``."""
    from trainers.maple import from_reference_keys

    model = make_tiny_clip("vit", vision_layers=3, transformer_layers=3)
    mcfg = make_block("TRAINER.MAPLE")
    mcfg.PROMPT_DEPTH = 3
    learner = MultiModalPromptLearner(maple_as_mpl(mcfg), CLASSES, model, prefix="a photo of a")
    reference = {}
    for k, v in learner.state_dict().items():
        reference[k.replace("txt2img_proj.0.", "compound_prompt_projections.")] = torch.randn_like(v)
    assert any(k.startswith("compound_prompt_projections.1.") for k in reference)
    fresh = MultiModalPromptLearner(maple_as_mpl(mcfg), CLASSES, model, prefix="a photo of a")
    fresh.load_state_dict(from_reference_keys(reference), strict=True)
    torch.testing.assert_close(fresh.txt2img_proj[0][1].weight, reference["compound_prompt_projections.1.weight"])


@pytest.mark.parametrize("arch,text_width,vision_width,patches", [
    ("ViT-B/32", 512, 768, 49), ("ViT-L/14", 768, 1024, 256), ("ViT-L/14@336px", 768, 1024, 576)])
def test_mpl_and_maple_at_other_widths_meta(arch, text_width, vision_width, patches):
    """Nothing assumes 512/768: sizes come from the backbone, and the schedule runs at its sequence length."""
    with torch.device("meta"):
        model = clip.create_model(arch)
        mpl = MultiModalPromptLearner(mpl_cfg(N_CTX=1, N_ADD_OP=2, N_RM_OP=1, PROMPT_DEPTH=9), CLASSES, model)
        maple = MultiModalPromptLearner(maple_as_mpl(make_block("TRAINER.MAPLE")), CLASSES, model, prefix="a photo of a")
    linear = text_width * vision_width + vision_width
    assert count(mpl) == text_width + linear + 8 * text_width + 16 * linear
    assert count(maple) == 2 * text_width + linear + 8 * 2 * text_width + 8 * linear
    first = 1 + patches
    assert visual_trace(mpl, model) == [first + p for p in [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]] + [first + 9] * (
        model.visual.layers - 12)
    prompts = mpl()
    feats = model.encode_text_embeddings(prompts.text_embeddings, prompts.text_ids, ops=prompts.text_ops,
                                         n_prompt=prompts.n_text_prompt)
    assert feats.shape == (len(CLASSES), model.text_projection.shape[1])
