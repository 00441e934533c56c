"""The teacher's cost in CasPL's phase 1: ``KD.TEACHER_MODE online`` against ``cached``, as ratios to a floor.

Student and teacher have the shapes of the released models (default ViT-B/16 and ViT-L/14) with random weights
(built from the model configs, nothing downloaded). The student carries CasPL's boosting prompts (8 + 8 tokens,
depth 12) over ``--classes`` plain class prompts, fp32. One run measures:

* ``floor``: the student's own training step -- forward with the boosting prompts, KL to fixed target logits,
  backward -- with no teacher at all;
* ``online``: a phase-1 step as the fork runs it: the same, plus the teacher's image encoder on the batch
  (``KD.TEACHER_MODE online``, the default);
* ``cached``: a phase-1 step with the teacher's features read from the cache (``KD.TEACHER_MODE cached``): the
  student step plus a row gather and one small matmul;
* ``teacher pass``: the teacher's image encoder on one batch of fixed views, no gradients -- the cache costs
  this once per ``--batch`` training images, once for the whole run.

From these, ``--epochs`` (default 20, the fork's) of phase 1 over any number of images N (it cancels out):
online = epochs x N/batch x online step; cached = N/batch x teacher pass + epochs x N/batch x cached step.

Usage::

    python -m bench.bench_caspl --threads 1            # CPU: fp32, batch 4, medians of --repeats
    python -m bench.bench_caspl --teacher ViT-L/14@336px --threads 1
    python -m bench.bench_caspl --device cuda --precision fp16 --repeats 10   # a GPU

Seconds are the process's CPU time on a CPU (robust to other jobs on a shared machine; wall-clock is printed
too) and, on CUDA, the device time between CUDA events recorded around each call after a synchronisation. Every
call runs once as a warm-up (``--warmup`` rounds; 3 on CUDA), then ``--repeats`` rounds run the four in turn; the
medians count. ``--precision`` casts both frozen CLIPs as a run does (default fp32).
Nothing is asserted: these are measurements, not tests. The last lines are a one-row summary table (the README
quotes it).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from clip import MASTER_DTYPE  # noqa: E402
from trainers.caspl import ClassNames, distillation_loss  # noqa: E402
from trainers.prompted_clip import PromptedCLIP  # noqa: E402
from trainers.prompts import DeepPrompts  # noqa: E402
from trainers.templates import zeroshot_text_features  # noqa: E402

from bench.bench_mpl import TINY  # noqa: E402
from bench.common import CudaTimer, sync, trim_heap  # noqa: E402
from clip.host_memory import reuse_freed_memory  # noqa: E402


def classnames(n: int):
    words = ["annual crop", "forest", "herbaceous vegetation", "highway", "industrial buildings", "pasture",
             "permanent crop", "residential buildings", "river", "sea or lake"]
    return [words[i % len(words)] + (f" {i // len(words)}" if i >= len(words) else "") for i in range(n)]


def settle():
    """Free what the previous call left (garbage, heap pages handed back), so no call pays for another's."""
    gc.collect()
    trim_heap()


def measure(fns, device, repeats: int, warmup: int = 1):
    """{name: (median seconds, median wall seconds)} of the calls ``fns`` (name -> function): CPU time on a CPU,
    CUDA-event time on CUDA. ``warmup`` rounds (at least one) call each once, untimed; then ``repeats`` rounds
    call them in turn, so that a machine that gets busier or quieter meanwhile shifts all of them alike."""
    times = {name: [] for name in fns}
    warm = max(1, warmup) if repeats > 0 else 0
    for r in range(warm + max(repeats, 1)):
        for name, fn in fns.items():
            settle()
            sync(device)
            if device.type == "cuda":
                timer = CudaTimer()
                timer.start()
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            gpu = timer.stop() if device.type == "cuda" else None  # the device's time between the events
            sync(device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            t = cpu if gpu is None else gpu
            if r < warm:
                print(f"  warm-up  {name:44s} {t:8.2f} s {'CPU' if gpu is None else 'GPU'} (wall {wall:.1f} s)",
                      flush=True)
                continue
            times[name].append((t, wall))
    return {name: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v))
            for name, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="ViT-B/16", help="an architecture, or tiny (plumbing checks)")
    parser.add_argument("--teacher", default="ViT-L/14", help="an architecture, or tiny (plumbing checks)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=10, help="class prompts (EuroSAT's 10)")
    parser.add_argument("--batch", type=int, default=4, help="training batch (the fork's 4); also the batch of the "
                                                              "measured teacher pass")
    parser.add_argument("--n-ctx", type=int, default=8, help="boosting tokens per encoder")
    parser.add_argument("--depth", type=int, default=12, help="boosting prompt depth")
    parser.add_argument("--epochs", type=int, default=20, help="phase-1 epochs of the projection (the fork's 20)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; 3 on CUDA)")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or amp (student and teacher)")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-reuse-memory", action="store_true",
                        help="on a CPU, leave glibc's malloc thresholds alone (train.py's CPU_REUSE_MEMORY False)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = clip.resolve_precision(args.precision, device)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    torch.manual_seed(0)
    start = time.perf_counter()
    # as train.py does for a CPU run (CPU_REUSE_MEMORY, default True)
    reuse = device.type == "cpu" and not args.no_reuse_memory and reuse_freed_memory()

    student = clip.create_model(TINY if args.student == "tiny" else args.student)
    teacher = clip.create_model(TINY if args.teacher == "tiny" else args.teacher).eval()
    names = classnames(args.classes)
    learner = DeepPrompts(student, n_text=args.n_ctx, depth_text=args.depth, n_vision=args.n_ctx,
                          depth_vision=args.depth, key="KD")
    net = PromptedCLIP(student, learner, {"classes": ClassNames(student, names)}).to(device)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    for p in teacher.parameters():
        p.requires_grad_(False)
    if precision.param_dtype != MASTER_DTYPE:  # as the trainer: the frozen CLIPs in the run's precision
        precision.cast_model(student)
        precision.cast_model(teacher)
    teacher.to(device)
    with torch.no_grad():
        teacher_text = zeroshot_text_features(teacher, names, ["a centered satellite photo of {}."]).to(MASTER_DTYPE)
    s_res, t_res = student.visual.input_resolution, teacher.visual.input_resolution
    print(f"student {args.student} ({s_res} px) with {args.n_ctx}+{args.n_ctx} boosting tokens at depth {args.depth}, "
          f"teacher {args.teacher} ({t_res} px), random weights, {precision}, device {device}, batch {args.batch}, "
          f"{args.classes} classes, threads {torch.get_num_threads()}, median of {args.repeats}"
          + (", freed memory reused (clip.host_memory)" if reuse else "")
          + f" (built in {time.perf_counter() - start:.0f} s)", flush=True)

    image = torch.randn(args.batch, 3, s_res, s_res, device=device)  # the augmented training batch
    view = torch.randn(args.batch, 3, t_res, t_res, device=device)  # fixed views at the teacher's resolution
    fixed_target = torch.randn(args.batch, args.classes, device=device) * 5

    @torch.no_grad()
    def teacher_features(x):
        if x.shape[-1] != t_res or x.shape[-2] != t_res:  # as the trainer: resize the student's batch
            x = F.interpolate(x, size=(t_res, t_res), mode="bicubic", align_corners=False)
        with precision.autocast(device):
            f = teacher.encode_image(x)
        f = f.to(MASTER_DTYPE)
        return f / f.norm(dim=-1, keepdim=True)

    cache = teacher_features(image).cpu()  # the cache's rows for this batch (one row per image)
    rows = torch.arange(args.batch)

    def student_step(target_fn):
        with precision.autocast(device):
            out = net(image)
        scale = out.logit_scale.detach()
        target = target_fn(scale)
        distillation_loss(out.logits, target).backward()
        learner.zero_grad(set_to_none=True)
        return target

    def logits_from(feats, scale):
        return scale.to(MASTER_DTYPE) * feats.to(MASTER_DTYPE) @ teacher_text.t()

    def floor():
        return student_step(lambda scale: fixed_target)

    def online():
        return student_step(lambda scale: logits_from(teacher_features(image), scale))

    def cached():
        return student_step(lambda scale: logits_from(cache[rows].to(device), scale))

    def teacher_pass():
        return teacher_features(view).cpu()

    fns = {"floor: student step, fixed targets": floor, "cached: student step + cached features": cached,
           "online: student step + teacher": online,
           f"teacher pass: {args.batch} fixed views, no grad": teacher_pass}
    measured = measure(fns, device, args.repeats, warmup)
    rows_out = [(name, *measured[name]) for name in fns]
    with torch.no_grad():
        scale = student.logit_scale.exp()
        diff = float((logits_from(teacher_features(image), scale) - logits_from(cache[rows].to(device), scale)).abs().max())

    t_floor, t_cached, t_online, t_pass = (measured[name][0] for name in fns)
    clock = "GPU" if device.type == "cuda" else "CPU"
    print(f"\n{'measurement':48s} {clock + ' s':>9s} {'x floor':>8s} {'wall s':>8s}")
    for name, t, wall in rows_out:
        print(f"{name:48s} {t:9.2f} {t / t_floor:8.2f} {wall:8.1f}")
    e = args.epochs
    total_online = e * t_online  # per `batch` training images
    total_cached = t_pass + e * t_cached
    print(f"\nper step: online {t_online / t_floor:.2f}x the floor, cached {t_cached / t_floor:.3f}x; the teacher "
          f"alone (online - floor) {(t_online - t_floor) / t_floor:.2f}x; its one cache pass "
          f"{t_pass / t_floor:.2f}x a step (per {args.batch} images); cached and online logits on the same view "
          f"differ by at most {diff:.1e}")
    print(f"{e} epochs of phase 1: online {total_online / t_floor:.1f} floor steps per {args.batch} images, cached "
          f"{total_cached / t_floor:.1f} (one teacher pass + {e} epochs): cached is {total_online / total_cached:.2f}x "
          f"faster; the teacher's share: online {e * (t_online - t_floor) / total_online:.0%} of the time, cached "
          f"{t_pass / total_cached:.0%} (the one pass)")

    summary = {
        "online step x floor": f"{t_online / t_floor:.2f}",
        "cached step x floor": f"{t_cached / t_floor:.2f}",
        "teacher pass (per batch) x floor": f"{t_pass / t_floor:.2f}",
        f"{e} epochs: online / cached": f"{total_online / total_cached:.2f}x",
    }
    print(f"\nsummary ({args.student} student, {args.teacher} teacher, {device.type}, {precision}, "
          f"batch {args.batch}, {clock} time)")
    print("| " + " | ".join(summary) + " |")
    print("|" + "---|" * len(summary))
    print("| " + " | ".join(summary.values()) + " |")
    if args.json:
        report = {"student": args.student, "teacher": args.teacher, "device": str(device), "precision": str(precision),
                  "batch": args.batch, "clock": clock, "epochs": e, "logit_difference": diff,
                  "rows": [{"name": name, "seconds": t, "x_floor": t / t_floor, "wall_s": wall}
                           for name, t, wall in rows_out],
                  "online_over_cached": total_online / total_cached, "summary": summary}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
