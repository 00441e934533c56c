"""The method contract, checked for every registered method (present and future) on the tiny CLIP.

Each method is built from its registration and its ``tiny_digits.yaml`` for fixed class names, without a dataset
(``Method(cfg, classnames=...)``), and must:

- give finite logits of the right shape in training and evaluation;
- compute on a fixed batch exactly the loss (and logged terms) of its hand-written reference (tests/method_losses.py),
  and, with its regularisers switched off, exactly its base method's loss;
- send a non-zero gradient to every learned tensor and none anywhere else, and a training step must change its
  learner and nothing else;
- round-trip through a checkpoint bit for bit (the checkpoint holds its learner and the class names only);
- compose with a frozen prompt set (CasPL's boosting prompts, through the extension): the set stays frozen, is
  neither learned nor saved, and its origin is recorded;
- have learnable counts at ViT-B/16 (``meta`` device) equal to its registration, which the README's table renders.

Plus the contract's pieces: class-aware checkpoints, the registration checks, and that no shared module names a
method.
"""
import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest
import torch

import clip
import trainers
from trainers.base import PromptTrainer
from trainers.checkpoints import CLASS_RECORD, load_prompt_set, resolve_checkpoint
from trainers.compat import UserError
from trainers.prompts import DeepPrompts, learned_context
from trainers.registry import EXTENSIONS, METHODS, Count, register_method

from method_losses import REFERENCE_LOSSES, WITHOUT_REGULARISERS, cross_entropy_only, with_dept
from tiny_runs import CLASSNAMES, REPO, build_for_classes, earlier_opts, fixed_batch, tiny_cfg
from ulps import assert_close_ulps

PROMPT_METHODS = [m.name for m in trainers.list_methods() if issubclass(m.cls, PromptTrainer)]
#: the methods whose loss has a cross-entropy of weight 1, which DePT reweights (distillation-only methods have
#: none; MMRL's two heads share theirs)
CE_METHODS = [n for n in PROMPT_METHODS if n not in ("CasPL", "PromptKD", "MMRL")]
DEPT = ["TRAINER.LINEAR_PROBE.TYPE", "linear"]
OTHER_METHODS = [m.name for m in trainers.list_methods() if m.name not in PROMPT_METHODS]
OTHER_NAMES = ["Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt, tiny_teacher_ckpt):
    root = tmp_path_factory.mktemp("contract")
    return root, tiny_ckpt, tiny_teacher_ckpt


def method_cfg(env, name, out="run", opts=()):
    root, ckpt, teacher = env
    extra = earlier_opts(name, ckpt, root)
    if name == "CasPL":  # the teacher of phase 1: a wider CLIP
        extra += ["KD.BACKBONE_NAME", str(teacher)]
    return tiny_cfg(root, ckpt, name, root / out, [*extra, *opts])


def build(env, name, opts=(), classnames=CLASSNAMES, seed=0):
    return build_for_classes(method_cfg(env, name, opts=opts), classnames, seed=seed)


def forward(trainer, batch):
    trainer.set_model_mode("train")
    with trainer.precision.autocast(trainer.device):
        return trainer.model(batch["img"])


def eval_logits(trainer, images):
    trainer.set_model_mode("eval")
    with torch.no_grad(), trainer.model.frozen_text_features():
        return trainer.model_inference(images)


# ---------------------------------------------------------------------------------------------------------
# Every method
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_outputs_have_the_right_shapes_and_are_finite(env, name):
    trainer = build(env, name)
    batch = fixed_batch(3)
    out = forward(trainer, batch)
    assert out.logits.shape == (3, len(CLASSNAMES)) and torch.isfinite(out.logits).all()
    assert out.image_features.shape[0] == 3 and torch.isfinite(out.image_features).all()
    logits = eval_logits(trainer, batch["img"])
    assert logits.shape == (3, len(CLASSNAMES)) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_loss_equals_the_hand_written_reference(env, name):
    assert name in REFERENCE_LOSSES, f"write the reference loss of {name} in tests/method_losses.py"
    trainer = build(env, name)
    batch = fixed_batch(4)
    out = forward(trainer, batch)
    with trainer.precision.autocast(trainer.device):
        result = trainer.loss(batch, out)
    expected = REFERENCE_LOSSES[name](trainer, batch, out)
    # the same sums in another order (fp32): measured <= 2 ulps of the loss, <= 7 ulps of it for a term
    loss = expected["loss"].detach().float()
    assert_close_ulps(result.loss.detach().float(), loss, 64)
    for term, value in expected.items():
        if term != "loss":
            assert_close_ulps(result.terms[term].detach().float(), value.detach().float(), 64, loss.abs().item())
    assert set(result.terms) == set(expected) - {"loss"}, "the logged terms are the reference's"


@pytest.mark.parametrize("name", sorted(WITHOUT_REGULARISERS))
def test_without_regularisers_the_loss_is_the_base_methods(env, name):
    opts, base = WITHOUT_REGULARISERS[name]
    trainer = build(env, name, opts)
    batch = fixed_batch(4)
    out = forward(trainer, batch)
    result = trainer.loss(batch, out)
    assert torch.equal(result.loss.detach(), base(trainer, batch, out)["loss"].detach())


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_gradients_reach_every_learned_tensor_and_nothing_else(env, name):
    trainer = build(env, name)
    with torch.no_grad():  # a tensor started at zero hides the gradient of its partner (LoRA's B of its A)
        for p in trainer.model.prompt_learner.parameters():
            if not p.any():
                p.normal_(std=0.02)
    batch = fixed_batch(4)
    result = trainer.loss(batch, forward(trainer, batch))
    result.loss.backward()
    learned = {n: p for n, p in trainer.model.prompt_learner.named_parameters()}
    assert learned and all(p.requires_grad for p in learned.values())
    no_grad = [n for n, p in learned.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"learned tensors without a gradient: {no_grad}"
    ids = {id(p) for p in learned.values()}
    leaked = [n for n, p in trainer.model.named_parameters() if id(p) not in ids and p.grad is not None]
    assert not leaked, f"frozen tensors with a gradient: {leaked}"
    assert {id(p) for group in trainer.optim.param_groups for p in group["params"]} == ids


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_a_training_step_changes_the_learner_and_nothing_else(env, name):
    """One step on an epoch's last batch: the learner moves, nothing frozen does, the schedule steps once."""
    trainer = build(env, name)
    frozen = {n: p.clone() for n, p in trainer.model.named_parameters() if not n.startswith("prompt_learner.")}
    learner = {n: p.clone() for n, p in trainer.model.prompt_learner.named_parameters()}
    trainer.set_model_mode("train")
    trainer.num_batches, trainer.batch_idx = 10, 9  # the epoch's last batch: the schedule steps once after it
    stepped = trainer.sched.last_epoch
    summary = trainer.forward_backward(fixed_batch(4))
    assert trainer.sched.last_epoch == stepped + 1
    assert set(summary) >= {"loss", "acc"} and all(torch.isfinite(torch.tensor(v)) for v in summary.values())
    now = dict(trainer.model.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in frozen.items())
    changed = [n for n, p in trainer.model.prompt_learner.named_parameters() if not torch.equal(learner[n], p)]
    assert changed


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_checkpoint_round_trip_is_bit_identical(env, name, tmp_path):
    trainer = build(env, name)
    with torch.no_grad():  # away from the initial values, so a load that does nothing would show
        for p in trainer.model.prompt_learner.parameters():
            p.add_(0.01)
    trainer.save_model(0, str(tmp_path))
    folder = tmp_path / trainer.METHOD.learner_name
    state = torch.load(folder / "model.pth.tar-1", map_location="cpu", weights_only=True)["state_dict"]
    own = set(trainer.model.prompt_learner.state_dict())
    assert set(state) <= own and not any(k.startswith(("clip_model", "frozen_sets")) for k in state)
    assert json.loads(state[f"{CLASS_RECORD}._extra_state"]["classnames"]) == CLASSNAMES
    again = build(env, name, seed=1)
    again.load_model(str(tmp_path), epoch=1)
    images = fixed_batch(3)["img"]
    assert torch.equal(eval_logits(again, images), eval_logits(trainer, images))


def boost_file(env):
    """A phase-1 checkpoint of boosting prompts (2 + 2 tokens, depth 2) on the tiny CLIP."""
    root, ckpt, _ = env
    path = root / "boost.pth.tar"
    if not path.is_file():
        model = clip.load(str(ckpt), device="cpu", precision="fp32")[0]
        torch.manual_seed(3)
        boost = DeepPrompts(model, n_text=2, depth_text=2, n_vision=2, depth_vision=2, key="KD")
        torch.save({"state_dict": boost.state_dict(), "epoch": 5}, path)
    return path


BOOST = ["KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "2"]


@pytest.mark.parametrize("name", [n for n in PROMPT_METHODS if n != "CasPL"])
def test_a_frozen_prompt_set_composes_with_every_method(env, name, tmp_path):
    trainer = build(env, name, ["KD.BOOST_DIR", str(boost_file(env)), *BOOST])
    model = trainer.model
    assert [e.name for e in trainer.extensions] == ["CasPL"]
    frozen = dict(model.frozen_sets.named_parameters())
    assert frozen and not any(p.requires_grad for p in frozen.values())
    before = {k: v.clone() for k, v in frozen.items()}
    trainer.set_model_mode("train")
    trainer.num_batches, trainer.batch_idx = 10, 0
    trainer.forward_backward(fixed_batch(4))
    assert all(torch.equal(before[k], v) for k, v in frozen.items())
    extras = trainer.result_extras()
    assert extras["cascade"]["boosting_run"] == str(boost_file(env)) and extras["extensions"] == ["CasPL"]
    trainer.save_model(0, str(tmp_path))
    state = torch.load(tmp_path / trainer.METHOD.learner_name / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert not any("boost" in k for k in state)
    origins = json.loads(state["frozen_set_origins._extra_state"]["origins"])
    assert origins["boost"]["path"] == str(boost_file(env))


def test_casp_phase_one_is_never_cascaded_with_itself(env):
    trainer = build(env, "CasPL", ["KD.BOOST_DIR", str(boost_file(env)), *BOOST])
    assert trainer.extensions == [] and set(trainer.model.frozen_sets) == {"classes"}


@pytest.mark.parametrize("name", OTHER_METHODS)
def test_zero_shot_logits_are_clips_with_the_dataset_template(env, name):
    trainer = build(env, name)
    images = fixed_batch(3)["img"]
    model = trainer.clip_model
    templates = trainer.templates()
    with torch.no_grad():
        feats = torch.stack([torch.nn.functional.normalize(model.encode_text(clip.tokenize(
            [t.format(c) for c in CLASSNAMES])), dim=-1) for t in templates]).mean(0)
        text = torch.nn.functional.normalize(feats, dim=-1)
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    expected = model.logit_scale.exp() * image @ text.t()
    assert_close_ulps(trainer.model_inference(images), expected, 64)  # template ensemble by hand: measured 0 here
    assert templates[-1] == "a centered satellite photo of {}."


# ---------------------------------------------------------------------------------------------------------
# DePT on every method with a cross-entropy
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CE_METHODS)
def test_dept_loss_equals_the_hand_written_reference(env, name):
    trainer = build(env, name, DEPT)
    assert [e.name for e in trainer.extensions] == ["DePT"]
    with torch.no_grad():  # a head and transforms away from their initial values
        for p in trainer.model.prompt_learner.dept.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    batch = fixed_batch(4)
    out = forward(trainer, batch)
    with trainer.precision.autocast(trainer.device):
        result = trainer.loss(batch, out)
        for extension in trainer.extensions:
            result = extension.loss(trainer, batch, out, result)
    expected = with_dept(REFERENCE_LOSSES[name])(trainer, batch, out)
    assert_close_ulps(result.loss.detach(), expected["loss"].detach(), 64)  # measured <= 3 ulps
    assert_close_ulps(result.terms["head"].detach(), expected["head"].detach(), 64, expected["loss"].abs().item())


def test_dept_with_weight_zero_is_the_method(env):
    trainer = build(env, "CoOp", [*DEPT, "TRAINER.LINEAR_PROBE.WEIGHT", "0.0"])
    batch = fixed_batch(4)
    out = forward(trainer, batch)
    result = trainer.extensions[0].loss(trainer, batch, out, trainer.loss(batch, out))
    assert torch.equal(result.loss.detach(), cross_entropy_only(trainer, batch, out)["loss"].detach())
    images = batch["img"]
    trainer.set_model_mode("eval")
    with torch.no_grad():
        assert torch.equal(trainer.model_inference(images), trainer.model(images).logits)


def test_dept_fuses_its_head_on_its_classes_and_not_on_others(env, tmp_path):
    trained = build(env, "MPL", DEPT)
    dept = trained.model.prompt_learner.dept
    with torch.no_grad():
        for p in dept.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    trained.save_model(0, str(tmp_path))
    images = fixed_batch(3)["img"]
    trained.set_model_mode("eval")
    with torch.no_grad():
        out = trained.model(images)
        head = dept.head(dept.film_image(out.image_embeds))
        torch.testing.assert_close(trained.model_inference(images), 0.3 * out.logits + 0.7 * head)

    other = build(env, "MPL", DEPT, classnames=OTHER_NAMES)  # new classes: the method's logits alone
    other.load_model(str(tmp_path), epoch=1)
    assert not other.model.prompt_learner.dept.active
    other.set_model_mode("eval")
    with torch.no_grad():
        assert torch.equal(other.model_inference(images), other.model(images).logits)

    subset = [CLASSNAMES[3], CLASSNAMES[1]]  # a subset (ImageNet-A's of ImageNet's): the head's rows by name
    part = build(env, "MPL", DEPT, classnames=subset)
    part.load_model(str(tmp_path), epoch=1)
    part.set_model_mode("eval")
    with torch.no_grad():
        sub = part.model(images)
        torch.testing.assert_close(sub.logits, out.logits[:, [3, 1]])
        torch.testing.assert_close(part.model_inference(images), 0.3 * sub.logits + 0.7 * head[:, [3, 1]])


def test_dept_head_and_transforms_learn_at_their_multiplier(env):
    trainer = build(env, "CoOp", DEPT)
    groups = trainer.optim.param_groups
    dept = {id(p) for p in trainer.model.prompt_learner.dept.parameters()}
    assert {id(p) for p in groups[1]["params"]} == dept and not dept & {id(p) for p in groups[0]["params"]}
    # the schedule's base rates (the constant warm-up gives every group WARMUP_CONS_LR first, as Dassl's)
    lr = trainer.cfg.OPTIM.LR
    assert [g["initial_lr"] for g in groups] == pytest.approx([lr, lr * 6.5])


# ---------------------------------------------------------------------------------------------------------
# Class-aware checkpoints
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("CoOp", ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.CSC", "True"]),
                                       ("TCP", ["TRAINER.TCP.CSC", "True"])])
def test_class_specific_parameters_refuse_other_classes(env, name, opts, tmp_path):
    trained = build(env, name, opts)
    trained.save_model(0, str(tmp_path))
    other = build(env, name, opts, classnames=OTHER_NAMES)  # as many classes: the shapes fit
    before = {k: v.clone() for k, v in other.model.prompt_learner.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(UserError, match=r"one row per class of the 5 classes it was trained on \(Annual Crop Land.*"
                                        r"other classes \(Pasture Land.*CSC False"):
        other.load_model(str(tmp_path), epoch=1)
    after = other.model.prompt_learner.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "nothing is loaded"
    same = build(env, name, opts, seed=1)
    same.load_model(str(tmp_path), epoch=1)  # the same classes load
    assert torch.equal(same.model.prompt_learner.ctx, trained.model.prompt_learner.ctx)


def test_class_independent_parameters_load_onto_new_classes(env, tmp_path):
    trained = build(env, "CoOp", ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4"])
    trained.save_model(0, str(tmp_path))
    other = build(env, "CoOp", ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4"], classnames=OTHER_NAMES)
    other.load_model(str(tmp_path), epoch=1)
    assert torch.equal(other.model.prompt_learner.ctx, trained.model.prompt_learner.ctx)


def test_a_checkpoint_without_class_names_loads_as_it_is_with_a_notice(env, tmp_path, capsys):
    opts = ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.CSC", "True"]
    trained = build(env, "CoOp", opts)
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": {"ctx": trained.model.prompt_learner.ctx.detach()}, "epoch": 1},
               folder / "model.pth.tar-1")  # a reference checkpoint: ctx only
    other = build(env, "CoOp", opts, classnames=OTHER_NAMES)
    other.load_model(str(tmp_path), epoch=1)
    assert "records no class names" in capsys.readouterr().out
    assert torch.equal(other.model.prompt_learner.ctx, trained.model.prompt_learner.ctx)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint resolution (one rule for --eval-only, load_model, frozen sets)
# ---------------------------------------------------------------------------------------------------------
def test_checkpoint_resolution(tmp_path):
    run, folder = tmp_path / "run", tmp_path / "run" / "L"
    folder.mkdir(parents=True)
    for epoch in (5, 10):
        (folder / f"model.pth.tar-{epoch}").write_bytes(b"x")
    (folder / "checkpoint").write_text("model.pth.tar-10\n")
    assert resolve_checkpoint(str(run), "L") == (str(folder / "model.pth.tar-10"), None)  # the newest save
    (run / "result.json").write_text(json.dumps({"epochs": 5}))
    assert resolve_checkpoint(str(run), "L") == (str(folder / "model.pth.tar-5"), 5)  # the recorded epoch
    (folder / "model-best.pth.tar").write_bytes(b"x")
    assert resolve_checkpoint(str(run), "L")[0] == str(folder / "model-best.pth.tar")  # selected on validation
    assert resolve_checkpoint(str(run), "L", 10)[0] == str(folder / "model.pth.tar-10")
    with pytest.raises(UserError, match=r"model.pth.tar-7.*saved epochs: 5, 10"):
        resolve_checkpoint(str(run), "L", 7)
    with pytest.raises(UserError, match='no "Other" folder'):
        resolve_checkpoint(str(run), "Other")
    with pytest.raises(UserError, match="no run folder or checkpoint file"):
        resolve_checkpoint(str(tmp_path / "missing"), "L")


def test_a_frozen_set_of_another_size_is_one_error_naming_both_shapes(env):
    model = clip.load(str(env[1]), device="cpu", precision="fp32")[0]
    wrong = DeepPrompts(model, n_text=4, depth_text=2, n_vision=2, depth_vision=2, key="KD")
    with pytest.raises(UserError, match=r"ctx has shape \(2, 64\) there but \(4, 64\) here"):
        load_prompt_set(wrong, str(boost_file(env)), "BoostingPrompts")


# ---------------------------------------------------------------------------------------------------------
# Counts at ViT-B/16, one source
# ---------------------------------------------------------------------------------------------------------
COUNTS = trainers.all_counts()


@pytest.mark.parametrize("name,count", COUNTS, ids=[f"{n}-{c.config}{'-' + '-'.join(c.opts) if c.opts else ''}"
                                                    for n, c in COUNTS])
def test_learnable_counts_vit_b16_meta(name, count, tmp_path):
    from trainers.api import build_cfg

    method = METHODS[name]
    cfg = build_cfg(["--trainer", name, "--config-file", method.config_path(count.config), "--output-dir",
                     str(tmp_path), *count.opts], check=False)  # a reference config, without its data or teacher
    with torch.device("meta"):
        model = clip.create_model("ViT-B/16", device="meta")
    trainer = method.cls.__new__(method.cls)
    trainer.cfg, trainer.device = cfg, torch.device("meta")
    trainer.extensions = [e for e in EXTENSIONS.values() if e.enabled(cfg)]
    names = [f"class {i}" for i in range(count.classes)]
    learner = trainer.build_prompt_learner(cfg, names, model)
    trainer.attach_extension_modules(learner, names, model)
    assert sum(p.numel() for p in learner.parameters()) == count.count


def readme_counts():
    text = (REPO / "README.md").read_text()
    section = text.split("### Learnable parameters at ViT-B/16", 1)[1].split("\n#", 1)[0]
    rows = set()
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*`([^`]+)\.yaml`\s*\|\s*([^|]*)\|\s*([\d,]+)\s*\|", line)
        if m:
            rows.add((m.group(1), m.group(2), tuple(m.group(3).replace("`", "").split()),
                      int(m.group(4).replace(",", ""))))
    return rows


def test_the_readme_table_renders_the_registered_counts():
    registered = {(n, c.config, tuple(c.opts), c.count) for n, c in COUNTS}
    assert readme_counts() == registered, "the README's learnable-count table must list exactly the registered counts"


def test_every_trained_method_registers_counts():
    assert all(METHODS[n].counts for n in PROMPT_METHODS)


# ---------------------------------------------------------------------------------------------------------
# The contract's pieces
# ---------------------------------------------------------------------------------------------------------
def test_one_ctx_init_rule():
    assert learned_context("a photo of a", 16, "TRAINER.COOP", "phrase") == ("a photo of a", 4, True)
    assert learned_context("", 3, "TRAINER.COOP", "phrase") == ("X X X", 3, False)
    assert learned_context("a photo of a", 2, "TRAINER.MAPLE", "first_tokens") == ("a photo of a", 2, True)
    assert learned_context("a photo of a", 8, "TRAINER.IVLP", "first_tokens") == (" ".join(["X"] * 8), 8, False)
    with pytest.raises(UserError, match='TRAINER.MAPLE.CTX_INIT "a" has 1 token.*fewer than N_CTX=2.*class name'):
        learned_context("a", 2, "TRAINER.MAPLE", "first_tokens")


def test_vision_prompts_on_a_resnet_are_one_error(env, tmp_path):
    from tiny_clip import write_tiny_checkpoint

    resnet = write_tiny_checkpoint(tmp_path / "rn.pt", kind="resnet")
    for name in ("MPL", "MaPLe", "VPT", "IVLP"):
        cfg = tiny_cfg(env[0], resnet, name, tmp_path / name)
        with pytest.raises(UserError, match=f"TRAINER.{name.upper()} puts prompts into.*Vision Transformer"):
            build_for_classes(cfg)


def test_registration_errors_name_the_method(monkeypatch, tmp_path):
    import trainers.registry as registry

    monkeypatch.setattr(registry, "CONFIG_ROOT", str(tmp_path))

    def register(name, **kw):
        return register_method(keys=lambda c: None, **kw)(type(name, (PromptTrainer,), {}))

    with pytest.raises(UserError, match=r"method NewMethod .*no config folder .*NewMethod"):
        register("NewMethod")
    (tmp_path / "NewMethod").mkdir()
    with pytest.raises(UserError, match=r"method NewMethod .*has no tiny_digits.yaml"):
        register("NewMethod")
    (tmp_path / "NewMethod" / "tiny_digits.yaml").write_text("{}\n")
    with pytest.raises(UserError, match=r"has no vit_b16.yaml"):
        register("NewMethod", scripts={"base2new": "vit_b16"})
    with pytest.raises(UserError, match=r"TRAINER.OTHER does not match its config folder"):
        register("NewMethod", block="OTHER")
    with pytest.raises(UserError, match=r"method CoOp .*registered twice"):
        register("CoOp")
    assert "NewMethod" not in METHODS


#: the modules of the contract: none names a method (in code; docstrings and comments may give examples)
SHARED = ["trainers/" + m + ".py" for m in ("base", "prompts", "prompted_clip", "checkpoints", "registry", "config",
                                             "compat", "api", "runner", "templates", "predict")]


def code_words(path):
    """Identifier parts and string-literal words of a module's code (docstrings and comments left out)."""
    source = Path(path).read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
                docstrings.add(first.lineno)
    words = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME:
            words.update(part.lower() for part in tok.string.split("_"))
        elif tok.type == tokenize.STRING and tok.start[0] not in docstrings:
            words.update(w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9]*", tok.string))
    return words


def test_no_shared_module_names_a_method():
    names = {m.name.lower() for m in trainers.list_methods()} | {e.lower() for e in EXTENSIONS}
    names |= {m.block.lower() for m in trainers.list_methods()}
    for path in SHARED + [str(p.relative_to(REPO)) for p in (REPO / "dassl").rglob("*.py")]:
        named = code_words(REPO / path) & names
        assert not named, f"{path} names {sorted(named)}"


def test_the_registry_lists_every_method_with_its_identity():
    methods = {m.name: m for m in trainers.list_methods()}
    assert methods["KgCoOp"].block == "KGCOOP" and methods["KgCoOp"].config_dir == "KgCoOp"
    assert methods["ZeroshotCLIP"].block == "COOP" and not methods["ZeroshotCLIP"].trains
    assert methods["PromptKD"].earlier_run.trainer == "PromptSRC"
    assert isinstance(methods["MPL"].counts[0], Count)
    assert set(methods) == set(PROMPT_METHODS) | set(OTHER_METHODS)
