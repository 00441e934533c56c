"""Self-check of every method in every precision, in one line: ``python -m tools.selfcheck``.

For each registered method and each precision (fp32, bf16, fp16, amp) it builds the trainer through
the library's config path (``trainers.api``) (the method's reference config, a generated EuroSAT in the real layout), runs a few
training steps and one evaluation, and prints one table: status, loss, training and evaluation speed, peak memory
and the largest logit difference against fp32 on the same prompts. Meant for a GPU machine, where the references'
users run fp16; it needs no network and no dataset:

    python -m tools.selfcheck                                  # CUDA if available; random ViT-B/16 weights
    python -m tools.selfcheck --backbone ViT-B/16              # the released weights (downloaded or cached)
    python -m tools.selfcheck --methods MPL CoOp --precisions fp16 amp --steps 20
    python -m tools.selfcheck --device cpu --backbone tiny --cpu-half   # a minute on a CPU, fp16 executed

``--backbone random:<arch>`` (default ``random:ViT-B/16``) builds the architecture with random weights: dtypes,
speed and memory are those of the real model, accuracies are meaningless. ``tiny`` is a 3-layer CLIP for CPUs.
Exit status 0 when every row passed, 1 otherwise. Peak memory is the CUDA allocator's (``-`` on a CPU).

Tolerances (:data:`TOLERANCE`). Every row's evaluation logits are also compared with an fp64 computation of the
same method on the same weights and images (:func:`fp64_logits`): the largest absolute difference relative to the
largest fp64 logit. A row beyond its precision's tolerance fails. The tolerances follow from the rounding unit of
each format: fp16 keeps 11 significant bits (2^-11 = 0.05% per operation), bf16 8 (2^-8 = 0.4%, 8x fp16's), and
the error grows with the depth of the encoders and the logit scale (100 x a cosine). On an H200 with random
ViT-B/16 weights the differences against fp32 were at most 0.99% (fp16), 0.75% (amp) and 8.2% (bf16, MPL), so fp16
and amp get 2%, and bf16 8x that. A bf16 error some 8-16x the same method's fp16 error is rounding (tiny CLIP on
a CPU: MPL 2.1% against 0.17%, TCP 2.2% against 0.22%); a bf16 error far beyond that, with fp16 fine, would be a
lost fp32 accumulation (``bench.gpu_check`` reports the ratio per method). fp32 gets 0.5%: on GPUs
cuDNN runs fp32 convolutions (the patch embedding) in TF32 by default, 11 significant bits like fp16.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import sys
import tempfile
import time
import traceback

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRECISIONS = ("fp32", "bf16", "fp16", "amp")
#: largest evaluation-logit difference against fp64 on the same weights, relative to the largest fp64 logit
TOLERANCE = {"fp32": 0.005, "fp16": 0.02, "amp": 0.02, "bf16": 0.16}

#: the 3-layer CLIP of ``--backbone tiny`` (OpenAI's architecture, small widths)
TINY = dict(embed_dim=32, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.selfcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="random:ViT-B/16",
                   help="random:<arch>, tiny, or a CLIP model name or checkpoint path")
    p.add_argument("--methods", nargs="+", help="trainer names (default: every registered method)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per row (after one warm-up step)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cpu-half", action="store_true", help="on a CPU, run fp16 and amp for real (CPU_HALF)")
    p.add_argument("--workdir", help="where the generated data and backbone go (default: a temporary folder)")
    p.add_argument("--json", help="also write the rows (with their fp64 differences) to this JSON file")
    return p


def make_backbone(spec, workdir):
    """``(MODEL.BACKBONE.NAME value, input resolution, tiny?)`` for a ``--backbone`` value."""
    import clip
    from clip.configs import model_config

    if spec == "tiny" or spec.startswith("random:"):
        cfg = dict(TINY) if spec == "tiny" else model_config(spec[len("random:"):])
        torch.manual_seed(0)
        model = clip.CLIP(**cfg)
        path = osp.join(workdir, "backbone-{}.pt".format(spec.replace("/", "-").replace(":", "-")))
        torch.save(model.state_dict(), path)
        return path, cfg["image_resolution"], spec == "tiny"
    model, _ = clip.load(spec, device="cpu", precision="fp32")  # checks the name or file before the rows start
    return spec, model.visual.input_resolution, False


def _config_file(method, tiny):
    """The method's demo config on the tiny backbone, else its base-to-new reference config (by its registration)."""
    name = "tiny_digits" if tiny else method.scripts.get("base2new", "tiny_digits")
    return method.config_path(name)


def build(method, prec, backbone, resolution, tiny, data_root, out_dir, args):
    import trainers
    from trainers.api import build_cfg, build_trainer

    from tools.earlier_runs import earlier_run_opts

    registered = trainers.method_of(method)
    head = ["--root", data_root, "--seed", "1", "--dataset-config-file",
            osp.join(REPO, "configs", "datasets", "eurosat.yaml")]
    data = ["INPUT.SIZE", "({0}, {0})".format(resolution), "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch_size), "DATALOADER.TEST.BATCH_SIZE", "10",
            "USE_CUDA", str(args.device.startswith("cuda"))]
    earlier = earlier_run_opts(method, (head, data), backbone, osp.dirname(out_dir))  # e.g. PromptKD's teacher
    argv = [*head, "--trainer", method, "--config-file", _config_file(registered, tiny), "--output-dir", out_dir,
            "MODEL.BACKBONE.NAME", backbone, *data, *earlier, f"TRAINER.{registered.block}.PREC", prec,
            "CPU_HALF", str(bool(args.cpu_half)), "VERBOSE", "False"]
    return build_trainer(build_cfg(argv))


def _master_modules():
    """Loaded modules of this project that name the master dtype (``MASTER_DTYPE``), by module."""
    return [m for name, m in list(sys.modules.items())
            if name.split(".")[0] in ("clip", "trainers") and getattr(m, "MASTER_DTYPE", None) is torch.float32]


def fp64_logits(trainer, images: torch.Tensor) -> torch.Tensor:
    """The trainer's evaluation logits computed in float64 on its own weights (returned as float64).

    The model (every parameter and buffer), the trainer's floating tensors (e.g. cached text features) and the
    project's master dtype are switched to float64 for this call and restored afterwards (float32 -> float64 ->
    float32 is exact). Meant for a trainer built in fp32: its weights are the ones every precision rounds.
    """
    model = getattr(trainer, "model", None) or trainer.clip_model
    tensors = {k: v for k, v in vars(trainer).items() if torch.is_tensor(v) and v.dtype == torch.float32}
    modules = _master_modules()
    was_training = model.training
    try:
        model.double()
        for k, v in tensors.items():
            setattr(trainer, k, v.double())
        for m in modules:
            m.MASTER_DTYPE = torch.float64
        model.eval()
        with torch.no_grad():
            out = trainer.model_inference(images.double())
        return out.double()
    finally:
        for m in modules:
            m.MASTER_DTYPE = torch.float32
        model.float()
        model.train(was_training)
        for k, v in tensors.items():
            setattr(trainer, k, v)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def check(method, prec, ctx, args, reference_logits):
    """One row of the table (a dict)."""
    import contextlib
    import io

    row = {"method": method, "precision": prec, "status": "ok", "loss": None, "train_img_s": None,
           "eval_img_s": None, "peak_mib": None, "logit_diff": None, "fp64_diff": None,
           "tolerance": TOLERANCE[prec]}
    cuda = args.device.startswith("cuda")
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = build(method, prec, *ctx, args)
            row["precision"] = str(trainer.precision)
            images = next(iter(trainer.test_loader))["img"][:8].to(trainer.device)
            trainer.set_model_mode("eval")
            with torch.no_grad():
                logits = trainer.model_inference(images).cpu()
            if prec == "fp32":
                reference_logits[method] = logits
                reference_logits[method, "fp64"] = fp64_logits(trainer, images).cpu()
            elif method in reference_logits:
                ref = reference_logits[method]
                row["logit_diff"] = ((logits - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
            if not torch.isfinite(logits).all():
                raise FloatingPointError("non-finite evaluation logits")
            if (method, "fp64") in reference_logits:
                ref = reference_logits[method, "fp64"]
                row["fp64_diff"] = ((logits.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
            if trainer.get_model_names():
                trainer.set_model_mode("train")
                batches = iter(trainer.train_loader_x)
                trainer.num_batches = len(trainer.train_loader_x) + args.steps + 1  # no scheduler step here
                losses, seen, elapsed = [], 0, 0.0
                for i in range(args.steps + 1):
                    try:
                        batch = next(batches)
                    except StopIteration:
                        batches = iter(trainer.train_loader_x)
                        batch = next(batches)
                    trainer.batch_idx = i
                    _sync(args.device)
                    start = time.perf_counter()
                    summary = trainer.forward_backward(batch)
                    _sync(args.device)
                    if i > 0:  # the first step warms up
                        elapsed += time.perf_counter() - start
                        seen += batch["img"].shape[0]
                    losses.append(summary["loss"])
                if not all(math.isfinite(x) for x in losses):
                    raise FloatingPointError("non-finite training loss {}".format(losses))
                row["loss"] = losses[-1]
                row["train_img_s"] = seen / elapsed if elapsed > 0 else None
            _sync(args.device)
            start = time.perf_counter()
            trainer.test()
            _sync(args.device)
            n = trainer.last_evaluation["num_images"] if getattr(trainer, "last_evaluation", None) else 0
            row["eval_img_s"] = n / (time.perf_counter() - start)
        if cuda:
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if row["fp64_diff"] is not None and row["fp64_diff"] > row["tolerance"]:
            row["status"] = "FAIL beyond tolerance"
    except Exception as err:  # report and go on with the next row
        text = str(err).strip().splitlines()
        row["status"] = "FAIL {}: {}".format(type(err).__name__, text[0][:120] if text else "")
        row["traceback"] = traceback.format_exc()
    return row


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows):
    lines = ["| method | precision | status | loss | train img/s | eval img/s | peak MiB | logit diff vs fp32 "
             "| vs fp64 | tolerance |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["method"], r["precision"], r["status"], _fmt(r["loss"], ".4f"), _fmt(r["train_img_s"], ".1f"),
            _fmt(r["eval_img_s"], ".1f"), _fmt(r["peak_mib"], ",.0f"), _fmt(r["logit_diff"], ".2%"),
            _fmt(r.get("fp64_diff"), ".2e"), _fmt(r.get("tolerance"), ".1%")))
    return "\n".join(lines)


def _write_json(path, device, args, rows):
    with open(path, "w") as f:
        json.dump({"device": device, "backbone": args.backbone, "torch": torch.__version__, "tolerance": TOLERANCE,
                   "rows": [{k: v for k, v in r.items() if k != "traceback"} for r in rows]}, f, indent=2)


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.path.insert(0, REPO)
    import trainers
    from datasets.fixtures import make_fixture

    registered = [m.name for m in trainers.list_methods()]
    methods = args.methods or registered
    unknown = [m for m in methods if m not in registered]
    if unknown:
        print("error: unknown methods {}; registered: {}".format(unknown, registered), file=sys.stderr)
        return 2
    precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]  # fp32 first: the logits reference
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        backbone, resolution, tiny = make_backbone(args.backbone, workdir)
        make_fixture("eurosat", osp.join(workdir, "data"), n_per_class=4, image_size=resolution)
        ctx = (backbone, resolution, tiny, osp.join(workdir, "data"), osp.join(workdir, "out"))
        device = args.device
        if device.startswith("cuda"):
            device += " ({})".format(torch.cuda.get_device_name(torch.device(args.device)))
        print("Self-check on {}, backbone {}, torch {}, {} steps of batch {}".format(
            device, args.backbone, torch.__version__, args.steps, args.batch_size), flush=True)
        rows, reference = [], {}
        for method in methods:
            for prec in precisions:
                row = check(method, prec, ctx, args, reference)
                if prec == "fp32" and "fp32" not in args.precisions:
                    continue
                rows.append(row)
                print("  {} {}: {}".format(method, prec, row["status"]), file=sys.stderr, flush=True)
                if args.json:  # after every row: a run stopped early keeps what it checked
                    _write_json(args.json, device, args, rows)
    print(table(rows))
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print("\n{} {}:\n{}".format(r["method"], r["precision"], r.get("traceback", "")), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
