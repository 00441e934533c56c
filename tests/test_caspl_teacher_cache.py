"""CasPL phase 1, ``KD.TEACHER_MODE``: ``online`` (the default, the fork's teacher on every augmented batch) and
``cached`` (the teacher once per training image on a fixed view, kept on disk)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from clip import MASTER_DTYPE
from dassl.data.transforms import build_transform
import trainers
from datasets.fixtures import make_fixture
from trainers import teacher_cache as tc
from trainers.caspl import CasPL, distillation_loss

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg

pytestmark = pytest.mark.numeric  # rerun under other CPU kernel sets (tests/suite.py)

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 20  # eurosat fixture: 10 classes x 2 training images
TEST_BATCH = 16


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("caspl_cache")
    make_fixture("eurosat", root / "data", n_per_class=2, image_size=40)
    student = write_tiny_checkpoint(root / "student.pt", kind="vit", vision_layers=2)
    # another width and another resolution than the student's: the online path resizes, the cached view is 48 px
    teacher = write_tiny_checkpoint(root / "teacher.pt", kind="vit", seed=3, vision_layers=2, vision_width=128,
                                    transformer_width=128, embed_dim=48, image_resolution=48)
    other = write_tiny_checkpoint(root / "other.pt", kind="vit", seed=4, vision_layers=2, vision_width=128,
                                  transformer_width=128, embed_dim=48, image_resolution=48)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and other jobs share the cores
    yield root, student, teacher, other
    torch.set_num_threads(threads)


def argv(env, out, mode=None, opts=(), epochs=2):
    root, student, teacher, _ = env
    mode_opts = ["KD.TEACHER_MODE", mode] if mode else []
    return ["--root", str(root / "data"), "--seed", "1", "--trainer", "CasPL",
            "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
            "--config-file", str(REPO / "configs/trainers/CasPL/tiny_digits.yaml"), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(student), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", str(TEST_BATCH),
            "OPTIM.MAX_EPOCH", str(epochs), "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.01",
            "KD.BACKBONE_NAME", str(teacher), "DATASET.NUM_SHOTS", "-1", "KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2",
            "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "2", *mode_opts, *opts]


def build(env, out, mode=None, opts=()):
    cfg = build_cfg(argv(env, out, mode, opts))
    return trainers.method_of("CasPL").cls(cfg)


@pytest.fixture
def spy(monkeypatch):
    """Counts the teacher's image-encoder calls and records the image paths of every training batch."""
    seen = {"teacher_calls": 0, "teacher_images": 0, "batches": []}
    features, forward_backward = CasPL.teacher_image_features, CasPL.forward_backward

    def counting(self, image):
        seen["teacher_calls"] += 1
        seen["teacher_images"] += image.shape[0]
        return features(self, image)

    def recording(self, batch):
        seen["batches"].append(list(batch["impath"]))
        return forward_backward(self, batch)

    monkeypatch.setattr(CasPL, "teacher_image_features", counting)
    monkeypatch.setattr(CasPL, "forward_backward", recording)

    def reset():
        seen.update(teacher_calls=0, teacher_images=0, batches=[])
    seen["reset"] = reset
    return seen


def final_state(out):
    """The learned tensors of a finished run's last checkpoint."""
    state = torch.load(out / "BoostingPrompts" / "model.pth.tar-2", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def test_cached_mode_computes_the_cache_once_and_reuses_it(env, spy, tmp_path):
    cache = tmp_path / "cache"
    opts = ["KD.TEACHER_CACHE_DIR", str(cache)]
    assert train.main(argv(env, tmp_path / "a", "cached", opts)) == 0
    # one pass over the 20 images in test batches, then 2 epochs x 5 batches without the teacher
    assert (spy["teacher_calls"], spy["teacher_images"]) == (math.ceil(N_IMAGES / TEST_BATCH), N_IMAGES)
    cached_order = spy["batches"]
    assert len(cached_order) == 10
    result = json.loads((tmp_path / "a" / "result.json").read_text())["caspl"]
    assert result["teacher_mode"] == "cached"
    info = result["teacher_cache"]
    files = list(cache.iterdir())
    assert [str(f) for f in files] == [info["path"]] and info["key"] in files[0].name and info["images"] == N_IMAGES
    assert info["view"]["size"] == 48 and info["view"]["pipeline"].startswith("resize")
    assert "teacher cached (once per image, fixed view" in (tmp_path / "a" / "log.txt").read_text()

    spy["reset"]()  # another run (another output folder, e.g. another seed's) reuses the file
    stamp = files[0].stat().st_mtime_ns
    assert train.main(argv(env, tmp_path / "b", "cached", opts)) == 0
    assert spy["teacher_calls"] == 0 and files[0].stat().st_mtime_ns == stamp
    assert "Teacher cache reused" in (tmp_path / "b" / "log.txt").read_text()
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    spy["reset"]()  # the default: the teacher on every training batch, and the same data order as cached
    assert train.main(argv(env, tmp_path / "c", None, opts)) == 0
    assert (spy["teacher_calls"], spy["teacher_images"]) == (10, 2 * N_IMAGES)
    assert spy["batches"] == cached_order  # the cache pass draws nothing from the global random state
    result = json.loads((tmp_path / "c" / "result.json").read_text())["caspl"]
    assert result["teacher_mode"] == "online" and "teacher_cache" not in result
    assert "teacher online (every augmented batch)" in (tmp_path / "c" / "log.txt").read_text()
    assert list(cache.iterdir()) == files


def test_the_teacher_is_freed_once_its_features_are_cached(env, tmp_path):
    trainer = build(env, tmp_path / "x", "cached", ["KD.TEACHER_CACHE_DIR", str(tmp_path / "cache")])
    assert len(trainer.model.teachers) == 1  # loaded for its text features
    trainer.prepare_teacher_cache()
    assert len(trainer.model.teachers) == 0 and trainer.teacher_cache.shape[0] == N_IMAGES


def fixed_view(trainer, items):
    """The test pipeline at the teacher's resolution, built independently of the cache code."""
    cfg = trainer.cfg.clone()
    cfg.defrost()
    cfg.INPUT.SIZE = (48, 48)
    tfm = build_transform(cfg, is_train=False)
    from dassl.utils import read_image
    return torch.stack([tfm(read_image(item.impath)) for item in items])


def test_cached_logits_equal_the_online_teacher_on_the_fixed_view(env, tmp_path):
    trainer = build(env, tmp_path / "x", "cached", ["KD.TEACHER_CACHE_DIR", str(tmp_path / "cache")])
    trainer.prepare_teacher_cache()
    assert trainer.teacher_cache.shape == (N_IMAGES, 48) and trainer.teacher_cache.dtype == torch.float32
    items = trainer.dm.dataset.train_x
    rows = torch.tensor([3, 17, 0, 9, 12])
    scale = trainer.model.clip_model.logit_scale.exp().detach()
    cached = trainer.cached_teacher_logits(rows, scale)
    online = trainer.teacher_logits(fixed_view(trainer, [items[i] for i in rows]), scale)
    # the same images through the teacher in batches of other sizes (the cache pass's, and these 5): the matrix
    # products block differently, so the logits differ by float32 rounding. Measured (max |logit| 1.77): 1.85e-6
    # (9 ulps of it) here, 1.07e-6 / 1.31e-6 with ATEN_CPU_CAPABILITY default / avx2; allowed: 64 ulps (7x margin)
    atol = 64 * torch.finfo(torch.float32).eps * online.abs().max().item()
    torch.testing.assert_close(cached, online, rtol=0, atol=atol)

    # a training batch finds its rows by index (checked against its paths), or by path alone
    batch = next(iter(trainer.train_loader_x))
    got = trainer.teacher_rows(batch)
    assert [items[i].impath for i in got] == list(batch["impath"])
    assert torch.equal(trainer.teacher_rows({"impath": batch["impath"]}), got)
    with pytest.raises(RuntimeError, match="not in the teacher cache"):
        trainer.teacher_rows({"impath": ["/elsewhere.jpg"]})


def test_a_corrupt_or_foreign_cache_is_detected_and_computed_again(env, spy, tmp_path):
    opts = ["KD.TEACHER_CACHE_DIR", str(tmp_path / "cache")]
    trainer = build(env, tmp_path / "x", "cached", opts)
    trainer.prepare_teacher_cache()
    path, key = Path(trainer.teacher_cache_info["path"]), trainer.teacher_cache_info["key"]
    impaths = trainer.teacher_cache_info["impaths"]
    good = trainer.teacher_cache.clone()
    data = path.read_bytes()

    def corrupt_and_reload(content, why):
        path.write_bytes(content)
        assert tc.load_features(str(path), key, impaths)[0] is None
        assert why in tc.load_features(str(path), key, impaths)[1]
        spy["reset"]()
        again = build(env, tmp_path / "x", "cached", opts)
        again.prepare_teacher_cache()
        assert spy["teacher_images"] == N_IMAGES  # recomputed, not used
        assert torch.equal(again.teacher_cache, good)
        feats, why_not = tc.load_features(str(path), key, impaths)
        assert why_not == "" and torch.equal(feats, good)

    corrupt_and_reload(data[: len(data) // 2], "unreadable")  # truncated (a killed writer never leaves this)
    corrupt_and_reload(b"", "unreadable")

    def payload(**change):
        p = torch.load(path, map_location="cpu", weights_only=True)
        p.update(change)
        tmp = path.with_suffix(".tmp")
        torch.save(p, tmp)
        return tmp.read_bytes()

    flipped = good.clone()
    flipped[5, 7] += 1e-3
    corrupt_and_reload(payload(features=flipped), "SHA256")  # a changed value with the old checksum
    corrupt_and_reload(payload(features=good[:-1]), "shape")
    corrupt_and_reload(payload(key="0" * 64), "key differs")
    corrupt_and_reload(payload(impaths=list(reversed(impaths))), "image list")
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_the_cache_key_follows_images_teacher_view_and_precision(env, tmp_path):
    root, _, teacher, other = env
    paths = [f"/data/img{i}.jpg" for i in range(4)]
    who = tc.teacher_identity(str(teacher))
    view = {"size": 224, "interpolation": "bicubic"}
    num = {"precision": "fp32", "param_dtype": "torch.float32", "autocast_dtype": "None"}
    key = tc.cache_key(paths, who, view, num)
    assert key == tc.cache_key(list(paths), dict(who), dict(view), dict(num))  # deterministic
    copy = tmp_path / "copy.pt"
    shutil.copyfile(teacher, copy)
    assert tc.teacher_identity(str(copy)) == who  # the file's content names the teacher, not its path
    assert tc.teacher_identity("ViT-L/14")["sha256"].startswith("b8cca3fd")  # a released name: no file read
    assert tc.cache_filename("EuroSAT", "ViT-L/14", "k") == "eurosat_ViT-L-14_k.pt"
    assert tc.cache_filename("EuroSAT", str(teacher), "k") == "eurosat_teacher_k.pt"
    changed = [
        tc.cache_key(paths[:-1], who, view, num),  # an image fewer
        tc.cache_key(paths[::-1], who, view, num),  # another order
        tc.cache_key([*paths[:-1], "/data/imgX.jpg"], who, view, num),  # another image
        tc.cache_key(paths, tc.teacher_identity(str(other)), view, num),  # another teacher
        tc.cache_key(paths, {"name": "ViT-L/14@336px", "sha256": "3035"}, view, num),
        tc.cache_key(paths, who, {**view, "size": 336}, num),  # another view
        tc.cache_key(paths, who, view, {**num, "precision": "fp16", "param_dtype": "torch.float16"}),
    ]
    assert len({key, *changed}) == len(changed) + 1

    # through the trainer: the training split (few-shot subset) and the teacher are part of the key
    base = build(env, tmp_path / "k", "cached").teacher_cache_info
    assert base["path"].startswith(str(root / "data" / tc.DEFAULT_DIRNAME))  # default: beside the data
    fewer = build(env, tmp_path / "k", "cached", ["DATASET.NUM_SHOTS", "1"]).teacher_cache_info
    swapped = build(env, tmp_path / "k", "cached", ["KD.BACKBONE_NAME", str(other)]).teacher_cache_info
    assert fewer["images"] == 10 and len({base["key"], fewer["key"], swapped["key"]}) == 3


def test_an_unknown_mode_is_one_error_before_anything_is_written(env, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert train.main(argv(env, out, "offline", ["KD.TEACHER_CACHE_DIR", str(cache)])) == 2
    err = capsys.readouterr().err
    assert "error: KD.TEACHER_MODE is 'offline'; choose one of online, cached" in err
    assert not out.exists() and not cache.exists()


def test_an_unwritable_cache_folder_is_one_error_before_the_teacher_pass(env, spy, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    assert train.main(argv(env, out, "cached", ["KD.TEACHER_CACHE_DIR", str(blocker / "cache")])) == 2
    err = capsys.readouterr().err
    assert "cannot write the teacher cache in" in err and "set KD.TEACHER_CACHE_DIR to a writable folder" in err
    assert spy["teacher_calls"] == 0 and not (out / "result.json").exists()


def test_the_online_default_is_the_previous_code_path(env, tmp_path):
    trainer = build(env, tmp_path / "x")  # no KD.TEACHER_MODE given: online
    assert trainer.cfg.KD.TEACHER_MODE == "online" and trainer.teacher_cache is None
    torch.manual_seed(0)
    batch = next(iter(trainer.train_loader_x))
    image, label = trainer.parse_batch_train(batch)
    result = trainer.loss({**batch, "img": image, "label": label}, trainer.model(image))
    loss, logits = result.loss, result.logits

    # the code before KD.TEACHER_MODE existed, written out: the teacher on the same augmented batch, resized
    out = trainer.model(image)
    teacher = trainer.teacher(trainer.cfg.KD.BACKBONE_NAME)
    with torch.no_grad():
        big = F.interpolate(image, size=(48, 48), mode="bicubic", align_corners=False)
        feats = teacher.encode_image(big)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        target = out.logit_scale.detach().to(MASTER_DTYPE) * feats.to(MASTER_DTYPE) @ trainer.model.teacher_text.t()
    expected = distillation_loss(out.logits, target, trainer.cfg.KD.TEMPERATURE)
    assert torch.equal(loss, expected) and torch.equal(logits, out.logits)
