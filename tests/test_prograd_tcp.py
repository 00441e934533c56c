"""ProGrad and TCP against hand-written references on the tiny CLIP.

ProGrad: the zero-padded template init; the teacher of a separate frozen CLIP equals the run's own; one training
step moves the context by exactly the hand-projected cross-entropy gradient (SGD, lr 1, no momentum or decay);
the projection rule itself, including a zero distillation gradient (the reference's NaN). TCP: text features
equal a hand-written text encoder with each class's tokens written at block L (also when mixed with W < 1);
logits are the same with shared-prefix encoding on and off; new classes get their own tokens; Adam's eps and
the config checks. Also: the scripts reach ProGrad's per-dataset LAMBDA without hand edits.
"""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import clip
import trainers
from dassl.utils import set_random_seed
from datasets.fixtures import make_fixture
from tools.method_defaults import defaults
from trainers.compat import UserError
from trainers.prograd import ProGradPromptLearner, project_conflicting, soft_target_cross_entropy
from trainers.tcp import TCPPromptLearner
from trainers.zsclip import zeroshot_text_features

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg
from ulps import assert_close_ulps

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
NAMES = ["annual crop", "forest", "river"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prograd_tcp")
    make_fixture("eurosat", root / "data", n_per_class=2, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=2)
    return root, ckpt


def build(env, name, opts=()):
    root, ckpt = env
    argv = ["--root", str(root / "data"), "--seed", "1", "--trainer", name,
            "--dataset-config-file", osp.join(REPO, "configs/datasets/eurosat.yaml"),
            "--config-file", osp.join(REPO, f"configs/trainers/{name}/tiny_digits.yaml"), "--output-dir",
            str(root / "out"), "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS",
            "['normalize']", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.SUBSAMPLE_CLASSES", "base", "VERBOSE", "False", *opts]
    cfg = build_cfg(argv)
    set_random_seed(1)
    trainer = trainers.method_of(name).cls(cfg)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer


def tiny_clip(env):
    return clip.load(str(env[1]), device="cpu", precision="fp32")[0].eval()


# ------------------------------------------------------------------------------------------------- ProGrad
def test_prograd_init_pads_the_template_with_zeros(env):
    model = tiny_clip(env)
    cfg = build_cfg(["--trainer", "ProGrad"]).TRAINER.PROGRAD.clone()
    cfg.defrost()
    learner = ProGradPromptLearner(cfg, ["abyssinian", "pug"], model, "OxfordPets")
    phrase = "a type of pet, a photo of a"  # 8 words, 9 tokens ("pet," is two)
    assert learner.class_prompts.texts[0] == " ".join(["X"] * 8) + f" {phrase} abyssinian."
    ctx = learner.ctx.detach()
    ids = clip.tokenize([f"{phrase} abyssinian."])[0]
    words = model.token_embedding(ids[1:9]).detach()  # the phrase's first 8 tokens
    assert ctx.shape == (16, model.transformer.width)
    assert torch.equal(ctx[:8], torch.zeros_like(ctx[:8])) and torch.equal(ctx[8:], words)
    # the phrase's last token ("a") stays a fixed word, right before the class name
    assert torch.equal(learner.class_prompts.token_suffix[0, 0], model.token_embedding(ids[9]).detach())
    cfg.N_CTX = 4
    with pytest.raises(UserError, match='"a type of pet, a photo of a", which has 8 words, more than N_CTX=4'):
        ProGradPromptLearner(cfg, ["pug"], model, "OxfordPets")


def test_prograd_step_is_the_hand_projected_gradient(env):
    trainer = build(env, "ProGrad", ["OPTIM.LR", "1.0", "OPTIM.MOMENTUM", "0.0", "OPTIM.WEIGHT_DECAY", "0.0",
                                     "OPTIM.WARMUP_EPOCH", "-1", "LOSS.LAMBDA", "0.7", "LOSS.T", "2.0",
                                     "TRAINER.PROGRAD.N_CTX", "16"])  # the reference's: 11 zeros + the template
    model = trainer.model
    batch = next(iter(trainer.train_loader_x))
    image, label = trainer.parse_batch_train(batch)
    ctx = model.prompt_learner.ctx
    before = ctx.detach().clone()

    # the teacher, by hand from a separate frozen CLIP, equals the run's own (bit for bit in fp32)
    separate = tiny_clip(env)
    with torch.no_grad():
        f = separate.encode_image(image)
        f = f / f.norm(dim=-1, keepdim=True)
        text = zeroshot_text_features(separate, trainer.dm.dataset.classnames, ["a centered satellite photo of {}."])
        zero_shot = separate.logit_scale.exp() * f @ text.t()
    assert torch.equal(trainer.teacher_logits(model(image)), zero_shot)

    # a teacher sure of the student's own (wrong) answers, so that the two gradients conflict
    out = model(image)
    wrong = out.logits.argmax(dim=-1)
    assert not (wrong == label).any()
    teacher = 10.0 * F.one_hot(wrong, len(trainer.dm.dataset.classnames)).float()
    trainer.teacher_logits = lambda out: teacher
    g_ce = torch.autograd.grad(F.cross_entropy(out.logits, label), ctx, retain_graph=True)[0]
    p_t = F.softmax(teacher / 2.0, dim=-1)
    kd = -(p_t * F.log_softmax(out.logits / 2.0, dim=-1)).sum(-1).mean() * 4.0
    g_kd = torch.autograd.grad(kd, ctx)[0]
    dot = (g_ce * g_kd).sum()
    assert dot < 0, "the test needs conflicting gradients"
    expected = g_ce - 0.7 * dot / g_kd.square().sum() * g_kd

    summary = trainer.forward_backward(batch)
    assert summary["kd"] == pytest.approx(kd.item(), rel=1e-6)
    assert torch.allclose(before - ctx.detach(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(expected, g_ce, rtol=1e-3)


def test_projection_rule():
    g = torch.tensor([1.0, 2.0])
    assert torch.equal(project_conflicting(g, torch.tensor([1.0, 0.0]), 1.0), g)  # agreeing: unchanged
    assert torch.equal(project_conflicting(g, torch.tensor([-2.0, 0.0]), 1.0), torch.tensor([0.0, 2.0]))
    assert torch.equal(project_conflicting(g, torch.tensor([-2.0, 0.0]), 0.5), torch.tensor([0.5, 2.0]))
    # a zero (or missing, or non-finite) distillation gradient: the reference divides by its norm (NaN)
    for ref in (torch.zeros(2), None, torch.tensor([float("inf"), 0.0])):
        assert torch.equal(project_conflicting(g, ref, 1.0), g)
    assert soft_target_cross_entropy(torch.zeros(1, 2), torch.zeros(1, 2), 3.0) == pytest.approx(9 * math.log(2))


def test_prograd_config_checks_and_the_middle_position(env):
    with pytest.raises(UserError, match="LOSS.NAME prograd"):
        build(env, "ProGrad", ["LOSS.NAME", "ce"])
    # the reference's "middle" branch raises (an undefined name); here it is CoOp's middle layout
    trainer = build(env, "ProGrad", ["TRAINER.PROGRAD.CLASS_TOKEN_POSITION", "middle"])
    assert torch.isfinite(trainer.forward_backward(next(iter(trainer.train_loader_x)))["loss"] * torch.ones(1)).all()


def test_scripts_reach_prograd_lambda_exceptions_without_edits():
    assert defaults("ProGrad", "fewshot_train", "dtd", "16")["CFG"] == "vit_b16_lambda0.8"
    assert defaults("prograd", "fewshot_train", "eurosat", "8")["CFG"] == "vit_b16_lambda0.8"
    four = defaults("ProGrad", "fewshot_train", "dtd", "4")
    assert "CFG" not in four and four["CFG_FS"] == "vit_b16_ep100"
    assert defaults("ProGrad", "fewshot_train", "digits", "1")["CFG_FS"] == "vit_b16_ep50"  # Digits: CFG_DIGITS
    assert "CFG" not in defaults("ProGrad", "fewshot_train", "caltech101", "16")
    assert defaults("TCP", "base2new_train", "sun397")["CFG"] == "vit_b16_ep25_ctxv1"
    for cfg in ("vit_b16_lambda0.8", "vit_b16_ep50", "vit_b16_ep100", "vit_b16", "rn50", "rn50_ep50", "rn50_ep100"):
        assert osp.isfile(osp.join(REPO, "configs/trainers/ProGrad", f"{cfg}.yaml"))


# ----------------------------------------------------------------------------------------------------- TCP
def hand_text_features(model, learner, weight):
    """CLIP's text encoder written out: context in the slots at layer 0, class tokens mixed in at block L."""
    cp = learner.class_prompts
    ids = cp.token_ids
    x = torch.cat([cp.token_prefix, learner.ctx.expand(len(ids), -1, -1), cp.token_suffix], dim=1)
    x = x + model.positional_embedding
    tokens = learner.meta_net(learner.anchor).view(len(ids), learner.n_tokens, -1)
    n = learner.n_tokens
    for i, block in enumerate(model.transformer.resblocks):
        if i == learner.layer:
            x = torch.cat([x[:, :1], weight * tokens + (1 - weight) * x[:, 1:1 + n], x[:, 1 + n:]], dim=1)
        x = block(x, causal=True)
    x = model.ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_tcp_text_features_equal_a_hand_written_forward(env, weight):
    trainer = build(env, "TCP", ["TRAINER.TCP.W", str(weight)])
    model = trainer.model
    learner = model.prompt_learner
    assert learner.layer == 1 and learner.class_prompts.texts[0] == "X X X X Annual Crop Land."
    expected = hand_text_features(model.clip_model, learner, weight)
    text = model.text_features(model.prompts())[1]  # L2-normalised
    assert_close_ulps(text, expected, 64)  # hand-written TCP text: measured <= 4 ulps
    # the tokens matter: another class's tokens give other features
    assert not torch.allclose(text, hand_text_features(model.clip_model, learner, 0.0), atol=1e-3)

    image = next(iter(trainer.train_loader_x))["img"]
    trainer.set_model_mode("eval")
    with torch.no_grad():
        shared = trainer.model_inference(image)
        model.clip_model.text_prefix_sharing = False
        plain = trainer.model_inference(image)
        model.clip_model.text_prefix_sharing = True
    assert_close_ulps(shared, plain, 64)  # shared prefix: measured 0 here


def test_tcp_new_classes_get_their_own_tokens_and_adam_eps(env):
    trainer = build(env, "TCP", ["OPTIM.NAME", "adam", "OPTIM.EPS", "0.001"])
    assert all(group["eps"] == 0.001 for group in trainer.optim.param_groups)
    trained = trainer.model.prompt_learner
    new = TCPPromptLearner(trainer.method_cfg, NAMES, tiny_clip(env), "EuroSAT")
    new.load_state_dict({k: v for k, v in trained.state_dict().items() if not k.startswith("trained_classes")})
    anchor = zeroshot_text_features(tiny_clip(env), NAMES, ["a centered satellite photo of {}."])
    assert torch.equal(new.anchor, anchor)
    tokens = new.class_tokens()
    assert tokens.shape == (3, 4, 64) and torch.equal(tokens, trained.meta_net(anchor).view(3, 4, 64))
    assert not torch.allclose(tokens[0], tokens[1])


def test_tcp_config_errors(env):
    with pytest.raises(UserError, match="N_CLASS_TOKENS=5.*between 1 and the 4 context vectors"):
        build(env, "TCP", ["TRAINER.TCP.N_CLASS_TOKENS", "5"])
    with pytest.raises(UserError, match="CLASS_TOKEN_LAYER=2 is not a text block of this CLIP"):
        build(env, "TCP", ["TRAINER.TCP.CLASS_TOKEN_LAYER", "2"])


def test_published_tcp_log_is_consistent():
    """The authors' run log: each average equals the mean of its 11 datasets, HM = HM of the averages."""
    from tools.results.published import load as load_published

    pub = load_published("base2new", ["tcp-authors-log"])
    per = [e for e in pub.entries if e["ref"] == "tcp-authors-log" and e["dataset"] != "Average"]
    avg = next(e for e in pub.entries if e["ref"] == "tcp-authors-log" and e["dataset"] == "Average")
    assert len(per) == 11 == len(avg["over"])
    for metric in ("base", "new"):
        assert sum(e[metric] for e in per) / 11 == pytest.approx(avg[metric], abs=0.006)
    prograd = load_published("base2new", ["kgcoop-readme"]).lookup("ProGrad", "Average")
    assert [(e["base"], e["new"], e["hm"]) for e in prograd] == [(82.48, 70.75, 76.16)]
