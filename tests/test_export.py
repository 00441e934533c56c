"""Exporting a run's classifier as a head for plain CLIP (``Classifier.export_head``, ``tools.predict --export``).

Every registered method is saved as a run folder (untrained, on the tiny CLIP, :func:`tiny_runs.saved_run`) and
exported: the methods whose evaluation is plain CLIP image features times fixed class features give heads that,
loaded without this project (``torch.load(weights_only=True)``, ``safetensors``) and applied to open_clip's image
features of the same checkpoint, reproduce the run's evaluation logits; the others are refused in one line that
says why, and nothing is written.
"""
import json

import pytest
import torch

import trainers
from trainers.compat import UserError
from trainers.predict import HEAD_FORMAT, load_run, read_head
from tools.predict import main

from tiny_runs import CLASSNAMES, saved_method_run

#: PromptKD builds its teacher's features too (over 5 s): the slow tier
METHODS = [pytest.param(m.name, marks=pytest.mark.slow) if m.name == "PromptKD" else m.name
           for m in trainers.list_methods()]
EXPORTABLE = {"CoOp", "KgCoOp", "ProGrad", "TCP", "ZeroshotCLIP", "ZeroshotCLIP2"}
#: why the others cannot be a head (a phrase of their one-line refusal)
REASONS = {"CoCoOp": "class features depend on each image", "PromptKD": "learned projector",
           "MMA": "adapters or low-rank updates change the image encoder",
           "CLIPLoRA": "adapters or low-rank updates change the image encoder"}
VISION = "prompts change the image encoder"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt, tiny_teacher_ckpt, eurosat_root):
    return tmp_path_factory.mktemp("export"), tiny_ckpt, tiny_teacher_ckpt, eurosat_root


def make_run(env, name, opts=(), folder=None):
    root, ckpt, teacher, data = env
    return saved_method_run(root, data, ckpt, teacher, name, opts, folder)


def images(env, n=6):
    files = sorted((env[3] / "eurosat" / "2750").rglob("*.jpg"))
    assert len(files) >= n
    return [str(f) for f in files[:n]]


@pytest.fixture(scope="module")
def open_clip_model(env):
    """The tiny checkpoint in open_clip, in fp32 (its OpenAI-format builder rounds the weights to fp16 first, so
    they are loaded again)."""
    pytest.importorskip("open_clip")
    from open_clip.model import build_model_from_openai_state_dict

    state = torch.load(env[1], map_location="cpu", weights_only=True)
    model = build_model_from_openai_state_dict(dict(state), quick_gelu=True).float()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own})
    return model.eval()


def plain_logits(open_clip_model, batch, head):
    """The head applied to open_clip's image features: no code of this project."""
    with torch.no_grad():
        image = open_clip_model.encode_image(batch)
    image = image / image.norm(dim=-1, keepdim=True)
    return head["logit_scale"] * image @ head["text_features"].t()


@pytest.mark.parametrize("name", METHODS)
def test_each_method_exports_or_says_why_not(env, name, open_clip_model, tmp_path):
    clf = load_run(make_run(env, name))
    if name in EXPORTABLE:
        batch = torch.stack([clf._load(p) for p in images(env)])
        expected = clf.logits(batch)
        for suffix in (".pt", ".safetensors"):
            path = clf.export_head(tmp_path / f"head{suffix}")
            if suffix == ".pt":
                head = torch.load(path, weights_only=True)
            else:
                from safetensors import safe_open

                with safe_open(path, framework="pt") as f:
                    meta = f.metadata()
                    head = {"format": meta["format"], "classnames": json.loads(meta["classnames"]),
                            "text_features": f.get_tensor("text_features"),
                            "logit_scale": float(f.get_tensor("logit_scale")[0])}
            assert head["format"] == HEAD_FORMAT and head["classnames"] == CLASSNAMES
            features = head["text_features"]
            assert features.dtype == torch.float32 and features.shape[0] == len(CLASSNAMES)
            torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(CLASSNAMES)))
            torch.testing.assert_close(plain_logits(open_clip_model, batch, head), expected, rtol=0, atol=1e-4)
            assert read_head(str(path))["classnames"] == CLASSNAMES
    else:
        with pytest.raises(UserError) as err:
            clf.export_head(tmp_path / "head.pt")
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{name} cannot be exported as a head for plain CLIP")
        assert REASONS.get(name, VISION) in message, message
        assert not (tmp_path / "head.pt").exists()


def test_a_head_for_new_class_names(env, open_clip_model, tmp_path):
    clf = load_run(make_run(env, "CoOp"))
    names = ["River", "Sea or Lake", "Pasture Land"]
    head = read_head(clf.export_head(tmp_path / "new.safetensors", classnames=names))
    batch = torch.stack([clf._load(p) for p in images(env)])
    assert head["classnames"] == names
    torch.testing.assert_close(plain_logits(open_clip_model, batch, head), clf.logits(batch, classnames=names),
                               rtol=0, atol=1e-4)


def test_dept_mixing_its_head_is_refused(env, tmp_path):
    clf = load_run(make_run(env, "CoOp", ["TRAINER.LINEAR_PROBE.TYPE", "linear"], folder="run-dept"))
    with pytest.raises(UserError, match="extension DePT mixes another head into the evaluation logits"):
        clf.head()


def test_cli_exports_and_refuses_without_writing(env, tmp_path, capsys):
    out = tmp_path / "coop.pt"
    assert main([str(make_run(env, "CoOp")), "--export", str(out), "--device", "cpu"]) == 0
    assert torch.load(out, weights_only=True)["classnames"] == CLASSNAMES
    assert f"wrote the head (5 classes" in capsys.readouterr().err
    refused = tmp_path / "vpt.pt"
    assert main([str(make_run(env, "VPT")), "--export", str(refused)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: VPT cannot be exported") and not refused.exists()
    for bad, words in ((tmp_path / "head.bin", "name it .pt or .safetensors"),
                       (tmp_path / "nofolder" / "h.pt", "does not exist")):
        assert main([str(make_run(env, "CoOp")), "--export", str(bad)]) == 2
        assert words in capsys.readouterr().err and not bad.exists()
