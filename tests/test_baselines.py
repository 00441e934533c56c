"""The baselines (zero-shot CLIP, CoOp, CoCoOp, VPT, IVLP, PromptSRC): semantics, losses, aggregation.

Each method's logits are compared with a hand-written computation of the reference semantics on a tiny fp32 CLIP
whose text and vision widths differ (so a width mix-up cannot pass). The references below follow the reference
repositories' code: sequences in their ``(L, N, D)`` layout, the full 77-token text length, prompts inserted by
concatenation, CoOp's per-class loops for the class-token positions and CoCoOp's loop over images.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import clip
from trainers.checkpoints import read_prompt_state
from trainers.compat import UserError
from trainers.cocoop import ConditionedCLIP, PromptLearner as CoCoOpLearner
from trainers.config import make_block
from trainers.coop import PromptLearner as CoOpLearner
from trainers.prompted_clip import PromptedCLIP
from trainers.prompts import DeepPrompts
from trainers.promptsrc import TEMPLATES as PROMPTSRC_TEMPLATES
from trainers.promptsrc import GPAState, PromptSRC, gpa_weights, self_consistency_losses
from trainers.templates import CUSTOM_TEMPLATES, IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_SELECT, zeroshot_text_features
from trainers.zsclip import ZeroshotCLIP, ZeroshotCLIP2

from tiny_clip import make_tiny_clip
from ulps import assert_close_ulps

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

CLASSES = ["cat", "sea lion", "red-winged blackbird", "maple_tree"]


def cfg_of(block, **kw):
    """The method's config block (its registered defaults) with ``kw`` set."""
    c = make_block(f"TRAINER.{block}")
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def deep_prompts(model, classes, n_ctx_text, depth_text, n_ctx_vision, depth_vision, ctx_init="a photo of a"):
    """IVLP's (and VPT's) prompt learner: deep prompts holding the class prompts."""
    return DeepPrompts(model, n_text=n_ctx_text, depth_text=depth_text, n_vision=n_ctx_vision,
                       depth_vision=depth_vision, key="TRAINER.IVLP", classnames=classes, ctx_init=ctx_init)


# ---------------------------------------------------------------------------------------------------------
# Hand-written reference semantics, (L, N, D) layout, full length
# ---------------------------------------------------------------------------------------------------------
def ref_text(model, prompts, ids, deep=(), n_ctx=0):
    """TextEncoder of the references: deep prompts overwrite positions 1..n_ctx before blocks 1..len(deep)."""
    x = (prompts + model.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            ctx = deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], ctx, x[1 + n_ctx:]], dim=0)
        x = block(x.permute(1, 0, 2), causal=True).permute(1, 0, 2)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ model.text_projection


def ref_image(model, image, vpt=(), n_ctx=0):
    """VisionTransformer of the references: VPT appended before ln_pre; VPT_shallow replaces the tail later."""
    v = model.visual
    x = v.conv1(image).reshape(image.shape[0], v.conv1.out_channels, -1).permute(0, 2, 1)
    cls = v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + v.positional_embedding
    if len(vpt):
        x = torch.cat([x, vpt[0].expand(x.shape[0], -1, -1)], dim=1)
    x = v.ln_pre(x).permute(1, 0, 2)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < len(vpt):
            x = torch.cat([x[:x.shape[0] - n_ctx], vpt[i].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
        x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
    return v.ln_post(x.permute(1, 0, 2)[:, 0]) @ v.proj


def ref_logits(model, image_features, text_features):
    img = image_features / image_features.norm(dim=-1, keepdim=True)
    txt = text_features / text_features.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * img @ txt.t()


def tokens(model, texts):
    ids = clip.tokenize(texts)
    return ids, model.token_embedding(ids)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_clip("vit", vision_layers=3, transformer_layers=3, vision_width=128)


def images(model, n=3, seed=1):
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_equals_reference(tiny, position, csc):
    torch.manual_seed(0)
    learner = CoOpLearner(cfg_of("COOP", N_CTX=4, CSC=csc, CLASS_TOKEN_POSITION=position), CLASSES, tiny)
    image = images(tiny)
    # CoOp's PromptLearner.forward, written out
    names = [c.replace("_", " ") for c in CLASSES]
    ids, emb = tokens(tiny, [f"X X X X {n}." for n in names])
    prefix, suffix = emb[:, :1], emb[:, 5:]
    ctx = learner.ctx if csc else learner.ctx.unsqueeze(0).expand(len(CLASSES), -1, -1)
    rows = []
    for i, name in enumerate(names):
        n = len(clip.tokenizer().encode(name))
        cls, rest = suffix[i:i + 1, :n], suffix[i:i + 1, n:]
        c = ctx[i:i + 1]
        rows.append({"end": [prefix[i:i + 1], c, suffix[i:i + 1]],
                     "middle": [prefix[i:i + 1], c[:, :2], cls, c[:, 2:], rest],
                     "front": [prefix[i:i + 1], cls, c, rest]}[position])
    prompts = torch.cat([torch.cat(r, dim=1) for r in rows])
    with torch.no_grad():
        ref = ref_logits(tiny, tiny.encode_image(image), ref_text(tiny, prompts, ids))
        ours = PromptedCLIP(tiny, learner)(image).logits
    assert_close_ulps(ours, ref, 64)  # hand-assembled reference: measured <= 12 ulps
    assert learner.ctx.shape == ((len(CLASSES), 4, 64) if csc else (4, 64))


def test_coop_init_phrase_and_resnet_backbone():
    rn = make_tiny_clip("resnet")
    learner = CoOpLearner(cfg_of("COOP", CTX_INIT="a_photo of a", CSC=True), CLASSES, rn)
    # n_ctx = the words of the phrase; CSC is ignored with an init (as the reference)
    torch.testing.assert_close(learner.ctx.detach(), tokens(rn, ["a photo of a"])[1][0, 1:5].detach())
    assert learner.class_prompts.texts[1] == "a photo of a sea lion."
    with torch.no_grad():
        logits = PromptedCLIP(rn, learner)(images(rn)).logits
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()


def cocoop_reference(model, learner, image):
    """CoCoOp's CustomCLIP.forward: one text-encoder call per image, full length."""
    ids = learner.class_prompts.token_ids
    _, emb = tokens(model, learner.class_prompts.texts)
    n_ctx = learner.ctx.shape[0]
    f = model.encode_image(image)
    f = f / f.norm(dim=-1, keepdim=True)
    ctx_shifted = learner.ctx.unsqueeze(0) + learner.meta_net(f).unsqueeze(1)
    out = []
    for ctx_i, f_i in zip(ctx_shifted, f):
        prompts = torch.cat([emb[:, :1], ctx_i.expand(len(ids), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
        t = ref_text(model, prompts, ids)
        t = t / t.norm(dim=-1, keepdim=True)
        out.append(model.logit_scale.exp() * f_i @ t.t())
    return torch.stack(out)


@pytest.mark.parametrize("chunk", [0, 1, 9])  # whole batch; one image per call (1 < C); two images per call
def test_cocoop_batched_equals_per_image(tiny, chunk):
    torch.manual_seed(1)
    learner = CoCoOpLearner(cfg_of("COCOOP", N_CTX=4, CTX_INIT="a photo of a"), CLASSES, tiny)
    for p in learner.meta_net.parameters():  # a meta-net with visible effect
        p.data.normal_(std=0.5)
    learner.prompts_per_chunk = chunk
    net = ConditionedCLIP(tiny, learner)
    image = images(tiny, n=5)
    calls = []
    original = tiny.encode_text_embeddings
    tiny.encode_text_embeddings = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():
            ours = net(image).logits
    finally:
        del tiny.encode_text_embeddings
    with torch.no_grad():
        ref = cocoop_reference(tiny, learner, image)
    assert_close_ulps(ours, ref, 64)  # hand-assembled reference: measured <= 12 ulps
    assert len(calls) == {0: 1, 1: 5, 9: 3}[chunk]  # images per text-encoder call: 5, 1, 2
    assert sum(p.numel() for p in learner.parameters()) == 4 * 64 + (32 * 2 + 2) + (2 * 64 + 64)  # E=32 -> hidden 2


@pytest.mark.parametrize("n_text,d_text,n_vis,d_vis", [(2, 3, 2, 3), (4, 2, 3, 1), (2, 3, 0, 0), (3, 1, 2, 2)])
def test_ivlp_equals_reference(tiny, n_text, d_text, n_vis, d_vis):
    torch.manual_seed(2)
    learner = deep_prompts(tiny, CLASSES, n_ctx_text=n_text, depth_text=d_text, n_ctx_vision=n_vis,
                           depth_vision=d_vis)
    image = images(tiny)
    names = [c.replace("_", " ") for c in CLASSES]
    prefix = "a photo of a" if n_text <= 4 else " ".join(["X"] * n_text)
    ids, emb = tokens(tiny, [f"{prefix} {n}." for n in names])
    prompts = torch.cat([emb[:, :1], learner.ctx.expand(len(names), -1, -1), emb[:, 1 + n_text:]], dim=1)
    with torch.no_grad():
        txt = ref_text(tiny, prompts, ids, deep=list(learner.text_prompts), n_ctx=n_text)
        img = ref_image(tiny, image, vpt=list(learner.vision_prompts), n_ctx=n_vis)
        ref = ref_logits(tiny, img, txt)
        ours = PromptedCLIP(tiny, learner)(image).logits
    assert_close_ulps(ours, ref, 64)  # hand-assembled reference: measured <= 12 ulps
    # "a photo" / "a photo of a" are learned from their embeddings; the prompt keeps the whole phrase
    torch.testing.assert_close(learner.ctx.detach(), emb[0, 1:1 + n_text].detach())
    assert len(learner.text_prompts) == d_text - 1 and len(learner.vision_prompts) == (d_vis if n_vis else 0)


def test_vpt_equals_reference_and_text_is_computed_once(tiny):
    torch.manual_seed(3)
    learner = deep_prompts(tiny, CLASSES, n_ctx_text=0, depth_text=0, n_ctx_vision=3, depth_vision=3)
    assert not any("ctx" in k or "text" in k for k in learner.state_dict())
    net = PromptedCLIP(tiny, learner)
    image = images(tiny)
    ids = clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    calls = []
    original = tiny.encode_text
    tiny.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():
            ref = ref_logits(tiny, ref_image(tiny, image, vpt=list(learner.vision_prompts), n_ctx=3),
                             original(ids))
        for _ in range(3):  # training steps: the fixed text features are computed once
            loss = F.cross_entropy(net(image).logits, torch.tensor([0, 1, 2]))
            loss.backward()
        assert len(calls) == 1
        assert all(p.grad is not None for p in learner.parameters())
    finally:
        del tiny.encode_text
    with torch.no_grad():
        assert_close_ulps(net(image).logits, ref, 64)  # measured <= 5 ulps


def test_reference_whole_model_checkpoints_load(tiny):
    """IVLP/PromptSRC/VPT references keep prompts inside the encoders' blocks of a whole-model checkpoint."""
    learner = deep_prompts(tiny, CLASSES, n_ctx_text=2, depth_text=3, n_ctx_vision=2, depth_vision=2)
    g = torch.Generator().manual_seed(0)
    ref = {
        "prompt_learner.ctx": torch.randn(2, 64, generator=g),
        "prompt_learner.token_prefix": torch.zeros(4, 1, 64),
        "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(1),
        "image_encoder.VPT": torch.randn(2, 128, generator=g),
        "image_encoder.conv1.weight": torch.zeros(1),
        "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(2, 128, generator=g),
        "text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(2, 64, generator=g),
        "text_encoder.transformer.resblocks.2.VPT_shallow": torch.randn(2, 64, generator=g),
        "text_encoder.transformer.resblocks.3.VPT_shallow": torch.empty(0, 64),  # beyond the depth: empty
        "logit_scale": torch.zeros(()),
    }
    learner.load_state_dict(read_prompt_state({"state_dict": ref}, "ref.pth", PromptSRC), strict=True)
    assert torch.equal(learner.vision_prompts[1], ref["image_encoder.transformer.resblocks.1.VPT_shallow"])
    assert torch.equal(learner.text_prompts[1], ref["text_encoder.transformer.resblocks.2.VPT_shallow"])
    # our own checkpoints (the learner's state dict) pass through unchanged
    own = learner.state_dict()
    assert read_prompt_state({"state_dict": own}, "own.pth", PromptSRC).keys() == own.keys()


# ---------------------------------------------------------------------------------------------------------
# PromptSRC
# ---------------------------------------------------------------------------------------------------------
def test_promptsrc_loss_terms_match_hand_computation():
    g = torch.Generator().manual_seed(0)

    def unit(*shape):
        x = torch.randn(*shape, generator=g)
        return x / x.norm(dim=-1, keepdim=True)

    text, image, zs_text, zs_image = unit(3, 4), unit(2, 4), unit(3, 4), unit(2, 4)
    logits, zs_logits = 10 * image @ text.t(), 10 * zs_image @ zs_text.t()
    label = torch.tensor([2, 0])
    terms = self_consistency_losses(logits, text, image, label, zs_logits, zs_text, zs_image, 25, 10)
    # by hand, element by element
    ce = -sum(math.log(math.exp(logits[b, label[b]]) / sum(math.exp(v) for v in logits[b])) for b in range(2)) / 2
    l1_text = sum(abs(float(a - b)) for a, b in zip(text.flatten(), zs_text.flatten())) / 12
    l1_image = sum(abs(float(a - b)) for a, b in zip(image.flatten(), zs_image.flatten())) / 8
    kl = 0.0
    for b in range(2):
        p = [math.exp(v) / sum(math.exp(u) for u in logits[b]) for v in logits[b]]
        q = [math.exp(v) / sum(math.exp(u) for u in zs_logits[b]) for v in zs_logits[b]]
        kl += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))  # KL(p_zs || p_prompted)
    kl /= 6  # divided by B * C
    expected = {"ce": ce, "text": 25 * l1_text, "image": 10 * l1_image, "kl": kl}
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-5), k
    assert terms["loss"].item() == pytest.approx(sum(expected.values()), rel=1e-5)


def test_gpa_weights_reference_values():
    w = gpa_weights(15, 1, 20)
    assert [round(x, 3) for x in w[12:17]] == [0.054, 0.242, 0.399, 0.242, 0.054]
    assert math.fsum(w) == pytest.approx(1.0) and max(w[:11] + w[18:]) < 1e-3
    xd = gpa_weights(6, 10, 20)  # the cross-dataset setting: near uniform
    assert (round(min(xd), 3), round(max(xd), 3)) == (0.024, 0.063)
    with pytest.raises(UserError, match="GPA_STD"):
        gpa_weights(15, 0, 20)


def test_gpa_aggregates_the_learned_parameters_only(tiny):
    learner = deep_prompts(tiny, CLASSES, n_ctx_text=2, depth_text=2, n_ctx_vision=2, depth_vision=2)
    learner.add_module("gpa", GPAState())
    trainer = PromptSRC.__new__(PromptSRC)  # the aggregation needs only these attributes
    trainer.model = PromptedCLIP(tiny, learner)
    trainer.gpa_weights, trainer.max_epoch = gpa_weights(2, 1, 3), 3
    snapshots = []
    for epoch in range(3):
        for p in learner.parameters():
            p.data.normal_()
        snapshots.append({k: v.clone() for k, v in learner.named_parameters()})
        trainer.aggregate_prompts(epoch)
    for k, v in learner.named_parameters():
        torch.testing.assert_close(v, sum(w * s[k] for w, s in zip(trainer.gpa_weights, snapshots)))
    assert set(trainer.gpa_sum) == set(dict(learner.named_parameters()))  # no CLIP weights in the running sum
    # the running sum travels in the learner's state dict, which both Dassl engines save and restore
    restored = deep_prompts(tiny, CLASSES, n_ctx_text=2, depth_text=2, n_ctx_vision=2, depth_vision=2)
    restored.add_module("gpa", GPAState())
    restored.load_state_dict(learner.state_dict())
    assert set(restored.gpa.sum) == set(trainer.gpa_sum)
    assert all(torch.equal(restored.gpa.sum[k], trainer.gpa_sum[k]) for k in trainer.gpa_sum)


def test_promptsrc_teachers(tiny):
    # PromptSRC's 60 templates, in its order
    assert len(set(PROMPTSRC_TEMPLATES)) == 60 and set(PROMPTSRC_TEMPLATES) < set(IMAGENET_TEMPLATES)
    assert PROMPTSRC_TEMPLATES[:3] == ["a photo of a {}.", "a bad photo of a {}.", "a photo of many {}."]
    assert PROMPTSRC_TEMPLATES[-3:] == ["a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}."]
    torch.manual_seed(4)
    learner = deep_prompts(tiny, CLASSES, n_ctx_text=2, depth_text=2, n_ctx_vision=2, depth_vision=2)
    with torch.no_grad():
        fixed = zeroshot_text_features(tiny, CLASSES, PROMPTSRC_TEMPLATES, chunk=7, normalise_each=False)
        names = [c.replace("_", " ") for c in CLASSES]
        direct = torch.stack([tiny.encode_text(clip.tokenize([t.replace("{}", n) for t in PROMPTSRC_TEMPLATES])).mean(0)
                              for n in names])
        assert_close_ulps(fixed, direct, 64)  # chunked template mean, before normalisation: measured <= 2 ulps
        net = PromptedCLIP(tiny, learner)
        net.register_buffer("fixed_embeddings", fixed, persistent=False)
        trainer = PromptSRC.__new__(PromptSRC)
        trainer.model = net
        image = images(tiny)
        out = net(image)
        logits = out.logits
        zs_logits, zs_text, zs_image = trainer.zero_shot(image, out.logit_scale)
        plain = tiny.encode_image(image)  # the frozen CLIP without prompts is the zero-shot encoder
        torch.testing.assert_close(zs_image, plain / plain.norm(dim=-1, keepdim=True))
        assert_close_ulps(zs_logits, ref_logits(tiny, plain, direct), 64)  # measured <= 2 ulps
        torch.testing.assert_close(logits, net(image).logits)  # inference: the prompted logits
    assert not any(k.startswith("clip_model") or "fixed" in k for k in net.prompt_learner.state_dict())


# ---------------------------------------------------------------------------------------------------------
# Zero-shot CLIP
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ensemble", [False, True])
def test_zero_shot_equals_clip(tiny, ensemble):
    dataset = "EuroSAT"
    templates = (list(IMAGENET_TEMPLATES_SELECT) if ensemble else []) + [CUSTOM_TEMPLATES[dataset]]
    cls = ZeroshotCLIP2 if ensemble else ZeroshotCLIP
    trainer = cls.__new__(cls)
    trainer.cfg = type("Cfg", (), {"DATASET": type("D", (), {"NAME": dataset})})()
    assert trainer.templates() == templates
    trainer.clip_model, trainer.device = tiny, torch.device("cpu")
    trainer.precision = clip.resolve_precision("fp32")
    trainer.text_features = zeroshot_text_features(tiny, CLASSES, trainer.templates())
    image = images(tiny)
    names = [c.replace("_", " ") for c in CLASSES]
    with torch.no_grad():
        if ensemble:  # mean of the normalised per-template features, normalised again
            feats = [tiny.encode_text(clip.tokenize([t.format(n) for n in names])) for t in templates]
            mean = sum(f / f.norm(dim=-1, keepdim=True) for f in feats) / len(feats)
            expected = ref_logits(tiny, tiny.encode_image(image), mean)
        else:  # CLIP's own forward: logits_per_image
            expected = tiny(image, clip.tokenize([templates[0].format(n) for n in names]))[0]
    assert_close_ulps(trainer.model_inference(image), expected, 64)  # CLIP's own forward: measured <= 3 ulps
    assert CUSTOM_TEMPLATES["Digits"] == "a photo of the number {}." and len(IMAGENET_TEMPLATES) == 80
