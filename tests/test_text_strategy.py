"""The text path's strategy by device (issue 31): the token ids are read once per ids tensor (no host
synchronisation per step), CUDA plans with its own pass overhead (one padded pass unless sharing saves more),
and the cheap pre-check leaves the CPU's choice exactly as the cost rule made it."""
import pytest
import torch

import clip
from clip import text_prefix
from clip.text_prefix import CUDA_TEXT_PASS_OVERHEAD, find_shared_prefix, plan_buckets

from tiny_clip import make_tiny_clip

NAMES = ["cat", "big dog", "red sports car", "tree frog", "maple leaf", "x", "a very long class name indeed"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = make_tiny_clip("vit", transformer_layers=2)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def coop_rows(m, n_ctx=4, names=NAMES, per_row=False):
    """CoOp's rows: [SOS][ctx][a photo of a][name][.][EOT]; ``per_row``: another context in every row."""
    ids = clip.tokenize([f"{' '.join(['X'] * n_ctx)} a photo of a {n}." for n in names])
    emb = m.token_embedding(ids)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(len(names) if per_row else 1, n_ctx, emb.shape[-1], generator=g).expand(len(names), -1, -1)
    return torch.cat([emb[:, :1], ctx, emb[:, 1 + n_ctx:]], dim=1), ids


def paths(monkeypatch, m):
    """Which path each call took: "shared" or "plain"."""
    taken = []
    suffixes, rows = m._encode_text_suffixes, m._encode_text_rows
    monkeypatch.setattr(m, "_encode_text_suffixes", lambda *a, **k: taken.append("shared") or suffixes(*a, **k))
    monkeypatch.setattr(m, "_encode_text_rows", lambda *a, **k: taken.append("plain") or rows(*a, **k))
    return taken


def test_token_ids_are_read_once_per_ids_tensor(model, monkeypatch):
    made = []

    class Counting(text_prefix.IdPlan):
        def __init__(self, *a):
            made.append(1)
            super().__init__(*a)

    monkeypatch.setattr(text_prefix, "IdPlan", Counting)
    x, ids = coop_rows(model)
    with torch.no_grad():
        first = model.encode_text_embeddings(x, ids)
        again = model.encode_text_embeddings(x, ids)
        assert len(made) == 1 and torch.equal(first, again)  # the same buffer, step after step: read once
        model.encode_text_embeddings(x, ids.clone())
        assert len(made) == 2  # another tensor
        ids[-1, 1] = ids[-1, 1]  # written in place (same values): read again
        model.encode_text_embeddings(x, ids)
        assert len(made) == 3


def test_cuda_plans_with_its_own_pass_overhead(model):
    assert model.pass_overhead(torch.device("cpu")) == model.text_pass_overhead == 32
    assert model.pass_overhead(torch.device("cuda")) == model.text_pass_overhead_cuda == CUDA_TEXT_PASS_OVERHEAD
    assert CUDA_TEXT_PASS_OVERHEAD > 100 * model.text_pass_overhead


def test_with_the_cuda_overhead_one_padded_pass_runs(model, monkeypatch):
    x, ids = coop_rows(model)
    taken = paths(monkeypatch, model)
    with torch.no_grad():
        cpu_choice = model.encode_text_embeddings(x, ids)
        monkeypatch.setattr(model, "text_pass_overhead", CUDA_TEXT_PASS_OVERHEAD)  # what a CUDA tensor gets
        launch_bound = model.encode_text_embeddings(x, ids)
        model.text_prefix_sharing = False
        try:
            plain = model.encode_text_embeddings(x, ids)
        finally:
            model.text_prefix_sharing = True
    assert taken == ["shared", "plain", "plain"]
    assert torch.equal(launch_bound, plain)  # the truncated plain path itself
    torch.testing.assert_close(cpu_choice, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overhead", [0, 32, 60, 200, 8192])
@pytest.mark.parametrize("per_row", [False, True])
def test_the_pre_check_keeps_the_cost_rule_s_choice(model, monkeypatch, overhead, per_row):
    x, ids = coop_rows(model, per_row=per_row)
    monkeypatch.setattr(model, "text_pass_overhead", overhead)
    taken = paths(monkeypatch, model)
    with torch.no_grad():
        model.encode_text_embeddings(x, ids)
        # the rule as written before the pre-check: find the prefix, then compare the costs
        eot = ids.argmax(-1)
        length = int(eot.max()) + 1
        h = x[:, :length] + model.positional_embedding[:length]
        shared = find_shared_prefix(h, ids[:, :length], eot, [], 0)
        if shared is not None:
            _, cost = plan_buckets(eot - shared.length + 1, overhead)
            if shared.groups * shared.length + overhead + cost >= x.shape[0] * length + overhead:
                shared = None
    assert taken == ["plain" if shared is None else "shared"]


def test_the_choice_is_printed_once_per_device_and_class_count(capsys, monkeypatch):
    monkeypatch.setattr(text_prefix, "_LOGGED", set())
    for _ in range(3):
        text_prefix.log_text_strategy(torch.device("cuda", 0), 500, 21, 8192, None, None)
    text_prefix.log_text_strategy(torch.device("cuda", 0), 1000, 21, 8192, None, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Text encoder on cuda:0: one pass of 500 rows at the shortest common length (21 tokens); "
                     "pass overhead 8192 tokens",
                     "Text encoder on cuda:0: one pass of 1000 rows at the shortest common length (21 tokens); "
                     "pass overhead 8192 tokens"]
