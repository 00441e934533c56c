"""CasPL phase 2 on every method: the fork's configs, the scripts' default configs, the boosting sizes and depth
checked between the phases, and every combination through ``scripts/caspl/run.sh`` (``shared/reference/caspl.md``
A3, A7)."""
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

import clip
import trainers
from datasets.fixtures import make_fixture
from tools import method_defaults
from trainers.compat import UserError
from trainers.prompts import DeepPrompts

from tiny_clip import write_tiny_checkpoint
from trainers.api import build_cfg

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "scripts/caspl/run.sh"
BOOSTING_8_8_L12 = 12 * 8 * 768 + 12 * 8 * 512  # 122,880 (A4)


def setup_cfg(trainer, config, out, opts=(), check=False):
    """The fork's config as the files say (``check``: as a run would check it, which needs its boosting run)."""
    return build_cfg(
        ["--trainer", trainer, "--config-file", str(REPO / "configs/trainers" / trainer / f"{config}.yaml"),
         "--output-dir", str(out), *opts], check=check)


# ---------------------------------------------------------------------------------------------------------
# The fork's configs: hyperparameters and learnable parameters at ViT-B/16 (meta device)
# ---------------------------------------------------------------------------------------------------------
# trainer, config, (lr, epochs, batch), method prompt (tokens, depth) or None, GPA or None, (KD tokens, KD depth)
FORK_CONFIGS = [
    ("CasPL", "vit_b16_c2_ep20_batch4_8+8ctx_l12", (0.0025, 20, 4), None, None, (8, 12)),
    ("CasPL", "vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12", (0.0025, 20, 128), None, None, (8, 12)),
    ("CasPL", "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1", (0.0025, 20, 128), None, None, (4, 1)),
    ("PromptSRC", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12", (0.0025, 20, 4), (8, 12), (15, 1), (8, 12)),
    ("PromptSRC", "caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12", (0.0025, 50, 4), (8, 12), (45, 5), (8, 12)),
    ("PromptSRC", "caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12_gpa30", (0.0025, 50, 4), (8, 12), (30, 30),
     (8, 12)),
    ("PromptSRC", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3", (0.0025, 20, 4), (8, 3), (6, 10), (4, 1)),
    ("MaPLe", "caspl_vit_b16_c8_ep5_batch4_8ctx_l12", (0.0035, 5, 4), (8, 12), None, (8, 12)),
    ("CoOp", "caspl_vit_b16_ep50", (0.002, 50, 32), (8, None), None, (8, 12)),
    ("CoCoOp", "caspl_vit_b16_c8_ep10_batch1", (0.002, 10, 1), (8, None), None, (8, 12)),
]


@pytest.fixture(scope="module")
def meta_vit_b16():
    with torch.device("meta"):
        return clip.create_model("ViT-B/16", device="meta")


def method_prompt(trainer, m):
    """(tokens, depth) of a method block, as the fork names them in its config file names."""
    if trainer == "PromptSRC":
        assert m.N_CTX_TEXT == m.N_CTX_VISION and m.PROMPT_DEPTH_TEXT == m.PROMPT_DEPTH_VISION
        return m.N_CTX_TEXT, m.PROMPT_DEPTH_TEXT
    if trainer == "MaPLe":
        return m.N_CTX, m.PROMPT_DEPTH
    assert m.CTX_INIT == ""  # random context (CoOp, CoCoOp)
    return m.N_CTX, None


@pytest.mark.parametrize("trainer,config,optim,prompt,gpa,kd", FORK_CONFIGS, ids=lambda v: str(v))
def test_fork_configs_hyperparameters_and_counts_at_vit_b16(meta_vit_b16, trainer, config, optim, prompt, gpa, kd,
                                                            tmp_path):
    text = (REPO / "configs/trainers" / trainer / f"{config}.yaml").read_text()
    assert "the fork's" in text.splitlines()[0] + text.splitlines()[1]  # the header names the fork's file
    cfg = setup_cfg(trainer, config, tmp_path)
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == optim
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"
    assert (cfg.KD.N_CTX_TEXT, cfg.KD.N_CTX_VISION, cfg.KD.PROMPT_DEPTH_TEXT, cfg.KD.PROMPT_DEPTH_VISION) == (
        kd[0], kd[0], kd[1], kd[1])
    method = trainers.method_of(trainer)
    if prompt is not None:
        assert method_prompt(trainer, cfg.TRAINER[method.block]) == prompt
    if gpa is not None:
        assert (cfg.TRAINER.PROMPTSRC.GPA_MEAN, cfg.TRAINER.PROMPTSRC.GPA_STD) == gpa
    # its learnable count is registered (and checked on ViT-B/16 by tests/test_contract.py)
    assert (trainer, config) in {(m, c.config) for m, c in trainers.all_counts()}
    # the boosting set phase 2 builds beside it (from the config's KD block, which run.sh sets from phase 1)
    boost = DeepPrompts(meta_vit_b16, n_text=cfg.KD.N_CTX_TEXT, depth_text=cfg.KD.PROMPT_DEPTH_TEXT,
                        n_vision=cfg.KD.N_CTX_VISION, depth_vision=cfg.KD.PROMPT_DEPTH_VISION, key="KD")
    assert sum(p.numel() for p in boost.parameters()) == (BOOSTING_8_8_L12 if kd == (8, 12) else 5_120)


# ---------------------------------------------------------------------------------------------------------
# The scripts' default configs (tools/method_defaults.py, VARIANT=caspl)
# ---------------------------------------------------------------------------------------------------------
def cfg_of(method, protocol, dataset="", shots="", caspl=True):
    env = method_defaults.defaults(method, protocol, dataset, shots, "caspl" if caspl else "")
    key = {"base2new_train": "CFG_B2N", "base2new_test": "CFG_B2N", "xd_train": "CFG_XD", "xd_test": "CFG_XD",
           "dg_test": "CFG_XD", "fewshot_train": "CFG_FS"}[protocol]
    return env.get("CFG") or env[key]


FEW_SHOT = "caspl_vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12"


@pytest.mark.parametrize("method,protocol,dataset,expected", [
    ("PromptSRC", "base2new_train", "eurosat", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12"),
    ("PromptSRC", "base2new_test", "imagenet", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12"),
    ("PromptSRC", "xd_train", "", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3"),
    ("PromptSRC", "dg_test", "imagenet_r", "caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3"),
    *[("PromptSRC", "fewshot_train", d, FEW_SHOT + "_gpa30")
      for d in ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397")],
    *[("PromptSRC", "fewshot_train", d, FEW_SHOT)
      for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")],
    ("MaPLe", "base2new_train", "dtd", "caspl_vit_b16_c8_ep5_batch4_8ctx_l12"),
    ("MaPLe", "xd_train", "", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"),  # no fork config: the usual one
    ("MaPLe", "fewshot_train", "dtd", "vit_b16_c2_ep5_batch4_2ctx"),
    ("CoOp", "base2new_train", "imagenet", "caspl_vit_b16_ep50"),  # not CoOp's own base2new@imagenet
    ("CoOp", "fewshot_train", "imagenet", "vit_b16_ep50"),  # CoOp's own few-shot keys stay
    ("CoCoOp", "base2new_train", "eurosat", "caspl_vit_b16_c8_ep10_batch1"),
    ("CoCoOp", "xd_train", "", "vit_b16_c4_ep10_batch1_ctxv1"),
    ("MPL", "base2new_train", "eurosat", "vit_b4_c1_add2_rm1"),
    ("IVLP", "base2new_train", "eurosat", "vit_b16_c2_ep5_batch4_2+2ctx"),
    ("VPT", "fewshot_train", "eurosat", "vit_b16_c2_ep5_batch4_4"),
    ("ProGrad", "fewshot_train", "dtd", "vit_b16_lambda0.8"),  # per-shots keys of a method without CasPL configs
])
def test_caspl_configs_are_the_scripts_defaults(method, protocol, dataset, expected):
    assert cfg_of(method, protocol, dataset, "16") == expected


FEW_SHOT_PLAIN = "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"


def test_without_caspl_the_usual_configs_stay():
    assert cfg_of("PromptSRC", "fewshot_train", "imagenet", caspl=False) == "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"
    # plain PromptSRC's few-shot GPA is (45, 5) on the reference script's five datasets, (30, 30) elsewhere
    for dataset in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"):
        assert cfg_of("PromptSRC", "fewshot_train", dataset, caspl=False) == FEW_SHOT_PLAIN + "_gpa45"
    for name, gpa in ((FEW_SHOT_PLAIN, (30, 30)), (FEW_SHOT_PLAIN + "_gpa45", (45, 5))):
        with open(REPO / "configs/trainers/PromptSRC" / f"{name}.yaml") as f:
            c = yaml.safe_load(f)["TRAINER"]["PROMPTSRC"]
        assert (c["GPA_MEAN"], c["GPA_STD"]) == gpa
    assert cfg_of("CoOp", "base2new_train", "imagenet", caspl=False) == "vit_b16_ep50_ctxv1"
    assert cfg_of("MaPLe", "base2new_train", "dtd", caspl=False) == "vit_b16_c2_ep5_batch4_2ctx"


def test_caspl_environment_and_cfg_overrides(monkeypatch, capsys):
    def printed(*args):
        assert method_defaults.main(list(args)) == 0
        return capsys.readouterr().out

    for var in ("CFG", "CFG_B2N", "CFG_XD", "CFG_FS", "CFG_DIGITS", "CFG_DIR", "TRAINER", "CASPL", "VARIANT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHECK_DATA", "0")  # the configs only (no dataset here)
    assert "CFG_B2N=vit_b16_c2_ep5_batch4_2ctx;" in printed("maple", "base2new_train", "dtd")
    monkeypatch.setenv("CASPL", "1")
    assert "CFG_B2N=caspl_vit_b16_c8_ep5_batch4_8ctx_l12;" in printed("maple", "base2new_train", "dtd")
    monkeypatch.setenv("CFG_B2N", "mine")
    assert "CFG_B2N=mine;" in printed("maple", "base2new_train", "dtd")  # the environment still wins
    monkeypatch.setenv("CFG", "theirs")
    assert "CFG=theirs;" in printed("promptsrc", "fewshot_train", "imagenet", "4")


@pytest.mark.parametrize("args,folder", [
    ("base2new_train eurosat 1", "eurosat/CasPL/vit_b16_c2_ep20_batch4_8+8ctx_l12"),
    ("base2new_test imagenet 1", "imagenet/CasPL/vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12"),
    ("fewshot_train imagenet 1 4", "imagenet/CasPL/vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12"),  # base2new's run
    ("fewshot_train dtd 1 4", "dtd/CasPL/vit_b16_c2_ep20_batch4_8+8ctx_l12"),
    ("xd_train 1", "imagenet/CasPL/vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"),
    ("xd_test caltech101 1", "imagenet/CasPL/vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"),
    ("dg_test imagenet_sketch 1", "imagenet/CasPL/vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"),
    ("base2new_train digits 1", "digits/CasPL/tiny_digits"),
])
def test_phase1_config_chosen_by_run_sh(args, folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("BOOST_CFG", "BOOST_SEED", "INDUCTIVE", "SOURCE")}
    done = subprocess.run(["bash", str(RUN), "where", *args.split()], env=dict(env, OUTPUT=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path}/caspl/boost/{folder}/seed1"


# ---------------------------------------------------------------------------------------------------------
# Every phase-2 combination through scripts/caspl/run.sh, on a generated dataset and tiny CLIPs
# ---------------------------------------------------------------------------------------------------------
SMALL = ["INPUT.SIZE", "(32,32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
         "DATALOADER.TEST.BATCH_SIZE", "50", "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0"]
#: phase 1's boosting prompts: 2 + 2 tokens, depths 2 (text) and 3 (vision), which phase 2 must take from its run
BOOST_KD = ["KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "3"]
#: the shipped ViT-B/16 configs at the tiny student's 3 layers
DEPTH3 = {
    "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3"],
    "MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", "3"],
    "CoOp": [],
    "CoCoOp": [],
    "IVLP": ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "3"],
    "VPT": ["TRAINER.VPT.PROMPT_DEPTH_VISION", "3"],
    "MPL": ["TRAINER.MPL.PROMPT_DEPTH", "3"],
}
#: the config each method's base-to-new run gets from the scripts under CasPL
B2N = {"PromptSRC": "caspl_vit_b16_c2_ep20_batch4_8+8ctx_l12", "MaPLe": "caspl_vit_b16_c8_ep5_batch4_8ctx_l12",
       "CoOp": "caspl_vit_b16_ep50", "CoCoOp": "caspl_vit_b16_c8_ep10_batch1", "IVLP": "vit_b16_c2_ep5_batch4_2+2ctx",
       "VPT": "vit_b16_c2_ep5_batch4_4", "MPL": "vit_b4_c1_add2_rm1"}
PHASE1 = "vit_b16_c2_ep20_batch4_8+8ctx_l12"
PHASE1_XD = "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1"


@pytest.fixture(scope="module")
def scripts_env(tmp_path_factory):
    """Generated EuroSAT and DTD, a tiny 3-layer student, a wider teacher, and the shared phase-1 run (made with
    CasPL's default config for EuroSAT, shrunk by BOOST_OPTS)."""
    root = tmp_path_factory.mktemp("caspl_phase2")
    make_fixture("eurosat", root / "data", n_per_class=3, image_size=32)
    make_fixture("dtd", root / "data", n_per_class=2, n_classes=6, image_size=32)
    student = write_tiny_checkpoint(root / "student.pt", kind="vit", vision_layers=3, transformer_layers=3)
    teacher = write_tiny_checkpoint(root / "teacher.pt", kind="vit", seed=3, vision_width=128,
                                    transformer_width=128, embed_dim=48)
    small = [*SMALL, "MODEL.BACKBONE.NAME", str(student)]
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("CFG") and k not in ("BOOST_CFG", "BOOST_SEED", "INDUCTIVE", "SOURCE", "CASPL")}
    # tiny models: one thread per process (threads that wait for a busy core spin, ~100x slower per step here)
    environ.update(DATA=str(root / "data"), OUTPUT=str(root / "out"), SHOTS="2",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   BOOST_OPTS=" ".join([*small, "KD.BACKBONE_NAME", str(teacher), *BOOST_KD,
                                        "TRAINER.CASPL.PREC", "fp32"]))
    run_sh(environ, "boost", "eurosat")
    return root, small, environ


def run_sh(environ, *args, expect=0, **extra_env):
    done = subprocess.run(["bash", str(RUN), *args], env=dict(environ, **extra_env), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == expect, f"run.sh {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def result_of(folder):
    return json.loads((folder / "result.json").read_text())


#: run.sh end to end for PromptSRC on every protocol; every other method is composed with a frozen boosting set
#: in-process (tests/test_contract.py) and gets its CasPL configs from the scripts' defaults (above)


@pytest.mark.slow
def test_every_protocol_through_run_sh_with_the_boosting_run(scripts_env):
    """Base-to-new for PromptSRC beside one phase-1 run (and its new classes), cross-dataset (phase 1 made on the
    source with the xd config, then xd_test on another dataset) and few-shot, all through scripts/caspl/run.sh
    with the scripts' CasPL configs; two runs at a time."""
    root, small, environ = scripts_env
    out = root / "out"

    def job(calls):
        return [run_sh(environ, *args, **env) for args, env in calls]

    psrc = ["--", *small, *DEPTH3["PromptSRC"]]
    jobs = [[(("PromptSRC", "base2new_train", "eurosat", "1", *psrc), {}),
             (("PromptSRC", "base2new_test", "eurosat", "1", *psrc), {})],
            [(("PromptSRC", "xd_train", "eurosat", "1", "--", *small), {}),
             (("PromptSRC", "xd_test", "dtd", "1", "--", *small), {"SOURCE": "eurosat"})],
            [(("PromptSRC", "fewshot_train", "eurosat", "1", "2", *psrc), {})]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(job, jobs))

    boost = out / "caspl/boost/eurosat/CasPL" / PHASE1 / "seed1"
    boost_ckpt = str(boost / "BoostingPrompts" / "model.pth.tar-1")
    assert result_of(boost)["caspl"]["boost"] == {"N_CTX_TEXT": 2, "N_CTX_VISION": 2, "PROMPT_DEPTH_TEXT": 2,
                                                  "PROMPT_DEPTH_VISION": 3}
    tag = out / "caspl" / PHASE1
    result = result_of(tag / "base2new/train_base/eurosat/shots_2/PromptSRC" / B2N["PromptSRC"] / "seed1")
    assert result["cascade"]["boosting_run"] == boost_ckpt
    assert result["subsample"] == "base" and result["num_test"] > 0
    new = result_of(tag / "base2new/test_new/eurosat/shots_2/PromptSRC" / B2N["PromptSRC"] / "seed1")
    assert new["subsample"] == "new" and new["cascade"]["boosting_run"] == boost_ckpt  # the same boosting prompts
    few = result_of(tag / "fewshot/eurosat/shots_2/PromptSRC" / FEW_SHOT / "seed1")  # GPA (45, 5) on EuroSAT
    assert few["cascade"]["boosting_run"] == boost_ckpt  # the base-to-new phase-1 run

    xd_boost = out / "caspl/boost/eurosat/CasPL" / PHASE1_XD / "seed1"
    xd_cfg = "caspl_vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3"
    xd_tag = out / "caspl" / PHASE1_XD / "crossdataset"
    trained = result_of(xd_tag / "eurosat/PromptSRC" / f"{xd_cfg}_2shots/seed1")
    tested = result_of(xd_tag / "evaluation/dtd/PromptSRC" / f"{xd_cfg}_2shots/seed1")
    assert trained["cascade"] == tested["cascade"]
    assert trained["cascade"]["boosting_run"] == str(xd_boost / "BoostingPrompts" / "model.pth.tar-1")
    assert tested["num_classes"] == 6


@pytest.mark.slow
def test_run_sh_refuses_a_test_without_the_phase1_run(scripts_env):
    _, small, environ = scripts_env
    done = run_sh(environ, "CoOp", "xd_test", "dtd", "1", "--", *small, expect=1, SOURCE="dtd")
    assert "no CasPL phase-1 run at" in done.stderr and "caspl/boost/dtd/CasPL" in done.stderr


# ---------------------------------------------------------------------------------------------------------
# Sizes and depths checked between the phases
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["PromptSRC", "MaPLe", "CoOp"])
@pytest.mark.parametrize("key,value,message", [
    ("KD.PROMPT_DEPTH_VISION", "2", "KD.PROMPT_DEPTH_VISION is 3 there but 2 here"),
    ("KD.PROMPT_DEPTH_TEXT", "3", "KD.PROMPT_DEPTH_TEXT is 2 there but 3 here"),
    ("KD.N_CTX_VISION", "4", "KD.N_CTX_VISION is 2 there but 4 here"),
])
def test_boosting_size_or_depth_other_than_phase1_is_one_error_naming_both(scripts_env, method, key, value, message,
                                                                          tmp_path):
    root, small, _ = scripts_env
    boost = root / "out/caspl/boost/eurosat/CasPL" / PHASE1 / "seed1"
    kd = dict(zip(BOOST_KD[::2], BOOST_KD[1::2]), **{key: value})
    opts = ["--root", str(root / "data"), "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
            *small, *DEPTH3[method], "KD.BOOST_DIR", str(boost), *[x for kv in kd.items() for x in kv]]
    cfg = setup_cfg(method, B2N[method], tmp_path, opts)
    with pytest.raises(UserError) as err:
        trainers.method_of(method).cls(cfg)
    text = str(err.value)
    assert message in text and text.count(" there but ") >= 1 and str(boost) in text
    # phase 1's values (what run.sh passes from its result.json) build
    cfg = setup_cfg(method, B2N[method], tmp_path / "ok", [*opts, *BOOST_KD])
    assert trainers.method_of(method).cls(cfg).model.frozen_sets["boost"] is not None
