"""Composed prompt sets (clip.compose): every op acts on its own part of the prompt segment, in a declared order."""
import pytest
import torch

import clip
from clip.ops import LayerOp, PromptSegment, compose

from tiny_clip import make_tiny_clip

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)


def tokens(*ids):
    """(n, 1) 'tokens' whose single channel is their identity, so sequences can be read back exactly."""
    return torch.tensor(ids, dtype=torch.float32).view(-1, 1)


def read(x):
    return [int(v) for v in x[0, :, 0].tolist()]


def test_two_sets_vision_boost_then_mpl():
    """[CLS][patches][boost][MPL]: boost replaced in place, MPL removes only its own newest tokens."""
    x = tokens(0, 1, 2).unsqueeze(0)  # CLS + 2 patches
    seg = PromptSegment(start=3)
    boost = [LayerOp(add=tokens(10, 11)), LayerOp(remove=2, add=tokens(20, 21)), LayerOp(remove=2, add=tokens(30, 31))]
    mpl = [LayerOp(add=tokens(100)), LayerOp(remove=1, add=tokens(200, 201)), LayerOp(remove=1, add=tokens(300))]
    ops = compose([boost, mpl])
    x = seg.apply(x, ops[0], 0)
    assert read(x) == [0, 1, 2, 10, 11, 100]
    x = seg.apply(x, ops[1], 1)
    assert read(x) == [0, 1, 2, 20, 21, 200, 201]
    x = seg.apply(x, ops[2], 2)
    assert read(x) == [0, 1, 2, 30, 31, 200, 300]
    assert seg.layout() == ((3, 2), (5, 2))


def test_text_order_differs_and_eot_follows():
    """text [SOS][adapt][boost][words][EOT]: replace acts on each set's own slots; EOT moves with additions."""
    x = tokens(0, 1, 2, 10, 11, 50, 51, 99).unsqueeze(0)  # SOS, adapt x2, boost x2, words, EOT
    seg = PromptSegment(start=1, length=(2, 2), eot=torch.tensor([7]))
    adapt = [None, LayerOp(replace=tokens(3, 4)), LayerOp(remove=1, add=tokens(5, 6))]
    boost = [None, LayerOp(replace=tokens(12, 13)), LayerOp(replace=tokens(14, 15))]
    ops = compose([adapt, boost])
    assert ops[0] is None
    x = seg.apply(x, ops[1], 1)
    assert read(x) == [0, 3, 4, 12, 13, 50, 51, 99]
    x = seg.apply(x, ops[2], 2)
    assert read(x) == [0, 3, 5, 6, 14, 15, 50, 51, 99]
    assert int(seg.eot) == 8 and read(x)[8] == 99


def test_bad_compositions_are_clear_errors():
    seg = PromptSegment(start=1, length=(1, 2))
    x = tokens(0, 1, 2, 3, 4).unsqueeze(0)
    with pytest.raises(ValueError, match="one LayerOp per part"):
        seg.apply(x, LayerOp(remove=1), 1)
    with pytest.raises(ValueError, match="got 3 ops for a prompt segment of 2 parts"):
        seg.apply(x, (None, None, LayerOp(remove=1)), 1)
    with pytest.raises(ValueError, match="prompt part 0 holds only 1"):
        seg.apply(x, (LayerOp(remove=2), None), 1)
    with pytest.raises(ValueError, match="holds only 2"):
        seg.apply(x, (None, LayerOp(replace=tokens(7, 8, 9))), 1)


def test_single_set_composition_equals_plain_schedule():
    """A one-set composition and the plain schedule give bit-identical features in both encoders."""
    torch.manual_seed(0)
    model = make_tiny_clip("vit", vision_layers=3, transformer_layers=3)
    dv, dt = model.visual.conv1.weight.shape[0], model.ln_final.weight.shape[0]
    v = [torch.randn(2, dv) for _ in range(3)]
    t = [torch.randn(2, dt) for _ in range(3)]
    vis = [LayerOp(add=v[0])] + [LayerOp(remove=2, add=p) for p in v[1:]]
    txt = [None] + [LayerOp(replace=p) for p in t[1:]]
    image = torch.randn(2, 3, 32, 32)
    ids = clip.tokenize(["X X a cat.", "X X a dog."])
    emb = model.token_embedding(ids)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image, ops=vis), model.encode_image(image, ops=compose([vis])))
        a = model.encode_text_embeddings(emb, ids, ops=txt, n_prompt=2)
        b = model.encode_text_embeddings(emb, ids, ops=compose([txt]), n_prompt=(2,))
    assert torch.equal(a, b)


def test_layout_trace_reports_every_part_per_layer():
    model = make_tiny_clip("vit", vision_layers=3)
    dv = model.visual.conv1.weight.shape[0]
    a = [LayerOp(add=torch.zeros(2, dv))] + [LayerOp(remove=2, add=torch.zeros(2, dv))] * 2
    b = [LayerOp(add=torch.zeros(1, dv)), LayerOp(add=torch.zeros(2, dv)), LayerOp(remove=3)]
    trace = clip.LayoutTrace()
    with torch.no_grad():
        model.encode_image(torch.zeros(1, 3, 32, 32), ops=compose([a, b]), trace=trace)
    first = 1 + (32 // 8) ** 2
    assert list(trace) == [first + 3, first + 5, first + 2]
    assert trace.layout == [((first, 2), (first + 2, 1)), ((first, 2), (first + 2, 3)), ((first, 2), (first + 2, 0))]


def test_clip_is_a_leaf_package():
    """clip/ imports nothing else of the project (the tiny model is registered from pretrain/)."""
    import ast
    import pathlib

    project = {"pretrain", "trainers", "dassl", "datasets", "tools", "train", "bench"}
    for path in pathlib.Path(clip.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in project, f"{path.name} imports {name}"
