"""The original repositories' released checkpoints load (issue 29, item 2).

Each test writes a file in its repository's layout -- folder, file name, key names and shapes (from
``shared/reference/`` and the official ``register_model`` calls), fp16 tensors, and the original Dassl's wrapper
with its pickled warm-up scheduler -- and loads it through the entry point a user takes (``load_model``, which
``--eval-only --model-dir`` runs; ``TRAINER.PROMPTKD.TEACHER_DIR``; ``train.py`` itself for the refusals). The
loaded tensors must equal the file's, and the evaluation logits those of the same prompts in this project's own
checkpoint format. What the official code saves but never uses is named in one ``Not read from`` line; anything
else is refused with one line naming the key and its shape, exit 2, no output folder.

The tiny CLIP stands in for ViT-B/16 (text width 64 instead of 512, 77 tokens as the real one); the layouts'
full-size names and shapes are checked on the meta device at the end.
"""
import re

import pytest
import torch

import clip
import train
from datasets.fixtures import make_fixture
from trainers.checkpoints import read_prompt_state, resolve_checkpoint
from trainers.compat import UserError
from trainers.registry import METHODS

from tiny_clip import write_tiny_checkpoint
from tiny_runs import CLASSNAMES, build_for_classes, earlier_opts, tiny_argv, tiny_cfg

CONTEXT = 77  # CLIP's text length: the class-list buffers' second dimension


# ---------------------------------------------------------------------------------------------------------
# The official layouts, written out by hand from the reference facts
# ---------------------------------------------------------------------------------------------------------
def dassl_file(path, state_dict, epoch):
    """The original Dassl's ``save_checkpoint``: fp16 tensors (the references train in fp16), the optimizer's and
    the warm-up scheduler's states, whose ``successor`` scheduler object is pickled whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    param = torch.nn.Parameter(torch.zeros(2))
    optim = torch.optim.SGD([param], lr=0.002, momentum=0.9)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epoch)
    warmup = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002],
              "last_epoch": epoch, "_step_count": epoch + 1, "verbose": False,
              "_get_lr_called_within_step": False, "_last_lr": [0.0]}
    half = {k: v.half() if torch.is_floating_point(v) else v for k, v in state_dict.items()}
    torch.save({"state_dict": half, "epoch": epoch, "optimizer": optim.state_dict(), "scheduler": warmup,
                "val_result": None}, path)
    return path


def class_buffers(learner, width, n_ctx):
    """The class-list buffers every original prompt learner saves: token_prefix (C, 1, D), token_suffix (C, 76-n, D)."""
    n = len(CLASSNAMES)
    return {"token_prefix": torch.randn(n, 1, width), "token_suffix": torch.randn(n, CONTEXT - 1 - n_ctx, width)}


def frozen_clip(clip_model, text=True):
    """The frozen CLIP inside a whole-model file: CustomCLIP's ``image_encoder`` (CLIP's visual), its
    ``text_encoder`` (transformer, positional_embedding, ln_final, text_projection) and ``logit_scale``."""
    out = {}
    for k, v in clip_model.state_dict().items():
        if k.startswith("visual."):
            out["image_encoder." + k[len("visual."):]] = v
        elif k == "logit_scale":
            out[k] = v
        elif text and k.split(".")[0] in ("transformer", "positional_embedding", "ln_final", "text_projection"):
            out["text_encoder." + k] = v
    return out


def prefixed(state, prefix="prompt_learner."):
    return {prefix + k: v for k, v in state.items()}


def ivlp_encoders(own):
    """IVLP/PromptSRC's prompts inside its copies of CLIP's blocks."""
    out = {}
    for k, v in own.items():
        m = re.match(r"^(vision|text)_prompts\.(\d+)$", k)
        if not m:
            continue
        layer = int(m.group(2))
        if m.group(1) == "vision":
            out["image_encoder.VPT" if layer == 0 else f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"] = v
        else:
            out[f"text_encoder.transformer.resblocks.{layer + 1}.VPT_shallow"] = v
    return out


def coop_like(trainer, own):
    """CoOp, ProGrad, TCP, CoCoOp: ``register_model("prompt_learner", model.prompt_learner)``."""
    ctx = own["ctx"]
    return {**own, **class_buffers(trainer, ctx.shape[-1], ctx.shape[-2])}


def kgcoop(trainer, own):
    """KgCoOp's PromptLearner also saves meta_net (Linear 512->512 at ViT-B/16) and bias_vectors (1, 512)."""
    embed = trainer.model.clip_model.text_projection.shape[1]
    return {**coop_like(trainer, own), "meta_net.linear1.weight": torch.randn(embed, embed),
            "meta_net.linear1.bias": torch.randn(embed), "bias_vectors": torch.randn(1, embed)}


def maple(trainer, own):
    """MaPLe registers the whole CustomCLIP as MultiModalPromptLearner; its maps are compound_prompt_projections."""
    learner = {re.sub(r"^txt2img_proj\.0\.", "compound_prompt_projections.", k): v for k, v in own.items()}
    learner.update(class_buffers(trainer, own["ctx"].shape[-1], own["ctx"].shape[0]))
    return {**prefixed(learner), **frozen_clip(trainer.model.clip_model)}


def mpl(trainer, own):
    """MPL registers the whole CustomCLIP as MultiModalPromptLearner, with our learner's names."""
    learner = {**own, **class_buffers(trainer, own["ctx"].shape[-1], own["ctx"].shape[0])}
    return {**prefixed(learner), **frozen_clip(trainer.model.clip_model)}


def promptsrc(trainer, own, clip_model=None):
    """PromptSRC registers the whole CustomCLIP as VLPromptLearner: ctx and a zero-shot copy of the image encoder
    in the prompt learner, the deep prompts in the encoders' blocks."""
    clip_model = clip_model or trainer.model.clip_model
    learner = {"ctx": own["ctx"], **class_buffers(trainer, own["ctx"].shape[-1], own["ctx"].shape[0])}
    learner.update({f"ZS_image_encoder.{k[len('visual.'):]}": v for k, v in clip_model.state_dict().items()
                    if k.startswith("visual.")})
    return {**prefixed(learner), **ivlp_encoders(own), **frozen_clip(clip_model)}


def ivlp(trainer, own):
    """IVLP (MaPLe's repository) registers the whole CustomCLIP as VLPromptLearner, without a zero-shot copy."""
    learner = {"ctx": own["ctx"], **class_buffers(trainer, own["ctx"].shape[-1], own["ctx"].shape[0])}
    return {**prefixed(learner), **ivlp_encoders(own), **frozen_clip(trainer.model.clip_model)}


def promptkd_student(trainer, own):
    """PromptKD's student: the whole model as VLPromptLearner; an unused text ctx (4 tokens), IVLP vision prompts,
    the projector VPT_image_trans.conv1 = Sequential(conv, BatchNorm, ReLU, conv)."""
    width = trainer.model.clip_model.ln_final.weight.shape[0]
    parts = {"conv1": "0", "bn": "1", "conv2": "3"}
    out = {"prompt_learner.ctx": torch.randn(4, width), **ivlp_encoders(own),
           **frozen_clip(trainer.model.clip_model, text=False)}
    for k, v in own.items():
        m = re.match(r"^projector\.(conv1|bn|conv2)\.(.+)$", k)
        if m:
            out[f"VPT_image_trans.conv1.{parts[m.group(1)]}.{m.group(2)}"] = v
    return out


#: method -> (how the official code writes its state, its folder, its file name)
LAYOUTS = {
    "CoOp": (coop_like, "prompt_learner", "model.pth.tar-50"),
    "CoCoOp": (coop_like, "prompt_learner", "model.pth.tar-10"),
    "KgCoOp": (kgcoop, "prompt_learner", "model.pth.tar-100"),
    "ProGrad": (coop_like, "prompt_learner", "model.pth.tar-100"),
    "TCP": (coop_like, "prompt_learner", "model.pth.tar-50"),
    "MaPLe": (maple, "MultiModalPromptLearner", "model.pth.tar-5"),
    "MPL": (mpl, "MultiModalPromptLearner", "model.pth.tar-5"),
    "IVLP": (ivlp, "VLPromptLearner", "model.pth.tar-5"),
    "PromptSRC": (promptsrc, "VLPromptLearner", "model.pth.tar-20"),
    "PromptKD": (promptkd_student, "VLPromptLearner", "model-best.pth.tar"),
}
#: what each layout holds that the official code never uses (the ``Not read from`` line names it)
UNUSED = {"KgCoOp": "bias_vectors", "PromptSRC": "ZS_image_encoder", "PromptKD": "ctx"}


# ---------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt, tiny_teacher_ckpt):
    root = tmp_path_factory.mktemp("released")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    other = write_tiny_checkpoint(root / "patch4.pt", kind="vit", vision_layers=4, vision_patch_size=4)
    return {"root": root, "data": root / "data", "ckpt": tiny_ckpt, "teacher": tiny_teacher_ckpt, "patch4": other}


def build(env, name, opts=(), seed=0, ckpt=None):
    ckpt = ckpt or env["ckpt"]
    cfg = tiny_cfg(env["data"], ckpt, name, env["root"] / "out", [*earlier_opts(name, ckpt, env["root"]), *opts])
    return build_for_classes(cfg, CLASSNAMES, seed=seed)


def fp16_noise(trainer, seed=3):
    """Give the learner's floating tensors fixed noise that fp16 holds exactly (the files are fp16)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in trainer.model.prompt_learner.state_dict().items():
            if torch.is_tensor(v) and torch.is_floating_point(v):
                noise = torch.randn(v.shape, generator=g) * 0.05
                v.copy_((noise.abs() + 0.5 if k.endswith("running_var") else noise).half().float())
    trainer.model.refresh_text_dependency()


def learner_tensors(trainer):
    return {k: v.clone() for k, v in trainer.model.prompt_learner.state_dict().items() if torch.is_tensor(v)}


def eval_logits(trainer, seed=0):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    trainer.set_model_mode("eval")
    with torch.no_grad(), trainer.model.frozen_text_features():
        return trainer.model_inference(images)


def write_released(trainer, name, run_dir):
    layout, folder, filename = LAYOUTS[name]
    own = {k: v for k, v in learner_tensors(trainer).items() if not k.endswith("_extra_state")}
    return dassl_file(run_dir / folder / filename, layout(trainer, own), epoch=5)


def train_main(env, name, out, opts, capsys):
    """``train.py`` with ``opts``: its flags (``--eval-only``, ``--model-dir D``, ``--load-epoch N``) go first."""
    flags = [o for i, o in enumerate(opts) if str(o).startswith("--") or (i and str(opts[i - 1]).startswith("--")
                                                                       and opts[i - 1] != "--eval-only")]
    rest = [o for o in opts if o not in flags]
    code = train.main([*flags, *tiny_argv(env["data"], env["ckpt"], name, out, rest)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


# ---------------------------------------------------------------------------------------------------------
# Each layout loads: the file's tensors, the logits of the same prompts in our format
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_released_layout_loads_through_model_dir(env, name, tmp_path, capsys):
    made = build(env, name)
    fp16_noise(made)
    expected, logits = learner_tensors(made), eval_logits(made)
    run = tmp_path / "downloaded"
    write_released(made, name, run)
    ours = tmp_path / "ours"
    made.save_model(0, str(ours))  # the same prompts in this project's format
    capsys.readouterr()

    fresh = build(env, name, seed=1)
    fresh.load_model(str(run))  # no epoch: the downloaded folder's last save (or its model-best)
    out = capsys.readouterr().out
    loaded = learner_tensors(fresh)
    for k, v in expected.items():
        if not k.endswith("_extra_state"):
            assert torch.equal(loaded[k], v), k
    torch.testing.assert_close(eval_logits(fresh), logits, rtol=0, atol=0)
    fp16_noise(made, seed=4)  # other prompts, then the same ones back from this project's format
    made.load_model(str(ours), epoch=1)
    torch.testing.assert_close(eval_logits(made), eval_logits(fresh), rtol=0, atol=0)
    if name in UNUSED:
        lines = [line for line in out.splitlines() if line.startswith("Not read from")]
        assert len(lines) == 1 and UNUSED[name] in lines[0], out
    else:
        assert "Not read from" not in out
    if not LAYOUTS[name][2].startswith("model-best"):
        assert "records no epoch to deploy (a downloaded folder): loading its last save" in out


def test_a_released_folder_loads_through_train_py(env, tmp_path, capsys):
    made = build(env, "KgCoOp")
    fp16_noise(made)
    run = tmp_path / "KgCoOp_release"
    write_released(made, "KgCoOp", run)
    out = tmp_path / "eval"
    code, err = train_main(env, "KgCoOp", out, ["--eval-only", "--model-dir", str(run)], capsys)
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert "records no epoch to deploy (a downloaded folder): loading its last save, model.pth.tar-100" in log
    assert 'Not read from "' in log and "bias_vectors" in log and "meta_net.linear1.weight" in log
    assert "accuracy" in log


@pytest.mark.parametrize("folder,filename", [("VLPromptLearner", "model-best.pth.tar"),
                                             ("VLPromptLearner_large", "model.pth.tar-20")])
def test_a_downloaded_promptkd_teacher_folder_loads(env, tmp_path, capsys, folder, filename):
    """``teacher_model/<DATASET>/VLPromptLearner/model-best.pth.tar`` (base-to-new) and
    ``VLPromptLearner_large/model.pth.tar-20`` (ImageNet cross-dataset), PromptSRC's whole model on the teacher CLIP."""
    src = build(env, "PromptSRC", ckpt=env["teacher"])
    fp16_noise(src)
    own = {k: v for k, v in learner_tensors(src).items() if not k.endswith("_extra_state")}
    teacher_dir = tmp_path / "teacher_model" / "EuroSAT"
    dassl_file(teacher_dir / folder / filename, promptsrc(src, own), epoch=20)
    opts = ["TRAINER.PROMPTKD.TEACHER_DIR", str(teacher_dir), "TRAINER.PROMPTKD.TEACHER_NAME", str(env["teacher"])]
    cfg = tiny_cfg(env["data"], env["ckpt"], "PromptKD", tmp_path / "out", opts)
    student = build_for_classes(cfg, CLASSNAMES)
    teacher = student.model.teachers["teacher"].prompt_learner
    loaded = teacher.state_dict()
    for k, v in own.items():
        assert torch.equal(loaded[k], v), k
    torch.testing.assert_close(student.class_features, fixed_class_features(src), rtol=0, atol=0)
    out = capsys.readouterr().out
    assert "ZS_image_encoder" in out and "Not read from" in out
    assert student.teacher_info["model_name"] == folder


def fixed_class_features(trainer):
    from trainers.prompted_clip import normalise

    model = trainer.model
    with torch.no_grad():
        return normalise(model.encode_text(model.prompt_learner())).float()


# ---------------------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, no output folder
# ---------------------------------------------------------------------------------------------------------
def refused(env, name, out, opts, capsys):
    code, err = train_main(env, name, out, opts, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    return err[0]


def test_another_methods_file_is_refused_naming_the_key(env, tmp_path, capsys):
    made = build(env, "KgCoOp")
    run = tmp_path / "kgcoop"
    write_released(made, "KgCoOp", run)
    line = refused(env, "CoOp", tmp_path / "eval", ["--eval-only", "--model-dir", str(run), "--load-epoch", "100"],
                   capsys)
    assert "bias_vectors (1, 32)" in line


def test_an_unknown_key_is_refused_naming_it_and_its_shape(env, tmp_path, capsys):
    made = build(env, "MaPLe")
    run = tmp_path / "maple"
    path = write_released(made, "MaPLe", run)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["state_dict"]["adapter.fc.weight"] = torch.zeros(3, 7).half()
    torch.save(checkpoint, path)
    line = refused(env, "MaPLe", tmp_path / "eval", ["--eval-only", "--model-dir", str(run), "--load-epoch", "5"],
                   capsys)
    assert "adapter.fc.weight (3, 7)" in line and "no declaration explains" in line


def test_prompts_made_on_another_backbone_are_refused(env, tmp_path, capsys):
    """Same widths, another patch size (as ViT-B/32 beside ViT-B/16): the frozen CLIP in the file tells."""
    made = build(env, "MaPLe", ckpt=env["patch4"])
    run = tmp_path / "maple_b32"
    write_released(made, "MaPLe", run)
    line = refused(env, "MaPLe", tmp_path / "eval", ["--eval-only", "--model-dir", str(run), "--load-epoch", "5"],
                   capsys)
    assert "made on another CLIP" in line and "MODEL.BACKBONE.NAME" in line
    assert re.search(r"image_encoder\.\S+ has shape \([^)]*\) there but \([^)]*\) in this run's backbone", line)


@pytest.mark.parametrize("name,key", [("CoOp", "KD.BOOST_DIR"), ("PromptKD", "TRAINER.PROMPTKD.TEACHER_DIR")])
def test_a_foreign_file_as_boost_dir_or_teacher_dir_is_one_line(env, tmp_path, capsys, name, key):
    foreign = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)  # a torch file, not a Dassl checkpoint
    opts = [key, str(foreign)]
    if name == "PromptKD":
        opts += ["TRAINER.PROMPTKD.TEACHER_NAME", str(env["ckpt"])]
    else:  # boosting prompts that fit the tiny CLIP
        opts += ["KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "2"]
    line = refused(env, name, tmp_path / "out", opts, capsys)
    assert "holds no state_dict" in line and str(foreign) in line


def test_the_checkpoint_folder_itself_is_refused_naming_the_folder_above(tmp_path):
    folder = tmp_path / "release" / "prompt_learner"
    folder.mkdir(parents=True)
    (folder / "model.pth.tar-50").write_bytes(b"x")
    with pytest.raises(UserError, match=r'checkpoint folder itself; give the folder above it \(".*release"\)'):
        resolve_checkpoint(str(folder), "prompt_learner", what="--model-dir")
    assert resolve_checkpoint(str(tmp_path / "release"), "prompt_learner")[0] == str(folder / "model.pth.tar-50")


def test_declared_folders_are_looked_in_after_the_learners(tmp_path):
    (tmp_path / "VLPromptLearner").mkdir()
    (tmp_path / "VLPromptLearner" / "model-best.pth.tar").write_bytes(b"x")
    path, _ = resolve_checkpoint(str(tmp_path), "PromptKDStudent", folders=("VLPromptLearner",))
    assert path.endswith("VLPromptLearner/model-best.pth.tar")
    with pytest.raises(UserError, match='no "PromptKDStudent" folder'):
        resolve_checkpoint(str(tmp_path), "PromptKDStudent")


# ---------------------------------------------------------------------------------------------------------
# Full-size layouts (ViT-B/16 on the meta device) convert to exactly our learners' names and shapes
# ---------------------------------------------------------------------------------------------------------
def meta_learners():
    from trainers.coop import PromptLearner
    from trainers.config import make_block
    from trainers.maple import maple_as_mpl
    from trainers.mpl import MultiModalPromptLearner
    from trainers.promptkd import StudentPrompts
    from trainers.prompts import DeepPrompts

    with torch.device("meta"):
        model = clip.create_model("ViT-B/16")
        kgcoop = PromptLearner(make_block("TRAINER.KGCOOP"), CLASSNAMES, model, key="TRAINER.KGCOOP")
        maple = MultiModalPromptLearner(maple_as_mpl(make_block("TRAINER.MAPLE")), CLASSNAMES, model,
                                        prefix="a photo of a")
        src = DeepPrompts(model, n_text=4, depth_text=9, n_vision=4, depth_vision=9, key="T", classnames=CLASSNAMES,
                          ctx_init="a photo of a")
        student = StudentPrompts(model, teacher_dim=768, n_ctx=4, depth=9)
    return model, {"KgCoOp": kgcoop, "MaPLe": maple, "PromptSRC": src, "PromptKD": student}


def test_full_size_layouts_convert_to_our_names_and_shapes(capsys):
    model, learners = meta_learners()
    C = len(CLASSNAMES)
    visual = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}

    def whole(learner_keys, extra):
        state = {**{f"prompt_learner.{k}": v for k, v in learner_keys.items()}, **extra}
        state.update({("image_encoder." + k[7:]) if k.startswith("visual.") else
                      (k if k == "logit_scale" else "text_encoder." + k): v
                      for k, v in model.state_dict().items() if k != "token_embedding.weight"})
        return state

    e = torch.empty
    layouts = {
        "KgCoOp": {"ctx": e(4, 512), "meta_net.linear1.weight": e(512, 512), "meta_net.linear1.bias": e(512),
                   "bias_vectors": e(1, 512), "token_prefix": e(C, 1, 512), "token_suffix": e(C, 72, 512)},
        "MaPLe": whole({"ctx": e(2, 512), "proj.weight": e(768, 512), "proj.bias": e(768),
                        **{f"compound_prompts_text.{i}": e(2, 512) for i in range(8)},
                        **{f"compound_prompt_projections.{i}.weight": e(768, 512) for i in range(8)},
                        **{f"compound_prompt_projections.{i}.bias": e(768) for i in range(8)},
                        "token_prefix": e(C, 1, 512), "token_suffix": e(C, 74, 512)}, {}),
        "PromptSRC": whole({"ctx": e(4, 512), "token_prefix": e(C, 1, 512), "token_suffix": e(C, 72, 512),
                            **{f"ZS_image_encoder.{k[7:]}": v for k, v in visual.items()}},
                           {"image_encoder.VPT": e(4, 768),
                            **{f"image_encoder.transformer.resblocks.{i}.VPT_shallow": e(4, 768) for i in range(1, 9)},
                            **{f"text_encoder.transformer.resblocks.{i}.VPT_shallow": e(4, 512) for i in range(1, 9)}}),
        "PromptKD": {"prompt_learner.ctx": e(4, 512), "image_encoder.VPT": e(4, 768),
                     **{f"image_encoder.transformer.resblocks.{i}.VPT_shallow": e(4, 768) for i in range(1, 9)},
                     "VPT_image_trans.conv1.0.weight": e(768, 512, 1, 1), "VPT_image_trans.conv1.0.bias": e(768),
                     **{f"VPT_image_trans.conv1.1.{k}": e(768) for k in ("weight", "bias", "running_mean",
                                                                          "running_var")},
                     "VPT_image_trans.conv1.1.num_batches_tracked": e(()),
                     "VPT_image_trans.conv1.3.weight": e(768, 768, 1, 1), "VPT_image_trans.conv1.3.bias": e(768),
                     **{("image_encoder." + k[7:]): v for k, v in visual.items()}},
    }
    for name, state in layouts.items():
        state = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in state.items()}
        converted = read_prompt_state({"state_dict": state}, f"{name}.pth", METHODS[name].cls, backbone=model)
        own = {k: tuple(v.shape) for k, v in learners[name].state_dict().items() if torch.is_tensor(v)}
        assert {k: tuple(v.shape) for k, v in converted.items()} == own, name
