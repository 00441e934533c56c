"""Evaluation logits (and a training loss) of every method on a fixed tiny model, before and after a refactor.

    python -m tools.logits_probe save BEFORE.pt      # on the old code (run from the repository root)
    python -m tools.logits_probe compare BEFORE.pt   # on the new code: the largest differences per method

Every trainer is built through the project's config path on a fixed tiny ViT and a generated EuroSAT; the learned
parameters get fixed noise, are saved with the logits, and are loaded back on the new code, so the comparison
checks the forward pass and that checkpoints still load. CasPL's phase 2 reads the probe's own phase-1 prompts
and PromptKD its PromptSRC prompts as the teacher (both written from the saved states), so cascades and
distillation are compared too. A variant absent from the file (a method added since) is reported, not compared.
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import torch  # noqa: E402

from datasets.fixtures import make_fixture  # noqa: E402
from tiny_clip import write_tiny_checkpoint  # noqa: E402

KD = ["KD.N_CTX_TEXT", "2", "KD.N_CTX_VISION", "2", "KD.PROMPT_DEPTH_TEXT", "2", "KD.PROMPT_DEPTH_VISION", "2"]
SRC = ["TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3",
       "TRAINER.PROMPTSRC.GPA_MEAN", "1", "TRAINER.PROMPTSRC.GPA_STD", "1"]
#: variant -> (trainer, config folder, options); {boost}, {teacher}, {teacher_ckpt}, {ckpt} are filled in
V = {
    "MPL": ("MPL", "MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "3"]),
    "MPL_modular": ("MPL", "MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "4", "TRAINER.MPL.TEXT_MODE",
                                   "modular", "TRAINER.MPL.N_CTX", "2", "TRAINER.MPL.VISION_ADD", "[1, 0, 2]",
                                   "TRAINER.MPL.VISION_RM", "[2, 0, 1]"]),
    "MPL_indep": ("MPL", "MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "3", "TRAINER.MPL.COUPLING",
                                 "independent"]),
    "MaPLe": ("MaPLe", "MaPLe", ["TRAINER.MAPLE.PREC", "fp32", "TRAINER.MAPLE.PROMPT_DEPTH", "3"]),
    "CoOp": ("CoOp", "CoOp", ["TRAINER.COOP.PREC", "fp32"]),
    "CoOp_mid": ("CoOp", "CoOp", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4",
                                  "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"]),
    "CoOp_csc": ("CoOp", "CoOp", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4",
                                  "TRAINER.COOP.CSC", "True"]),
    "CoCoOp": ("CoCoOp", "CoCoOp", ["TRAINER.COCOOP.PREC", "fp32", "TRAINER.COCOOP.PROMPTS_PER_CHUNK", "10"]),
    "VPT": ("VPT", "VPT", ["TRAINER.VPT.PREC", "fp32", "TRAINER.VPT.PROMPT_DEPTH_VISION", "3"]),
    "IVLP": ("IVLP", "IVLP", ["TRAINER.IVLP.PREC", "fp32", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "3",
                              "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3"]),
    "PromptSRC": ("PromptSRC", "PromptSRC", ["TRAINER.PROMPTSRC.PREC", "fp32", *SRC]),
    "KgCoOp": ("KgCoOp", "KgCoOp", ["TRAINER.KGCOOP.PREC", "fp32"]),
    "ProGrad": ("ProGrad", "ProGrad", ["TRAINER.PROGRAD.PREC", "fp32"]),
    "TCP": ("TCP", "TCP", ["TRAINER.TCP.PREC", "fp32", "TRAINER.TCP.CLASS_TOKEN_LAYER", "2"]),
    "ZeroshotCLIP": ("ZeroshotCLIP", "CoOp", ["TRAINER.COOP.PREC", "fp32"]),
    "ZeroshotCLIP2": ("ZeroshotCLIP2", "CoOp", ["TRAINER.COOP.PREC", "fp32"]),
    "CasPL": ("CasPL", "CasPL", ["TRAINER.CASPL.PREC", "fp32", "KD.BACKBONE_NAME", "{teacher_ckpt}", *KD]),
    "CoOp+CasPL": ("CoOp", "CoOp", ["TRAINER.COOP.PREC", "fp32", "KD.BOOST_DIR", "{boost}", *KD]),
    "CoCoOp+CasPL": ("CoCoOp", "CoCoOp", ["TRAINER.COCOOP.PREC", "fp32", "KD.BOOST_DIR", "{boost}", *KD]),
    "MaPLe+CasPL": ("MaPLe", "MaPLe", ["TRAINER.MAPLE.PREC", "fp32", "TRAINER.MAPLE.PROMPT_DEPTH", "3",
                                       "KD.BOOST_DIR", "{boost}", *KD]),
    "PromptSRC+CasPL": ("PromptSRC", "PromptSRC", ["TRAINER.PROMPTSRC.PREC", "fp32", *SRC, "KD.BOOST_DIR", "{boost}",
                                                   *KD]),
    "MPL+CasPL": ("MPL", "MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "3", "KD.BOOST_DIR",
                                 "{boost}", *KD]),
    "PromptKD": ("PromptKD", "PromptKD", ["TRAINER.PROMPTKD.PREC", "fp32", "TRAINER.PROMPTKD.TEACHER_DIR", "{teacher}",
                                          "TRAINER.PROMPTKD.TEACHER_NAME", "{ckpt}", "TRAINER.PROMPTKD.N_CTX_TEXT", "4",
                                          "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "3"]),
    "MMA": ("MMA", "MMA", ["TRAINER.MMA.PREC", "fp32", "TRAINER.MMA.ADAPTER_START", "2", "TRAINER.MMA.ADAPTER_END", "4"]),
    "MMA+CasPL": ("MMA", "MMA", ["TRAINER.MMA.PREC", "fp32", "KD.BOOST_DIR", "{boost}", *KD]),
    "CLIPLoRA": ("CLIPLoRA", "CLIPLoRA", ["TRAINER.CLIPLORA.PREC", "fp32", "TRAINER.CLIPLORA.PARAMS",
                                          "['q', 'k', 'v', 'out_proj']"]),
    "MMRL": ("MMRL", "MMRL", ["TRAINER.MMRL.PREC", "fp32", "TRAINER.MMRL.REP_LAYERS", "[2, 3, 4]"]),
}
#: variants whose learned state is written out as a file that later variants read
WRITES = {"CasPL": "boost", "PromptSRC": "teacher"}


def make_trainer(argv):
    """A trainer from ``train.py``-style arguments, through the library API."""
    try:
        from trainers.api import build_cfg, build_trainer
    except ImportError:  # the code before the library API
        import train
        from dassl.engine import build_trainer

        train.collect_env_info = lambda: "(skipped)"
        return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))
    return build_trainer(build_cfg(argv))


def build(root, files, key):
    trainer_name, folder, opts = V[key]
    opts = [o.format(**files) for o in opts]
    argv = ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer_name,
            "--dataset-config-file", "configs/datasets/eurosat.yaml",
            "--config-file", f"configs/trainers/{folder}/tiny_digits.yaml", "--output-dir", str(root / key),
            "MODEL.BACKBONE.NAME", files["ckpt"], "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.NUM_SHOTS", "4", "USE_CUDA", "False", *opts]
    torch.manual_seed(0)
    return make_trainer(argv)


def training_loss(trainer, images, labels):
    """The training loss of one batch through the method's loss hook (either contract)."""
    if hasattr(trainer, "loss"):  # the contract's hook: loss(batch, output) -> LossOutput
        batch = {"img": images, "label": labels, "index": torch.arange(len(labels))}
        with trainer.precision.autocast(trainer.device):
            out = trainer.loss(batch, trainer.model(images))
        return float(out.loss)
    loss, _ = trainer.compute_loss(images, labels)
    return float(loss)


def main(mode, path):
    root = Path(tempfile.mkdtemp())
    make_fixture("eurosat", root / "data", n_per_class=4, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=4, transformer_layers=4)
    teacher_ckpt = write_tiny_checkpoint(root / "tiny-teacher.pt", kind="vit", seed=5, vision_layers=4,
                                         transformer_layers=4, transformer_width=128, vision_width=128)
    files = {"ckpt": str(ckpt), "teacher_ckpt": str(teacher_ckpt), "boost": str(root / "boost.pth.tar"),
             "teacher": str(root / "teacher.pth.tar")}
    g = torch.Generator().manual_seed(123)
    images = torch.randn(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 5]) % 10
    saved = torch.load(path, weights_only=False) if mode == "compare" else {}
    out, worst = {}, 0.0
    for key in V:
        if mode == "compare" and key not in saved:
            print(f"{key:16s} not in {path} (a variant added since): nothing to compare")
            continue
        tr = build(root, files, key)
        learner = getattr(getattr(tr, "model", None), "prompt_learner", None)
        if mode == "save":
            state = {}
            if learner is not None:
                gen = torch.Generator().manual_seed(7)
                with torch.no_grad():
                    for n, p in learner.named_parameters():
                        p.add_(torch.randn(p.shape, generator=gen) * 0.05)
                state = {k: v.clone() if torch.is_tensor(v) else v for k, v in learner.state_dict().items()}
        else:
            state = saved[key]["state"]
            if learner is not None:
                missing, unexpected = learner.load_state_dict(state, strict=False)
                assert not unexpected, (key, unexpected)
                assert not [m for m in missing if not m.startswith("class_prompts")
                            and not m.endswith("_extra_state")], (key, missing)
        if key in WRITES:
            tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
            torch.save({"state_dict": tensors, "epoch": 1}, files[WRITES[key]])
        if learner is not None:
            tr.set_model_mode("eval")
        with torch.no_grad():
            logits = tr.model_inference(images).float()
        loss = None
        if learner is not None:
            tr.set_model_mode("train")
            torch.manual_seed(5)
            with torch.no_grad():
                loss = training_loss(tr, images, labels)
        out[key] = {"state": state, "logits": logits, "loss": loss}
        if mode == "compare":
            ref = saved[key]["logits"]
            d = (logits - ref).abs().max().item()
            rel = d / ref.abs().max().clamp_min(1e-12).item()
            dl = abs(loss - saved[key]["loss"]) if loss is not None else 0.0
            worst = max(worst, rel)
            print(f"{key:16s} max|dlogits| {d:.3g} (relative {rel:.3g})   |dloss| {dl:.3g}")
    if mode == "save":
        torch.save(out, path)
        print("saved", list(out))
    else:
        print(f"largest relative logit difference: {worst:.3g}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
