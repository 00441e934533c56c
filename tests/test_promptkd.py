"""PromptKD: the student's logits and loss against a hand computation with a teacher of another width, the
teacher read as its run trained it (mismatches refused), transductive and inductive data, the KD weights, and the
two phases through the protocol scripts."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clip
from clip import LayerOp
from dassl.engine import build_trainer
from dassl.utils import save_checkpoint
from datasets.fixtures import make_fixture
from tools.earlier_runs import earlier_run_opts
from trainers.compat import UserError
from trainers.promptkd import kd_weight_for, parse_weights, promptkd_loss

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg
from ulps import assert_close_ulps

REPO = Path(__file__).resolve().parent.parent
HEAD_DATA = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
             "DATASET.NUM_SHOTS", "2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """EuroSAT fixture (10 classes), a student CLIP (embed 32, vision width 64) and a PromptSRC teacher run on a
    wider CLIP (embed 48, vision width 128, 3 text layers)."""
    root = tmp_path_factory.mktemp("promptkd")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    student = write_tiny_checkpoint(root / "student.pt", kind="vit", vision_layers=4)
    teacher = write_tiny_checkpoint(root / "teacher.pt", kind="vit", seed=1, vision_layers=4, embed_dim=48,
                                    vision_width=128, transformer_layers=3)
    head = ["--root", str(root / "data"), "--seed", "1", "--dataset-config-file",
            str(REPO / "configs/datasets/eurosat.yaml")]
    opts = earlier_run_opts("PromptKD", (head, HEAD_DATA), teacher, root)
    yield root, student, teacher, head, opts


def make_trainer(env, out, opts=(), subsample="base"):
    root, student, _, head, teacher_opts = env
    argv = [*head, "--trainer", "PromptKD", "--config-file", str(REPO / "configs/trainers/PromptKD/tiny_digits.yaml"),
            "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(student), *HEAD_DATA,
            "DATASET.SUBSAMPLE_CLASSES", subsample, *teacher_opts, *opts]
    return build_trainer(build_cfg(argv))


def images(n=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_logits_and_loss_equal_a_hand_computation(env, tmp_path):
    _, student_path, teacher_path, _, teacher_opts = env
    trainer = make_trainer(env, tmp_path / "run", ["TRAINER.PROMPTKD.TEMPERATURE", "2.0"])
    learner = trainer.model.prompt_learner
    with torch.no_grad():  # non-trivial learned values, BatchNorm included
        g = torch.Generator().manual_seed(3)
        for p in learner.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.numel() == 48 else 0.0))
    x = images()

    # -- by hand ------------------------------------------------------------------------------------------
    s_clip = clip.load(str(student_path), device="cpu", precision="fp32")[0]
    t_clip = clip.load(str(teacher_path), device="cpu", precision="fp32")[0]
    run = Path(teacher_opts[1])
    t_state = torch.load(run / "VLPromptLearner" / "model.pth.tar-1", map_location="cpu",
                         weights_only=True)["state_dict"]
    names = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
             "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]
    assert trainer.class_names == names  # transductive: every class, in label order
    ids = clip.tokenize([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        emb = t_clip.token_embedding(ids)
        emb[:, 1:5] = t_state["ctx"]  # the four learned context tokens replace "a photo of a"
        text = t_clip.encode_text_embeddings(emb, ids, ops=[None, LayerOp(replace=t_state["text_prompts.0"])],
                                             n_prompt=4)
        text = text / text.norm(dim=-1, keepdim=True)
        tv = [t_state[f"vision_prompts.{i}"] for i in range(3)]
        t_img = t_clip.encode_image(x, ops=[LayerOp(add=tv[0]), LayerOp(remove=4, add=tv[1]),
                                            LayerOp(remove=4, add=tv[2])])
        t_img = t_img / t_img.norm(dim=-1, keepdim=True)
        t_logits = t_clip.logit_scale.exp() * t_img @ text.t()

        sv = [learner.vision_prompts[i] for i in range(3)]
        f = s_clip.encode_image(x, ops=[LayerOp(add=sv[0]), LayerOp(remove=4, add=sv[1]),
                                        LayerOp(remove=4, add=sv[2])])
        proj = learner.projector
        h = f @ proj.conv1.weight[:, :, 0, 0].t() + proj.conv1.bias  # 1x1 conv 32 -> 48
        mean, var = h.mean(0), h.var(0, unbiased=False)  # BatchNorm in training: the batch's statistics
        h = torch.relu((h - mean) / torch.sqrt(var + proj.bn.eps) * proj.bn.weight + proj.bn.bias)
        h = h @ proj.conv2.weight[:, :, 0, 0].t() + proj.conv2.bias
        h = h / h.norm(dim=-1, keepdim=True)
        s_logits = s_clip.logit_scale.exp() * h @ text.t()  # the student's own logit scale
        temp, weight = 2.0, 1000.0
        p_t = torch.softmax(t_logits / temp, -1)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(s_logits / temp, -1))).sum()
        expected_loss = weight * temp ** 2 * kl / (4 * 10)

    # -- the trainer ------------------------------------------------------------------------------------------
    assert trainer.model.class_features.shape == (10, 48)
    assert_close_ulps(trainer.model.class_features, text, 64)  # hand-written: measured 0 here
    trainer.set_model_mode("train")
    result = trainer.loss({"img": x, "label": torch.zeros(4, dtype=torch.long)}, trainer.model(x))
    loss, logits = result.loss, result.logits
    assert_close_ulps(logits, s_logits, 64)  # measured <= 8 ulps
    assert_close_ulps(trainer.teacher_logits(x), t_logits, 64)
    assert_close_ulps(loss, expected_loss, 64)  # measured <= 6 ulps
    torch.testing.assert_close(promptkd_loss(s_logits, t_logits, temp, weight), expected_loss)

    # evaluation: BatchNorm's running statistics, and only the base half's logits (columns 0-4)
    trainer.set_model_mode("eval")
    with torch.no_grad(), trainer.model.active_classes(trainer.eval_index):
        out = trainer.model(x)
    bn = proj.bn
    g = (f @ proj.conv1.weight[:, :, 0, 0].t() + proj.conv1.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    g = torch.relu(g * bn.weight + bn.bias) @ proj.conv2.weight[:, :, 0, 0].t() + proj.conv2.bias
    g = g / g.norm(dim=-1, keepdim=True)
    assert_close_ulps(out.logits, (s_clip.logit_scale.exp() * g @ text[:5].t()).detach(), 64)  # measured <= 4 ulps

    # the checkpoint holds the student only: prompts, projector (with BatchNorm statistics), the teacher's origin
    trainer.save_model(0, str(tmp_path / "ckpt"))
    state = torch.load(tmp_path / "ckpt" / "PromptKDStudent" / "model.pth.tar-1", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in state} == {"vision_prompts", "projector", "frozen_set_origins", "trained_classes"}
    assert "projector.bn.running_mean" in state
    assert sum(v.numel() for k, v in state.items() if torch.is_tensor(v) and "running" not in k
               and "num_batches" not in k) == 3 * 4 * 64 + (32 * 48 + 48) + 2 * 48 + (48 * 48 + 48)
    origin = json.loads(state["frozen_set_origins._extra_state"]["origins"])["teacher"]
    assert origin["path"] == str(run / "VLPromptLearner" / "model.pth.tar-1") and origin["epoch"] == 1


def test_teacher_is_read_as_its_run_trained_it(env, tmp_path):
    """Depth, tokens, init phrase and backbone come from the teacher run; keys that say otherwise are one error
    naming both values (the reference silently keeps random prompts for a teacher of another depth)."""
    cases = [(["TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "3"], "PROMPT_DEPTH_TEXT is 3 but the teacher .* trained with 2"),
             (["TRAINER.PROMPTKD.N_CTX_TEXT", "2"], "N_CTX_TEXT is 2 but the teacher .* trained with 4"),
             (["TRAINER.PROMPTKD.CTX_INIT", "a photo of the"], "CTX_INIT is 'a photo of the' but .* used 'a photo of a'"),
             (["TRAINER.PROMPTKD.TEACHER_NAME", "ViT-L/14"], "TEACHER_NAME is 'ViT-L/14' but the teacher run .* used"),
             (["TRAINER.PROMPTKD.TEACHER_DIR", str(tmp_path)], "holds no finished run"),
             (["TRAINER.PROMPTKD.TEACHER_DIR", ""], "TEACHER_DIR is empty"),
             (["TRAINER.PROMPTKD.SELECT_ON_TEST", "True"], "SELECT_ON_TEST True .* TEST.FINAL_MODEL best_val"),
             (["TRAINER.MODAL", "cross"], "MODAL cross .*SUBSAMPLE_CLASSES is 'base'")]
    for opts, message in cases:
        with pytest.raises(UserError, match=message):
            make_trainer(env, tmp_path / "run", opts)

    # a reference-format teacher file (the whole model's state, prompts inside the encoders) gives the same teacher
    run = Path(env[4][1])
    state = torch.load(run / "VLPromptLearner" / "model.pth.tar-1", map_location="cpu", weights_only=True)["state_dict"]
    whole = {"prompt_learner.ctx": state["ctx"], "image_encoder.VPT": state["vision_prompts.0"],
             "prompt_learner.token_prefix": torch.zeros(10, 1, 64)}
    whole.update({f"image_encoder.transformer.resblocks.{i}.VPT_shallow": state[f"vision_prompts.{i}"] for i in (1, 2)})
    whole["text_encoder.transformer.resblocks.1.VPT_shallow"] = state["text_prompts.0"]
    save_checkpoint({"state_dict": whole, "epoch": 20}, str(tmp_path / "ref"), model_name="model-best.pth.tar")
    from_file = make_trainer(env, tmp_path / "f", ["TRAINER.PROMPTKD.TEACHER_DIR", str(tmp_path / "ref/model-best.pth.tar")])
    from_run = make_trainer(env, tmp_path / "r")
    assert torch.equal(from_file.model.class_features, from_run.model.class_features)
    assert from_file.result_extras()["frozen_sets"]["teacher"]["epoch"] == 20


def test_transductive_and_inductive_data(env, tmp_path):
    trans = make_trainer(env, tmp_path / "t")
    labels = {int(y) for b in trans.train_loader_x for y in b["label"]}
    assert labels == set(range(10)) and trans.eval_index == [0, 1, 2, 3, 4]
    assert len(trans.test_loader.dataset) == 15 and trans.num_classes == 5  # the base classes' test images
    extras = trans.result_extras()["promptkd"]
    assert extras["transductive"] is True and extras["train_classes"] == "all" and extras["model_selection"] == "last epoch"

    ind = make_trainer(env, tmp_path / "i", ["TRAINER.PROMPTKD.TRANSDUCTIVE", "False"])
    assert {int(y) for b in ind.train_loader_x for y in b["label"]} == set(range(5))
    assert ind.class_names == trans.class_names[:5] and ind.eval_index is None
    assert ind.result_extras()["promptkd"]["transductive"] is False

    # the new half: logits are columns 5-9 of the all-class logits, whichever way the run was built
    new = make_trainer(env, tmp_path / "n", subsample="new")
    assert new.eval_index == [5, 6, 7, 8, 9]
    new.model.prompt_learner.load_state_dict(trans.model.prompt_learner.state_dict())
    for t in (trans, new):
        t.set_model_mode("eval")
    with torch.no_grad():
        full = trans.model_inference(images())
        with new.model.active_classes(new.eval_index):
            half = new.model_inference(images())
    torch.testing.assert_close(half, full[:, 5:], rtol=0, atol=0)


def test_kd_weights_per_dataset():
    cfg = build_cfg(["--trainer", "PromptKD", "--config-file",
                     str(REPO / "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml")], check=False)
    m = cfg.TRAINER.PROMPTKD
    weights = {name: kd_weight_for(m, name) for name in ("FGVCAircraft", "OxfordFlowers", "DescribableTextures",
                                                         "ImageNet", "EuroSAT", "Caltech101")}
    assert weights == {"FGVCAircraft": 200, "OxfordFlowers": 200, "DescribableTextures": 200, "ImageNet": 1000,
                       "EuroSAT": 1000, "Caltech101": 1000}
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAINER.MODAL == "base2novel"
    with pytest.raises(UserError, match="DatasetName:weight"):
        parse_weights(["FGVCAircraft=200"])
    assert math.isclose(promptkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, 1000.0).item(), 0.0, abs_tol=1e-9)


def test_published_promptkd_numbers_are_consistent():
    """Transcribed README numbers: the averages are the means of the entries, the average HM their HM."""
    from tools.results.published import load
    from tools.results.tables import harmonic_mean

    b2n = [e for e in load("base2new", ["promptkd-readme"]).entries if e["ref"] == "promptkd-readme"]
    per, avg = [e for e in b2n if e["dataset"] != "Average"], next(e for e in b2n if e["dataset"] == "Average")
    assert len(per) == len(avg["over"]) == 11
    for metric in ("base", "new"):
        assert sum(e[metric] for e in per) / 11 == pytest.approx(avg[metric], abs=0.006)
    assert harmonic_mean(avg["base"], avg["new"]) == pytest.approx(avg["hm"], abs=0.006)
    xd = [e for e in load("crossdataset", ["promptkd-readme"]).entries if e["ref"] == "promptkd-readme"]
    per, avg = [e for e in xd if e["dataset"] != "Average"], next(e for e in xd if e["dataset"] == "Average")
    assert len(per) == 10 and sum(e["accuracy"] for e in per) / 10 == pytest.approx(avg["accuracy"], abs=0.006)


def test_teacher_phase_prints_the_student_options(env, tmp_path):
    """scripts/promptkd_teacher.sh (run by scripts/method.sh first, PromptKD's SCRIPT_SETUP) finds the teacher in
    PromptSRC's protocol folder and prints the options for the student; refuses protocols the reference lacks."""
    teacher_run = Path(env[4][1])
    out = tmp_path / "out"
    layout = out / "base2new/train_base/eurosat/shots_2/PromptSRC/tiny_digits_large/seed1"
    layout.parent.mkdir(parents=True)
    layout.symlink_to(teacher_run)
    run_env = dict(os.environ, OUTPUT=str(out), SHOTS="2", TEACHER_CFG="tiny_digits_large")

    def setup(*args, **extra):
        return subprocess.run(["bash", str(REPO / "scripts/promptkd_teacher.sh"), *args], cwd=REPO,
                              env=dict(run_env, **extra), capture_output=True, text=True)

    done = setup("base2new_test", "eurosat", "2", "--", "OPTIM.MAX_EPOCH", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == f"SETUP_OPTS=(TRAINER.PROMPTKD.TEACHER_DIR {layout} DATASET.NUM_SHOTS -1 )"
    done = setup("xd_test", "caltech101", "1", TEACHER_DIR=str(teacher_run), TEACHER_BACKBONE="/x/t.pt")
    assert "TRAINER.PROMPTKD.TEACHER_NAME /x/t.pt" in done.stdout and "export SOURCE=caltech101" in done.stdout
    assert "no PromptKD teacher" in setup("base2new_test", "dtd", "1").stderr  # test scripts never train it
    for proto in ("fewshot_train", "dg_test"):
        assert "PromptKD has no" in setup(proto, "eurosat", "1").stderr


@pytest.mark.slow
def test_scripts_find_the_teacher_and_run_the_protocol(env, tmp_path):
    """`scripts/promptkd/base2new_train.sh`: scripts/method.sh runs the teacher phase, which finds the teacher in
    PromptSRC's folder (it would train it there when missing: scripts/method.sh PromptSRC base2new_train), and
    passes it on after "--" before the caller's pairs; the student trains; tools.results reads the Base cell."""
    from tools.results import Options, build, collect

    root, student, teacher, _, teacher_opts = env
    out = tmp_path / "out"
    layout = out / "base2new/train_base/eurosat/shots_2/PromptSRC/tiny_digits_large/seed1"
    layout.parent.mkdir(parents=True)
    layout.symlink_to(Path(teacher_opts[1]))
    run_env = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(out), SHOTS="2", CFG="tiny_digits",
                   TEACHER_CFG="tiny_digits_large", TEACHER_BACKBONE=str(teacher), OMP_NUM_THREADS="1",
                   PYTHON=sys.executable)
    small = ["MODEL.BACKBONE.NAME", str(student), "OPTIM.MAX_EPOCH", "1"]
    done = subprocess.run(["bash", str(REPO / "scripts/promptkd/base2new_train.sh"), "eurosat", "1", "--", *small],
                          cwd=REPO, env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    base = json.loads((out / "base2new/train_base/eurosat/shots_2/PromptKD/tiny_digits/seed1/result.json").read_text())
    assert base["promptkd"]["teacher"]["source"] == str(layout) and base["shots"] == -1 and base["epochs"] == 1
    assert base["subsample"] == "base" and base["num_classes"] == 5 and base["promptkd"]["transductive"] is True
    report = build("base2new", collect(out), Options(seeds=(1,), methods=["PromptKD"]))
    row = [r for r in report.summary["rows"] if r["method"] == "PromptKD" and r["dataset"] == "EuroSAT"][0]
    assert row["base"]["mean"] == base["accuracy"]
