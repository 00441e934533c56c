"""Shared-prefix text encoding and the text memory budget: same logits and gradients as the plain path.

Every method's text layout is written here with clip's own API (token ids, embeddings, ``LayerOp``), so the
tests say exactly which layout they check: CoOp (class at the end), CoCoOp (context per image, rows in image or in
class order), IVLP/MaPLe/PromptSRC (deep replace), MPL (replace and modular add/remove), CasPL's composed
``[SOS][adapt][boost][words]``. Also: class rows in buckets cut at their EOT (and padded buckets), the last block
computing EOT alone, the cost rule that decides sharing, and CoCoOp's budgeted one-call training step.
"""
import copy

import pytest
import torch

import clip
from clip import LayerOp, compose
from clip.text_prefix import find_shared_prefix, plan_buckets

from tiny_clip import make_tiny_clip
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

NAMES = ["cat", "big dog", "red sports car", "tree frog", "maple leaf", "x"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = make_tiny_clip("vit", transformer_layers=3)
    m.text_pass_overhead = 0  # count tokens only: share whenever it saves any, every length in its own pass
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def model64(model):
    """The same model in float64 (LayerNorm still computes in fp32): the arbiter of fp32 rounding."""
    return copy.deepcopy(model).to(torch.float64)


def width(m):
    return m.ln_final.weight.shape[0]


def class_rows(m, prefix, n_ctx, ctx, names=NAMES):
    """CoOp's assembly: ``[SOS][ctx (n_ctx slots)][rest of prefix][name][.][EOT]``, ctx (n_ctx, D) or (C, n_ctx, D)."""
    ids = clip.tokenize([f"{prefix} {n}." for n in names])
    emb = m.token_embedding(ids)
    c = ids.shape[0]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(c, -1, -1)
    return torch.cat([emb[:, :1], ctx, emb[:, 1 + n_ctx:]], dim=1), ids


def param(*shape):
    return torch.randn(*shape).mul_(0.5).requires_grad_(True)


def layout_coop(m):
    ctx = param(4, width(m))
    emb, ids = class_rows(m, "X X X X", 4, ctx)
    return dict(x=emb, text_ids=ids), [ctx], 1


def layout_coop_init(m):  # CTX_INIT "a photo of a": every word learned
    ctx = param(4, width(m))
    emb, ids = class_rows(m, "a photo of a", 4, ctx)
    return dict(x=emb, text_ids=ids), [ctx], 1


def layout_cocoop(m):  # context + meta-net bias per image, all images' prompts in one call
    ctx, bias = param(4, width(m)), param(3, width(m))
    rows, ids = [], None
    for b in range(3):
        emb, ids = class_rows(m, "a photo of a", 4, ctx + bias[b])
        rows.append(emb)
    return dict(x=torch.cat(rows), text_ids=ids.repeat(3, 1)), [ctx, bias], 3


def layout_cocoop_interleaved(m):  # the same rows ordered class by class: groups are not contiguous
    inputs, params, groups = layout_cocoop(m)
    rows = inputs["x"].unbind(0)  # (a graph that saves no tensors: both paths backpropagate through it)
    order = torch.arange(len(rows)).view(groups, -1).t().reshape(-1).tolist()
    x = torch.stack([rows[i] for i in order])
    return dict(x=x, text_ids=inputs["text_ids"][order]), params, groups


def deep_replace(m, n_ctx, prefix, depth=3):
    ctx = param(n_ctx, width(m))
    deep = [param(n_ctx, width(m)) for _ in range(depth - 1)]
    emb, ids = class_rows(m, prefix, n_ctx, ctx)
    ops = [None] + [LayerOp(replace=t) for t in deep]
    return dict(x=emb, text_ids=ids, ops=ops, n_prompt=n_ctx), [ctx, *deep], 1


def layout_ivlp(m):
    return deep_replace(m, 2, "a photo of a")


def layout_maple(m):
    return deep_replace(m, 2, "X X a photo of a", depth=2)


def layout_promptsrc(m):
    return deep_replace(m, 4, "a photo of a")


def layout_mpl_replace(m):
    return deep_replace(m, 1, "X a photo of a")


def layout_mpl_modular(m):  # the segment shrinks and grows: 2 -> 2 -> 3 tokens
    ctx = param(2, width(m))
    add1, add2 = param(1, width(m)), param(3, width(m))
    emb, ids = class_rows(m, "X X a photo of a", 2, ctx)
    ops = [None, LayerOp(remove=1, add=add1), LayerOp(remove=2, add=add2)]
    return dict(x=emb, text_ids=ids, ops=ops, n_prompt=2), [ctx, add1, add2], 1


def layout_caspl(m):  # [SOS][adapt x2][boost x2][a photo of a][class .][EOT], two prompt sets
    adapt = [param(2, width(m)) for _ in range(3)]
    boost = [param(2, width(m)) for _ in range(3)]
    emb, ids = class_rows(m, "X X Y Y a photo of a", 4, torch.cat([adapt[0], boost[0]]))
    ops = compose([[None] + [LayerOp(replace=t) for t in adapt[1:]],
                   [None, LayerOp(replace=boost[1]), LayerOp(remove=2, add=boost[2])]])
    return dict(x=emb, text_ids=ids, ops=ops, n_prompt=(2, 2)), [*adapt, *boost], 1


def layout_batch1_op(m):  # op tensors of batch 1 are shared too
    ctx, deep = param(2, width(m)), param(1, 2, width(m))
    emb, ids = class_rows(m, "a photo of a", 2, ctx)
    return dict(x=emb, text_ids=ids, ops=[None, LayerOp(replace=deep)], n_prompt=2), [ctx, deep], 1


SHARED = {"coop": layout_coop, "coop_init": layout_coop_init, "cocoop": layout_cocoop,
          "cocoop_interleaved": layout_cocoop_interleaved, "ivlp": layout_ivlp,
          "maple": layout_maple, "promptsrc": layout_promptsrc, "mpl_replace": layout_mpl_replace,
          "mpl_modular": layout_mpl_modular, "caspl": layout_caspl, "batch1_op": layout_batch1_op}


def run(m, inputs, params, sharing, **kw):
    """Features and the gradient of every learned tensor, with the prefix sharing on or off."""
    for p in params:
        p.grad = None
    m.text_prefix_sharing = sharing
    calls = []
    hook = m.transformer.register_forward_pre_hook(lambda mod, args: calls.append(tuple(args[0].shape[:2])))
    try:
        feats = m.encode_text_embeddings(**inputs, **kw)
    finally:
        hook.remove()
        m.text_prefix_sharing = True
    weight = torch.linspace(-1, 1, feats.numel()).view_as(feats)
    (feats * weight).sum().backward()
    return feats.detach(), [p.grad.clone() for p in params], calls


def assert_close(a, b):
    assert_close_ulps(a, b, 64)  # prefix once / buckets / chunks vs one pass: measured <= 5 ulps


@pytest.mark.parametrize("name", sorted(SHARED))
def test_prefix_sharing_is_exact_for_every_layout(model, model64, name):
    torch.manual_seed(1)
    inputs, params, groups = SHARED[name](model)
    shared, shared_grads, calls = run(model, inputs, params, True)
    plain, plain_grads, plain_calls = run(model, inputs, params, False)
    torch.manual_seed(1)
    inputs64, params64, _ = SHARED[name](model64)  # the same values, in a float64 model
    _, exact_grads, _ = run(model64, inputs64, params64, False)
    n = inputs["x"].shape[0]
    assert len(plain_calls) == 1 and plain_calls[0][0] == n
    # the prefix ran once per group (batch 1, or once per image for CoCoOp), then the class-specific rest in
    # buckets of equal length, each row cut right after its EOT: not one position more than the rows hold
    k = calls[0][1]
    assert calls[0][0] == groups and sum(b for b, _ in calls[1:]) == n
    assert max(length for _, length in calls[1:]) == plain_calls[0][1] - k
    assert sum(b * length for b, length in calls[1:]) == int((inputs["text_ids"].argmax(-1) + 1 - k).sum())
    assert_close(shared, plain)
    # Gradients: in fp32 each path carries its own rounding (up to ~1e-5 of the largest entry for a deep op's
    # small gradient, the plain path's as much as the shared one's), so both are held to the float64 value.
    for g, h, exact in zip(shared_grads, plain_grads, exact_grads):
        assert_close(g, exact)
        assert_close(h, exact)


@pytest.mark.parametrize("groups", [1, 3])
def test_attention_continues_a_prefix_and_computes_one_position_alone(model, groups):
    """A block run on a sequence's last positions against its prefix's keys/values (one prefix per block of rows,
    never copied per row beforehand) equals the whole sequence's; ``query_at`` gives one position per row alone."""
    torch.manual_seed(4)
    block = model.transformer.resblocks[0]
    rows, prefix, rest = 6, 4, 5
    head = torch.randn(groups, prefix, width(model))
    x = torch.cat([head.repeat_interleave(rows // groups, 0), torch.randn(rows, rest, width(model))], dim=1)
    whole = block(x, causal=True)
    _, kv = block(head, causal=True, return_kv=True)
    assert_close(block(x[:, prefix:], causal=True, prefix_kv=kv), whole[:, prefix:])
    end = torch.full((rows,), rest - 1)
    assert_close(block(x[:, prefix:], causal=True, prefix_kv=kv, query_at=end), whole[:, -1:])
    assert_close(block(x, causal=True, query_at=end + prefix), whole[:, -1:])
    at = torch.tensor([0, 4, 2, 3, 1, 4])  # positions of rows that end at different lengths (a padded bucket)
    picked = whole[torch.arange(rows), prefix + at].unsqueeze(1)
    assert_close(block(x[:, prefix:], causal=True, prefix_kv=kv, query_at=at), picked)
    assert_close(block(x, causal=True, query_at=at + prefix), picked)
    with pytest.raises(ValueError, match="do not split"):
        block(x[:4, prefix:], causal=True, prefix_kv=(kv[0][:1].expand(3, -1, -1, -1), kv[1][:1].expand(3, -1, -1, -1)))


def test_bucket_plan_minimises_tokens_plus_passes():
    lengths = torch.tensor([4, 5, 5, 9, 4, 9, 9, 6])
    assert plan_buckets(lengths, 0) == ([(4, 2), (5, 2), (6, 1), (9, 3)], 2 * 4 + 2 * 5 + 6 + 3 * 9)
    assert plan_buckets(lengths, 100) == ([(9, 8)], 8 * 9 + 100)  # passes dear: one pass, padded
    # padding the 6 to 9 costs 3 tokens, the same as its own pass; padding the 4s to 5 costs 2 (< 3)
    assert plan_buckets(lengths, 3) == ([(5, 4), (9, 4)], 4 * 5 + 3 + 4 * 9 + 3)


def test_sharing_is_used_only_when_it_pays_and_padded_buckets_stay_exact(model, model64):
    torch.manual_seed(6)
    inputs, params, _ = layout_mpl_modular(model)
    n = inputs["x"].shape[0]
    try:
        model.text_pass_overhead = 4  # NAMES end at 4 lengths: some share a pass
        shared, shared_grads, calls = run(model, inputs, params, True)
        assert 2 < len(calls) < 1 + 4 and sum(b for b, _ in calls[1:]) == n
        model.text_pass_overhead = 10 ** 6  # a pass costs more than any token: the plain path, one pass
        plain, plain_grads, plain_calls = run(model, inputs, params, True)
        assert plain_calls == [(n, plain_calls[0][1])]
    finally:
        model.text_pass_overhead = 0
    torch.manual_seed(6)
    inputs64, params64, _ = layout_mpl_modular(model64)
    _, exact_grads, _ = run(model64, inputs64, params64, False)
    assert_close(shared, plain)
    for g, h, exact in zip(shared_grads, plain_grads, exact_grads):
        assert_close(g, exact)
        assert_close(h, exact)


def test_trace_and_layout_are_those_of_the_whole_sequence(model):
    inputs, _, _ = layout_caspl(model)
    traces = {}
    for sharing in (True, False):
        model.text_prefix_sharing = sharing
        trace = clip.LayoutTrace()
        with torch.no_grad():
            model.encode_text_embeddings(**inputs, trace=trace)
        traces[sharing] = (list(trace), trace.layout)
    model.text_prefix_sharing = True
    assert traces[True] == traces[False]


def fallback_front(m):
    ids = clip.tokenize([f"{n} X X X X." for n in NAMES])  # CoOp "front": the class name right after SOS
    return dict(x=m.token_embedding(ids), text_ids=ids)


def fallback_csc(m):
    emb, ids = class_rows(m, "X X X X", 4, torch.randn(len(NAMES), 4, width(m)))
    return dict(x=emb, text_ids=ids)


def fallback_per_row_ops(m):
    emb, ids = class_rows(m, "a photo of a", 2, torch.randn(2, width(m)))
    ops = [None, LayerOp(replace=torch.randn(len(NAMES), 2, width(m)))]
    return dict(x=emb, text_ids=ids, ops=ops, n_prompt=2)


def fallback_replace_at(m):
    emb, ids = class_rows(m, "a photo of a", 2, torch.randn(2, width(m)))
    ops = [None, LayerOp(replace=torch.randn(1, width(m)), replace_at=7)]
    return dict(x=emb, text_ids=ids, ops=ops, n_prompt=2)


@pytest.mark.parametrize("layout", [fallback_front, fallback_csc, fallback_per_row_ops, fallback_replace_at])
def test_layouts_that_cannot_share_fall_back(model, layout):
    inputs = layout(model)
    calls = []
    hook = model.transformer.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        got = model.encode_text_embeddings(**inputs)
    hook.remove()
    model.text_prefix_sharing = False
    with torch.no_grad():
        want = model.encode_text_embeddings(**inputs)
    model.text_prefix_sharing = True
    assert calls == [len(NAMES)]
    assert torch.equal(got, want)


def test_middle_class_position_shares_only_the_context_before_the_name(model):
    ids = clip.tokenize([f"X X {n} X X." for n in NAMES])
    x = model.token_embedding(ids) + model.positional_embedding[:77]
    shared = find_shared_prefix(x, ids, ids.argmax(-1), [], 0)
    assert shared is not None and shared.length == 3 and shared.groups == 1


def test_groups_need_not_be_contiguous():
    x = torch.randn(2, 3, 4).repeat(3, 1, 1)  # rows a b a b a b
    ids = torch.tensor([[1, 2, 3]]).repeat(6, 1)
    shared = find_shared_prefix(x, ids, torch.full((6,), 2), [], 0)
    assert shared.length == 2 and shared.groups == 2
    assert torch.equal(x[shared.first[shared.group], :2], x[:, :2])


def saved_bytes(fn, model):
    """Bytes of the activations autograd keeps for backward (CLIP's own weights, also saved, not counted)."""
    seen, total = {p.untyped_storage().data_ptr() for p in model.parameters()}, 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize("name", ["mpl_modular", "cocoop"])
@pytest.mark.parametrize("sharing", [True, False])
def test_memory_budget_chunks_rows_with_equal_results(model, name, sharing):
    torch.manual_seed(2)
    inputs, params, _ = SHARED[name](model)
    n = inputs["x"].shape[0]
    free, free_grads, _ = run(model, inputs, params, sharing)
    length = int(inputs["text_ids"].argmax(-1).max()) + 1
    budget = model.text_memory_bytes(1, length)  # one whole row: the text pass runs in several chunks
    chunked, chunked_grads, calls = run(model, inputs, params, sharing, memory_budget=budget)
    rows = [c[0] for c in calls[1 if sharing else 0:]]
    assert len(rows) >= 2 and max(rows) < n and sum(rows) == n
    assert_close(chunked, free)
    for g, h in zip(chunked_grads, free_grads):
        assert_close(g, h)


def test_budget_bounds_what_training_keeps_for_backward(model):
    """Checkpointed chunks keep (almost) nothing for backward; the estimate bounds what the plain pass keeps."""
    inputs, _, _ = layout_coop(model)
    model.text_prefix_sharing = False
    length = int(inputs["text_ids"].argmax(-1).max()) + 1
    _, free = saved_bytes(lambda: model.encode_text_embeddings(**inputs), model)
    estimate = model.text_memory_bytes(len(NAMES), length)
    assert free <= estimate <= 2 * free
    _, chunked = saved_bytes(lambda: model.encode_text_embeddings(**inputs, memory_budget=estimate // 3), model)
    model.text_prefix_sharing = True
    assert chunked < free / 4
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        model.encode_text_embeddings(**inputs, memory_budget=0)


def test_vit_b16_text_tower_shapes_random_weights():
    """ViT-B/16's text tower (width 512, 12 layers, 8 heads; a tiny image tower) with MPL-style deep prompts."""
    torch.manual_seed(3)
    cfg = dict(clip.model_config("ViT-B/16"), image_resolution=32, vision_layers=1, vision_width=64,
               vision_patch_size=16)
    m = clip.CLIP(**cfg).eval()
    m.text_pass_overhead = 0
    for p in m.parameters():
        p.requires_grad_(False)
    inputs, params, _ = deep_replace(m, 1, "X a photo of a", depth=9)
    inputs["x"], inputs["text_ids"] = inputs["x"][:3], inputs["text_ids"][:3]
    shared, shared_grads, calls = run(m, inputs, params, True)
    plain, plain_grads, _ = run(m, inputs, params, False)
    assert shared.shape == (3, 512) and calls[0] == (1, 6)  # [SOS][ctx] a photo of a
    assert_close(shared, plain)
    for g, h in zip(shared_grads, plain_grads):
        assert_close(g, h)


def test_cocoop_training_step_is_one_call_bounded_by_its_budget(model):
    """CoCoOp's training step: all images' prompts in one text-encoder call; PROMPTS_PER_CHUNK as a memory budget
    gives the same logits and gradients and keeps less for backward."""
    from trainers.cocoop import ConditionedCLIP, PromptLearner
    from trainers.config import make_block

    torch.manual_seed(5)
    cfg = make_block("TRAINER.COCOOP")
    cfg.N_CTX, cfg.CTX_INIT = 4, "a photo of a"
    learner = PromptLearner(cfg, NAMES, model)
    for p in learner.meta_net.parameters():  # a meta-net with visible effect
        p.data.normal_(std=0.5)
    net = ConditionedCLIP(model, learner)
    res = model.visual.input_resolution
    image, label = torch.randn(3, 3, res, res), torch.tensor([0, 4, 2])
    original, got = model.encode_text_embeddings, {}
    for per_chunk in (0, 4):  # unbounded; the memory of 4 whole prompts (the batch has 3 x 6 rows)
        learner.prompts_per_chunk = per_chunk
        learner.zero_grad(set_to_none=True)
        calls = []
        model.encode_text_embeddings = lambda *a, **k: calls.append(k["memory_budget"]) or original(*a, **k)
        try:
            logits, saved = saved_bytes(lambda: net(image).logits, model)
        finally:
            del model.encode_text_embeddings
        torch.nn.functional.cross_entropy(logits, label).backward()
        got[per_chunk] = logits.detach(), [p.grad.clone() for p in learner.parameters()], saved, calls
    (free, free_grads, free_saved, free_calls), (bound, bound_grads, bound_saved, bound_calls) = got[0], got[4]
    assert free_calls == [None] and len(bound_calls) == 1 and bound_calls[0] > 0
    assert_close(bound, free)
    for g, h in zip(bound_grads, free_grads):
        assert_close(g, h)
    assert bound_saved < free_saved / 2
