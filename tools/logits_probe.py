"""Evaluation logits (and a training loss) of every method on a fixed tiny model, before and after a refactor.

    python -m tools.logits_probe save BEFORE.pt      # on the old code (run from the repository root)
    python -m tools.logits_probe compare BEFORE.pt   # on the new code: the largest differences per method

Every trainer is built through train.py's config path on a fixed tiny ViT and a generated EuroSAT; the prompt
parameters get fixed noise, are saved with the logits, and are loaded back on the new code, so the comparison
checks the forward pass and that checkpoints still load.
"""
import sys, os, tempfile
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import torch
import train
from dassl.engine import build_trainer
from datasets.fixtures import make_fixture
from tiny_clip import write_tiny_checkpoint

train.collect_env_info = lambda: "(skipped)"
V = {
 "MPL": ("MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "3"]),
 "MPL_modular": ("MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "4", "TRAINER.MPL.TEXT_MODE", "modular",
                 "TRAINER.MPL.N_CTX", "2", "TRAINER.MPL.VISION_ADD", "[1, 0, 2]", "TRAINER.MPL.VISION_RM", "[2, 0, 1]"]),
 "MPL_indep": ("MPL", ["TRAINER.MPL.PREC", "fp32", "TRAINER.MPL.PROMPT_DEPTH", "3", "TRAINER.MPL.COUPLING", "independent"]),
 "MaPLe": ("MaPLe", ["TRAINER.MAPLE.PREC", "fp32", "TRAINER.MAPLE.PROMPT_DEPTH", "3"]),
 "CoOp": ("CoOp", ["TRAINER.COOP.PREC", "fp32"]),
 "CoOp_mid": ("CoOp", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"]),
 "CoOp_csc": ("CoOp", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True"]),
 "CoCoOp": ("CoCoOp", ["TRAINER.COCOOP.PREC", "fp32", "TRAINER.COCOOP.PROMPTS_PER_CHUNK", "10"]),
 "VPT": ("VPT", ["TRAINER.VPT.PREC", "fp32", "TRAINER.VPT.PROMPT_DEPTH_VISION", "3"]),
 "IVLP": ("IVLP", ["TRAINER.IVLP.PREC", "fp32", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "3", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3"]),
 "PromptSRC": ("PromptSRC", ["TRAINER.PROMPTSRC.PREC", "fp32", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3",
                "TRAINER.PROMPTSRC.GPA_MEAN", "1", "TRAINER.PROMPTSRC.GPA_STD", "1"]),
 "KgCoOp": ("KgCoOp", ["TRAINER.KGCOOP.PREC", "fp32"]),
 "ProGrad": ("ProGrad", ["TRAINER.PROGRAD.PREC", "fp32"]),
 "TCP": ("TCP", ["TRAINER.TCP.PREC", "fp32", "TRAINER.TCP.CLASS_TOKEN_LAYER", "2"]),
 "ZeroshotCLIP": ("CoOp", ["TRAINER.COOP.PREC", "fp32"]),
}

def build(root, ckpt, key):
    folder, opts = V[key]
    trainer_name = "ZeroshotCLIP" if key == "ZeroshotCLIP" else folder
    argv = ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer_name,
            "--dataset-config-file", "configs/datasets/eurosat.yaml",
            "--config-file", f"configs/trainers/{folder}/tiny_digits.yaml", "--output-dir", str(root / key),
            "MODEL.BACKBONE.NAME", str(ckpt), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.NUM_SHOTS", "4", *opts]
    args = train.build_parser().parse_args(argv)
    cfg = train.setup_cfg(args)
    torch.manual_seed(0)
    return build_trainer(cfg)

def main(mode, path):
    root = __import__("pathlib").Path(tempfile.mkdtemp())
    make_fixture("eurosat", root / "data", n_per_class=4, image_size=32)
    ckpt = write_tiny_checkpoint(root / "tiny.pt", kind="vit", vision_layers=4, transformer_layers=4)
    g = torch.Generator().manual_seed(123)
    images = torch.randn(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 5]) % 10
    saved = torch.load(path) if mode == "compare" else {}
    out = {}
    for key in V:
        if mode == "compare" and key not in saved:
            print(f"{key:14s} not in {path} (a method added since): nothing to compare")
            continue
        tr = build(root, ckpt, key)
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
                assert not [m for m in missing if not m.startswith("class_prompts") and not m.endswith("_extra_state")], (key, missing)
        if learner is not None: tr.set_model_mode("eval")
        with torch.no_grad():
            logits = tr.model_inference(images).float()
        loss = None
        if learner is not None and hasattr(tr, "compute_loss"):
            tr.set_model_mode("train")
            torch.manual_seed(5)
            with torch.no_grad():
                loss, _ = tr.compute_loss(images, labels)
            loss = float(loss)
        out[key] = {"state": state, "logits": logits, "loss": loss}
        if mode == "compare":
            d = (logits - saved[key]["logits"]).abs().max().item()
            dl = abs(loss - saved[key]["loss"]) if loss is not None else 0.0
            print(f"{key:14s} max|dlogits| {d:.3g}   |dloss| {dl:.3g}")
    if mode == "save":
        torch.save(out, path); print("saved", list(out))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
