"""One method of each adaptation family at full size: its training step against the image-encoder floor.

Families: prompts (MPL), residual adapters (MMA), low-rank weight updates (CLIP-LoRA), representation tokens with a
second head (MMRL); ``--methods`` takes any registered trainer. Each method is built as ``train.py`` builds it (its
registration and its base-to-new reference config, random weights of ``--arch``, the CPU or ``--device``) for C
class names without a dataset, and one training step -- the method's forward, its own loss (regularisers and
frozen-CLIP terms included), backward -- is timed side by side with the floor: the same image encoder's forward and
backward with no prompts, no adapters and no text (see ``bench.bench_mpl``). Each step runs twice, with the text
side's shared-prefix encoding on (the default) and off, and the two steps' logits are compared: the speedup must
stay exact with the method's operations, or the method must switch it off itself (CLIP-LoRA does in training: its
dropout gives every class row its own mask, so both rows run the same path).

    python -m bench.bench_families                          # CPU, fp32, 5 and 500 classes
    python -m bench.bench_families --device cuda --precision fp16
    python -m bench.bench_families --methods MMA --classes 5 --repeats 0 --threads 1

Seconds and memory as in ``bench.bench_mpl`` (CPU time on a CPU, CUDA events on a GPU; medians of ``--repeats``
after the first call). Nothing is asserted; the last lines are the table the README quotes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clip import MASTER_DTYPE  # noqa: E402

from bench.bench_mpl import classnames, measure_group  # noqa: E402

METHODS = ("MPL", "MMA", "CLIPLoRA", "MMRL")


def build(method: str, backbone: str, resolution: int, tiny: bool, n: int, args, workdir: str):
    """The trainer of ``method`` for ``n`` class names, as train.py configures it (no dataset is read)."""
    import trainers
    from trainers.api import build_cfg

    from tools.selfcheck import _config_file

    registered = trainers.method_of(method)
    argv = ["--root", workdir, "--seed", "1", "--trainer", method,
            "--dataset-config-file", str(ROOT / "configs" / "datasets" / f"{args.dataset}.yaml"),
            "--config-file", _config_file(registered, tiny),
            "--output-dir", str(Path(workdir) / "out"), "MODEL.BACKBONE.NAME", backbone,
            "INPUT.SIZE", f"({resolution}, {resolution})", "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch),
            "DATASET.NUM_SHOTS", "16",
            "USE_CUDA", str(args.device.startswith("cuda")), f"TRAINER.{registered.block}.PREC", args.precision,
            "VERBOSE", "False"]
    torch.manual_seed(0)
    return registered.cls(build_cfg(argv), classnames=classnames(n))


def main(argv=None):
    from tools.selfcheck import make_backbone

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--arch", default="ViT-B/16", help="an architecture of clip.MODEL_CONFIGS, or tiny "
                                                           "(tools.selfcheck's 3-layer CLIP and the demo configs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: fp16 on CUDA, fp32 on a CPU")
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 500])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dataset", default="imagenet", help="whose per-dataset settings apply (MMRL's table)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=None, help="default 2 on CUDA, 0 on a CPU")
    parser.add_argument("--once-above", type=float, default=60.0, help="seconds above which a call runs once")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 0)
    clock = "GPU" if device.type == "cuda" else "CPU"
    print(f"{args.arch} random weights, {device}, {args.precision}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}", flush=True)

    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        spec = "tiny" if args.arch == "tiny" else f"random:{args.arch}"
        backbone, resolution, tiny = make_backbone(spec, workdir)
        for method in args.methods:
            for n in args.classes:
                trainer = build(method, backbone, resolution, tiny, n, args, workdir)
                model, clip_model = trainer.model, trainer.model.clip_model
                trainer.set_model_mode("train")
                torch.manual_seed(0)
                images = torch.randn(args.batch, 3, resolution, resolution, device=device)
                batch = {"img": images, "label": torch.randint(0, n, (args.batch,), device=device),
                         "index": torch.arange(args.batch), "impath": [""] * args.batch,
                         "domain": torch.zeros(args.batch, dtype=torch.long)}

                def floor():
                    x = images.clone().requires_grad_(True)
                    with trainer.precision.autocast(device):
                        out = clip_model.encode_image(x)
                    out.to(MASTER_DTYPE).sum().backward()

                def step(sharing):
                    def run():
                        clip_model.text_prefix_sharing = sharing
                        torch.manual_seed(1)  # the same dropout masks in both modes
                        with trainer.precision.autocast(device):
                            out = model(images)
                            loss = trainer.loss(batch, out).loss
                        loss.backward()
                        model.zero_grad(set_to_none=True)
                        return out.logits.detach().to(MASTER_DTYPE)
                    return run

                (t_floor, m_floor, _), (t_on, m_on, on), (t_off, m_off, off) = measure_group(
                    [floor, step(True), step(False)], device, args.repeats, args.once_above, warmup)
                clip_model.text_prefix_sharing = True
                diff = float((on - off).abs().max() / off.abs().max())
                rows[method, n] = dict(floor_s=t_floor, shared_s=t_on, unshared_s=t_off, floor_mib=m_floor,
                                       shared_mib=m_on, unshared_mib=m_off, relative_logit_difference=diff)
                print(f"  {method:9s} {n:4d} classes: floor {t_floor:7.3f} s, step {t_on:7.3f} s "
                      f"({t_on / t_floor:.2f}x), shared prefix off {t_off:7.3f} s ({t_off / t_floor:.2f}x); "
                      f"peak {m_on:.0f} / {m_off:.0f} MiB; logits differ by {diff:.1e}", flush=True)
                del trainer, model, clip_model

    print(f"\ntraining step / image-encoder floor ({args.arch}, {device.type} {clock} time, {args.precision}, "
          f"batch {args.batch})")
    print("| method | " + " | ".join(f"{n} classes | {n}, shared prefix off" for n in args.classes) + " |")
    print("|---|" + "---:|---:|" * len(args.classes))
    for method in args.methods:
        cells = [f"{rows[method, n]['shared_s'] / rows[method, n]['floor_s']:.2f} | "
                 f"{rows[method, n]['unshared_s'] / rows[method, n]['floor_s']:.2f}" for n in args.classes]
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "device": device.type, "precision": args.precision,
                                               "batch": args.batch, "rows": [dict(method=m, classes=n, **r)
                                                                             for (m, n), r in rows.items()]},
                                              indent=1))


if __name__ == "__main__":
    main()
