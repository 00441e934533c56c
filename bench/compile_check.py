"""``torch.compile`` and CUDA graphs on MPL's training and evaluation step: exactness against eager, speed ratio.

MPL (reference config, random weights) for ``--classes`` classes: the training step (forward, cross-entropy,
backward) and the evaluation step (a test batch with the text features cached) run eagerly, then with the
prompted CLIP compiled in place for each ``--modes`` entry (``trainers.config.COMPILE_STEPS``: ``eager`` traces
only, ``inductor`` generates kernels, ``cudagraphs`` is inductor with CUDA graphs); on CUDA also the evaluation
step captured by hand in one ``torch.cuda.CUDAGraph`` (``graph``). Each mode reports its compile time (first
calls), median step times (CUDA events on a GPU, process time on a CPU) as a ratio to eager, and the largest
logit and gradient differences against eager. A mode that fails is reported and the others still run.

    python -m bench.compile_check --device cuda --precision fp16 --json out.json
    python -m bench.compile_check --arch tiny --device cpu --modes eager          # plumbing, seconds
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from clip import MASTER_DTYPE  # noqa: E402
from trainers.config import COMPILE_STEPS  # noqa: E402
from trainers.mpl import MultiModalPromptLearner  # noqa: E402
from trainers.prompted_clip import PromptedCLIP  # noqa: E402

from bench.bench_mpl import TINY, classnames, reference_cfg  # noqa: E402
from bench.common import CudaTimer  # noqa: E402


def _time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            timer = CudaTimer()
            timer.start()
            fn()
            times.append(timer.stop())
        else:
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
    return statistics.median(times)


def build(args, device, precision):
    torch.manual_seed(0)
    model = clip.create_model(TINY if args.arch == "tiny" else args.arch)
    cfg = reference_cfg()
    if args.arch == "tiny":
        cfg.PROMPT_DEPTH = min(cfg.PROMPT_DEPTH, TINY["vision_layers"], TINY["transformer_layers"])
    net = PromptedCLIP(model, MultiModalPromptLearner(cfg, classnames(args.classes), model))
    precision.cast_model(net.clip_model)
    for p in net.clip_model.parameters():
        p.requires_grad_(False)
    return net.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default fp16 on CUDA, fp32 on a CPU")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=None,
                        help="of eager, inductor, cudagraphs, graph (default: all four on CUDA, eager on a CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = clip.resolve_precision(args.precision or ("fp16" if device.type == "cuda" else "fp32"), device)
    modes = args.modes or (["eager", "inductor", "cudagraphs", "graph"] if device.type == "cuda" else ["eager"])
    base = build(args, device, precision)
    res = base.clip_model.visual.input_resolution
    g = torch.Generator().manual_seed(1)
    image = torch.randn(args.batch, 3, res, res, generator=g).to(device)
    label = (torch.arange(args.batch) % args.classes).to(device)
    eval_image = torch.randn(args.eval_batch, 3, res, res, generator=g).to(device)

    def steps(net):
        def train_step():
            with precision.autocast(device):
                logits = net(image).logits
            F.cross_entropy(logits.to(MASTER_DTYPE), label).backward()
            grads = [p.grad.detach().clone() for p in net.prompt_learner.parameters() if p.grad is not None]
            net.prompt_learner.zero_grad(set_to_none=True)
            return logits.detach().to(MASTER_DTYPE), grads

        def eval_step():
            with torch.no_grad(), precision.autocast(device):
                return net(eval_image).logits.to(MASTER_DTYPE)
        return train_step, eval_step

    def cached(net, fn):
        def run():
            with net.frozen_text_features():
                return fn()
        return run

    print(f"{args.arch}, {device}, {precision}, {args.classes} classes, train batch {args.batch}, eval batch "
          f"{args.eval_batch}, median of {args.repeats}", flush=True)
    train_step, eval_step = steps(base)
    ref_logits, ref_grads = train_step()
    with base.frozen_text_features():
        ref_eval = eval_step()
        for _ in range(2):
            train_step(), eval_step()  # warm-up
        t_eval = _time(eval_step, device, args.repeats)
    for _ in range(2):
        train_step()
    t_train = _time(train_step, device, args.repeats)
    report = {"arch": args.arch, "device": str(device), "precision": str(precision), "classes": args.classes,
              "eager": {"train_s": t_train, "eval_s": t_eval}, "modes": {}}
    print(f"  eager: train {t_train * 1e3:.2f} ms, eval {t_eval * 1e3:.2f} ms", flush=True)

    for mode in modes:
        row = {"status": "ok"}
        try:
            net = copy.deepcopy(base)
            start = time.perf_counter()
            if mode == "graph":
                if device.type != "cuda":
                    raise RuntimeError("CUDA graphs need a GPU")
                row["train"] = "not captured by hand (the backward and the optimizer: see cudagraphs)"
                _, ev = steps(net)
                with net.frozen_text_features():
                    ev()  # the cached text features exist before capture
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(3):
                            ev()
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = ev()
                    graph.replay()
                    row["compile_s"] = time.perf_counter() - start
                    got_eval = static_out.clone()
                    t_eval_mode = _time(graph.replay, device, args.repeats)
                row["eval_ratio"] = t_eval_mode / t_eval
                row["eval_max_abs_diff"] = float((got_eval - ref_eval).abs().max())
            else:
                net.compile(**COMPILE_STEPS[mode])
                tr, ev = steps(net)
                logits, grads = tr()
                with net.frozen_text_features():
                    got_eval = ev()
                    ev()
                    row["compile_s"] = time.perf_counter() - start
                    t_eval_mode = _time(ev, device, args.repeats)
                tr()
                t_train_mode = _time(tr, device, args.repeats)
                row.update(train_ratio=t_train_mode / t_train, eval_ratio=t_eval_mode / t_eval,
                           train_logit_max_abs_diff=float((logits - ref_logits).abs().max()),
                           grad_max_abs_diff=max(float((a - b).abs().max()) for a, b in zip(grads, ref_grads)),
                           eval_max_abs_diff=float((got_eval - ref_eval).abs().max()))
            row["exact"] = all(v == 0 for k, v in row.items() if k.endswith("max_abs_diff"))
        except Exception as err:  # report, go on with the next mode
            row = {"status": f"FAIL {type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}",
                   "traceback": traceback.format_exc()[-3000:]}
        report["modes"][mode] = row
        print(f"  {mode}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in row.items() if k != "traceback"), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
