"""Speed and memory of MPL at full size, every target as a ratio against a floor measured in the same run.

Floor: the same image encoder's forward and backward with no prompts and no text (backward reaches the input
image, since CLIP is frozen). A second floor is MPL's own image encoder (its vision prompts, which add tokens layer
by layer, no text): the ratio to it is the cost of the text side and the loss alone. Every floor is measured side
by side with the default step it divides (calls in turn, see :func:`measure_group`). On a CPU, freed memory is
reused as ``train.py`` does (``clip.host_memory``; ``--no-reuse-memory``: glibc's defaults). With random ViT-B/16
weights (no download), one run measures:

* ``train[C]``: one MPL training step (reference config ``vit_b4_c1_add2_rm1``, batch 4) with C classes (default
  5, 100 and 500: ImageNet's base half) -- text encoder on every class, loss, backward -- in three text modes:
  ``shared`` (the default: exact truncation plus the shared-prefix encoding), ``truncated`` (prefix sharing off)
  and ``77-token`` (both off: the references' way); one more ``shared`` step under a memory budget
  (``--budget-mib``: the class rows run in checkpointed chunks) when the text pass would exceed it. The logits of
  all modes are compared.
* evaluation with ``--eval-classes`` (default 1000, ImageNet): the text pass (once per evaluation) in the three
  modes, and one test batch with the text features cached against the image encoder alone (forward, with and
  without MPL's prompts); from these, the time of an evaluation over ``--test-images`` (ImageNet's 50,000) at
  the reference's batch of 100 with the text once per evaluation, and with the references' text pass per batch.

Usage::

    python -m bench.bench_mpl                                    # CPU: fp32, medians of --repeats
    python -m bench.bench_mpl --device cuda --precision fp16     # GPU (also: --precision amp)
    python -m bench.bench_mpl --classes 5 100 --eval-classes 100 # smaller
    python -m bench.bench_mpl --repeats 0 --once-above 0 --threads 1   # a CPU shared with other jobs

Seconds are the process's CPU time on a CPU (robust to other jobs on a shared machine; wall-clock is printed
too) and, on CUDA, the device time between CUDA events recorded around each call after a synchronisation (the
first call and ``--warmup`` more are not timed; medians of ``--repeats``; ``--batch 32`` for a batch that is not
bound by kernel launches). Memory is the peak above the memory in use before the call: on CUDA the allocator's
peak, on Linux CPUs the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` and a heap trim before the first
call of each measurement, which gives its peak; the timed repeats follow without a trim, as training steps do).
Calls that take longer than ``--once-above`` seconds run once (no warm-up, no repeats). Nothing here is asserted: these are
measurements, not tests. The last lines are a one-row summary table (the README quotes it).
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
from trainers.config import make_block  # noqa: E402
from trainers.mpl import MultiModalPromptLearner  # noqa: E402
from trainers.prompted_clip import PromptedCLIP, normalise  # noqa: E402

from bench.common import CudaTimer, sync, trim_heap  # noqa: E402
from clip.host_memory import reuse_freed_memory  # noqa: E402

#: ``--arch tiny``
TINY = dict(embed_dim=32, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)

#: text modes: (text_truncation, text_prefix_sharing)
MODES = {"shared": (True, True), "truncated": (True, False), "77-token": (False, False)}


def reference_cfg():
    c = make_block("TRAINER.MPL")
    c.N_CTX, c.N_ADD_OP, c.N_RM_OP, c.PROMPT_DEPTH = 1, 2, 1, 9
    return c


def classnames(n: int):
    # Realistic lengths: one to four words per class name.
    words = ["red", "spotted", "northern", "great", "cat", "warbler", "maple", "truck", "river", "lake"]
    return [" ".join(words[(i + k) % len(words)] for k in range(1 + i % 4)) + f" {i}" for i in range(n)]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class Peak:
    """Peak memory (MiB) of one call above the memory in use before it (see the module docstring)."""

    def __init__(self, device):
        self.device = device
        self.cpu = device.type != "cuda"
        if self.cpu:
            try:
                self._reset_cpu()
                _rss_kib("VmHWM")
            except OSError:
                self.cpu = None  # no way to read a CPU peak here: report nothing

    @staticmethod
    def _reset_cpu():
        trim_heap()  # hand freed heap pages back, so that the resident set counts live memory only
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.cpu:
            self._reset_cpu()
            self.base = _rss_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        sync(self.device)
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        elif self.cpu:
            self.mib = (_rss_kib("VmHWM") - self.base) / 1024
        else:
            self.mib = float("nan")


#: wall-clock time of every ``measure`` call, by the order of the calls (printed beside the ratios)
WALL = []


def _timed(fn, device):
    if device.type == "cuda":  # CUDA events around the call, after a synchronisation
        timer = CudaTimer()
        timer.start()
        start = time.perf_counter()
        out = fn()
        t = timer.stop()
        return t, time.perf_counter() - start, out
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return cpu, elapsed, out


def measure_group(fns, device, repeats: int, once_above: float, warmup: int = 0):
    """``[(median seconds, peak MiB, last result)]`` of every function in ``fns``, measured side by side.

    Every function first runs once under :class:`Peak` (its memory, and its warm-up); a function slower than
    ``once_above`` keeps that call's time alone. The others then run ``warmup`` more untimed calls each (a GPU's
    kernel selection and allocator settle; 0 on a CPU), then ``repeats`` rounds in turn (f1, f2, .., f1, f2, ..), without trimming the heap in between (as consecutive training steps run), so that a ratio of two of
    them compares calls made under the same conditions, not minutes apart.

    Seconds are CUDA-event time on CUDA and the process's CPU time on a CPU: on a machine shared with other jobs,
    CPU time counts this process's work only (the wall-clock median is kept in ``WALL``).
    """
    first = []
    for fn in fns:
        with Peak(device) as peak:
            t, wall, out = _timed(fn, device)
        first.append((t, wall, peak.mib, out))
    again = [repeats >= 1 and wall <= once_above for _, wall, _, _ in first]
    times = [[] for _ in fns]
    walls = [[] for _ in fns]
    outs = [out for *_, out in first]
    for i, fn in enumerate(fns):
        for _ in range(warmup if again[i] else 0):
            fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if again[i]:
                gc.collect()
                t, wall, outs[i] = _timed(fn, device)
                times[i].append(t)
                walls[i].append(wall)
    result = []
    for i, (t, wall, mib, _) in enumerate(first):
        if not again[i]:
            times[i], walls[i] = [t], [wall]
        WALL.append(statistics.median(walls[i]))
        result.append((statistics.median(times[i]), mib, outs[i]))
    return result


def measure(fn, device, repeats: int, once_above: float, warmup: int = 0):
    """(median seconds, peak MiB, last result) of ``fn`` (see :func:`measure_group`)."""
    return measure_group([fn], device, repeats, once_above, warmup)[0]


def set_mode(model, mode):
    model.text_truncation, model.text_prefix_sharing = MODES[mode]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/16", help="an architecture of clip.MODEL_CONFIGS, or tiny "
                                                           "(tools.selfcheck's 3-layer CLIP: plumbing checks)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="fp32, fp16, bf16 or amp (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 100, 500], help="training class counts")
    parser.add_argument("--eval-classes", type=int, default=1000, help="evaluation class count (0: skip)")
    parser.add_argument("--batch", type=int, default=4, help="training batch (the reference's 4)")
    parser.add_argument("--eval-batch", type=int, default=None,
                        help="images in the measured test batch (default 100, the reference's; 10 on CPU, where "
                             "the per-image time is scaled to batches of 100)")
    parser.add_argument("--test-images", type=int, default=50000, help="test-set size (ImageNet's 50,000)")
    parser.add_argument("--budget-mib", type=float, default=256, help="memory budget of the budgeted step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls after the first, before the repeats (default 2 on CUDA, 0 on CPU)")
    parser.add_argument("--once-above", type=float, default=10.0, help="seconds above which a call runs once")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-reuse-memory", action="store_true",
                        help="on a CPU, leave glibc's malloc thresholds alone (train.py's CPU_REUSE_MEMORY False)")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = clip.resolve_precision(args.precision or ("fp16" if device.type == "cuda" else "fp32"), device)
    eval_batch = args.eval_batch or (100 if device.type == "cuda" else 10)
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 0)
    torch.manual_seed(0)

    model = clip.create_model(TINY if args.arch == "tiny" else args.arch)
    res = model.visual.input_resolution
    cfg = reference_cfg()
    if args.arch == "tiny":  # the CPU mode of bench.gpu_check: MPL's schedule cut to the tiny model's depth
        cfg.PROMPT_DEPTH = min(cfg.PROMPT_DEPTH, TINY["vision_layers"], TINY["transformer_layers"])
    # as train.py does for a CPU run (CPU_REUSE_MEMORY, default True)
    reuse = device.type == "cpu" and not args.no_reuse_memory and reuse_freed_memory()
    print(f"{args.arch} random weights, device {device}, precision {precision}, train batch {args.batch}, "
          f"measured test batch {eval_batch}, threads {torch.get_num_threads()}"
          + (", freed memory reused (clip.host_memory)" if reuse else ""), flush=True)

    net = PromptedCLIP(model, MultiModalPromptLearner(cfg, classnames(2), model))
    precision.cast_model(net.clip_model)
    net.to(device)
    for p in net.clip_model.parameters():
        p.requires_grad_(False)
    clip_model = net.clip_model
    trace = []
    with torch.no_grad():
        clip_model.encode_image(torch.zeros(1, 3, res, res, device=device), ops=net.prompts().vision_ops, trace=trace)
    plain = clip_model.visual.num_tokens
    vision_tokens = (f"{' '.join(str(n) for n in trace)} tokens at layers 0-{len(trace) - 1}, against {plain} without "
                     f"prompts, {sum(trace) / len(trace) / plain - 1:.1%} more on average")
    print(f"MPL vision sequence: {vision_tokens}", flush=True)
    rows = []  # (name, seconds, MiB, wall seconds)

    def record(name, t, mib, wall=None):
        wall = WALL[-1] if wall is None else wall
        rows.append((name, t, mib, wall))
        print(f"  {name:44s} {t:9.3f} s {mib:9.0f} MiB  (wall {wall:.1f} s)", flush=True)

    def record_group(names, results):
        walls = WALL[-len(results):]
        for name, (t, mib, _), wall in zip(names, results, walls):
            record(name, t, mib, wall)

    image = torch.randn(args.batch, 3, res, res, device=device)

    def floor():
        x = image.clone().requires_grad_(True)
        with precision.autocast(device):
            out = clip_model.encode_image(x)
        out.to(MASTER_DTYPE).sum().backward()

    # MPL's own image encoder (its vision prompts), no text: a one-class learner, whose vision prompts cost what
    # any learner's do, so that building the class prompts (work of the text side) is not counted here
    vision_net = PromptedCLIP(clip_model, MultiModalPromptLearner(cfg, classnames(1), clip_model).to(device))

    def prompted_floor():
        x = image.clone().requires_grad_(True)
        with precision.autocast(device):
            out = vision_net.encode_image(x, vision_net.prompts())
        out.to(MASTER_DTYPE).sum().backward()
        vision_net.prompt_learner.zero_grad(set_to_none=True)

    train, diffs, floors = {}, {}, []
    for n in args.classes:
        net.prompt_learner = MultiModalPromptLearner(cfg, classnames(n), clip_model).to(device)
        label = torch.randint(0, n, (args.batch,), device=device)

        def step():
            with precision.autocast(device):
                logits = net(image).logits
            F.cross_entropy(logits.to(MASTER_DTYPE), label).backward()
            net.prompt_learner.zero_grad(set_to_none=True)
            return logits.detach().to(MASTER_DTYPE)

        logits = {}
        set_mode(clip_model, "shared")
        # the floors side by side with the default mode, so that their ratios compare calls made together
        group = measure_group([floor, prompted_floor, step], device, args.repeats, args.once_above, warmup)
        (t_fl, m_fl, _), (t_pf, m_pf, _), (t, mib, logits["shared"]) = group
        record_group([f"floor: image encoder fwd+bwd", f"floor: MPL image encoder fwd+bwd (no text)",
                      f"train[{n}] shared"], group)
        floors.append(t_fl)
        train[n, "floor"], train[n, "prompted floor"], train[n, "shared"] = (t_fl, m_fl), (t_pf, m_pf), (t, mib)
        for mode in MODES:
            if mode == "shared":
                continue
            set_mode(clip_model, mode)
            t, mib, logits[mode] = measure(step, device, args.repeats, args.once_above, warmup)
            train[n, mode] = (t, mib)
            record(f"train[{n}] {mode}", t, mib)
        set_mode(clip_model, "shared")
        if device.type == "cuda":  # the plan a CPU makes (its pass overhead), run on this GPU: what issue 31 measured
            clip_model.text_pass_overhead_cuda = clip_model.text_pass_overhead
            t, mib, logits["CPU plan"] = measure(step, device, args.repeats, args.once_above, warmup)
            del clip_model.text_pass_overhead_cuda  # the class default again
            train[n, "CPU plan"] = (t, mib)
            record(f"train[{n}] shared, the CPU's plan", t, mib)
        budget = int(args.budget_mib * 2 ** 20)
        length = int(net.prompt_learner.class_prompts.token_ids.argmax(-1).max()) + 1
        if clip_model.text_memory_bytes(n, length) > budget:  # else the budget changes nothing
            clip_model.text_memory_budget = budget
            t, mib, logits["budget"] = measure(step, device, args.repeats, args.once_above, warmup)
            clip_model.text_memory_budget = None
            train[n, "budget"] = (t, mib)
            record(f"train[{n}] shared, budget {args.budget_mib:g} MiB", t, mib)
        ref = logits["77-token"]
        diffs[n] = max(float((v - ref).abs().max() / ref.abs().max()) for v in logits.values())
    if not floors:
        t_floor, m_floor, _ = measure(floor, device, args.repeats, args.once_above, warmup)
        record("floor: image encoder fwd+bwd", t_floor, m_floor)
        floors.append(t_floor)
    t_floor = statistics.median(floors)

    evals = {}
    if args.eval_classes:
        n = args.eval_classes
        net.prompt_learner = MultiModalPromptLearner(cfg, classnames(n), clip_model).to(device)
        feats = {}
        for mode in MODES:
            set_mode(clip_model, mode)

            def text_pass():
                with torch.no_grad(), precision.autocast(device):
                    return normalise(net.encode_text(net.prompt_learner())).to(MASTER_DTYPE)

            t, mib, feats[mode] = measure(text_pass, device, args.repeats, args.once_above, warmup)
            evals[mode] = t
            record(f"eval text pass[{n}] {mode}", t, mib)
        set_mode(clip_model, "shared")
        ref = feats["77-token"]
        diffs["eval"] = max(float((v - ref).abs().max()) for v in feats.values())
        eval_image = torch.randn(eval_batch, 3, res, res, device=device)

        def image_alone():
            with torch.no_grad(), precision.autocast(device):
                clip_model.encode_image(eval_image)

        def prompted_image_alone():
            with torch.no_grad(), precision.autocast(device):
                vision_net.encode_image(eval_image, vision_net.prompts())

        def cached_batch():
            with torch.no_grad(), precision.autocast(device):
                net(eval_image)

        with net.frozen_text_features():
            group = measure_group([image_alone, prompted_image_alone, cached_batch], device, args.repeats,
                                  args.once_above, warmup)
        record_group([f"eval: image encoder alone, {eval_batch} images",
                      f"eval: MPL image encoder alone, {eval_batch} images",
                      f"eval: test batch of {eval_batch}, text cached"], group)
        evals["image"], evals["prompted image"], evals["batch"] = (t for t, _, _ in group)

    clock = "GPU" if device.type == "cuda" else "CPU"
    print(f"\n{'measurement':48s} {clock + ' s':>10s} {'x floor':>9s} {'peak MiB':>10s} {'wall s':>9s}")
    for name, t, mib, wall in rows:
        print(f"{name:48s} {t:10.3f} {t / t_floor:9.2f} {mib:10.0f} {wall:9.1f}")
    print()
    for n in args.classes:
        t77, m77 = train[n, "77-token"]
        ts, ms = train[n, "shared"]
        tt, mt = train[n, "truncated"]
        budgeted = ""
        if (n, "budget") in train:
            tb, mb = train[n, "budget"]
            budgeted = f" (budgeted: 1/{m77 / max(mb, 1e-9):.1f}, {tb / ts:.2f}x the time)"
        fl, pf = train[n, "floor"][0], train[n, "prompted floor"][0]
        print(f"train[{n}]: shared {t77 / ts:.2f}x faster than the 77-token path ({t77 / tt:.2f}x without prefix "
              f"sharing); peak memory 1/{m77 / max(ms, 1e-9):.1f} of it{budgeted}; {ts / fl:.3f}x the floor, "
              f"{ts / pf:.3f}x MPL's image encoder alone (which is {pf / fl:.3f}x the floor); largest relative "
              f"logit difference {diffs[n]:.1e}")
    summary = {}
    if args.eval_classes:
        n = args.eval_classes
        scale = 100 / eval_batch  # time of a batch of 100, from the measured batch
        batches = -(-args.test_images // 100)
        once = evals["shared"] + batches * evals["batch"] * scale
        per_batch = batches * (evals["77-token"] + evals["batch"] * scale)
        print(f"eval[{n}]: text pass shared {evals['77-token'] / evals['shared']:.2f}x faster than 77-token "
              f"({evals['77-token'] / evals['truncated']:.2f}x without sharing); test batch with text cached "
              f"{evals['batch'] / evals['image']:.3f}x the image encoder alone, "
              f"{evals['batch'] / evals['prompted image']:.3f}x MPL's image encoder alone (which is "
              f"{evals['prompted image'] / evals['image']:.3f}x the plain one); largest feature difference "
              f"{diffs['eval']:.1e}")
        print(f"eval[{n}] over {args.test_images} images in batches of 100: {once:.0f} s with the text once per "
              f"evaluation, {per_batch:.0f} s with the 77-token text pass per batch ({per_batch / once:.1f}x)")
        summary[f"eval[{n}] text vs 77-token"] = f"{evals['77-token'] / evals['shared']:.1f}x faster"
        summary["test batch vs image encoder"] = f"{evals['batch'] / evals['image']:.2f}x"
        summary["test batch vs MPL image encoder"] = f"{evals['batch'] / evals['prompted image']:.2f}x"
    head = {}
    for n in args.classes:
        t77, m77 = train[n, "77-token"]
        ts, ms = train[n, "shared"]
        head[f"train[{n}] x floor"] = f"{ts / train[n, 'floor'][0]:.2f}"
        head[f"train[{n}] vs 77-token"] = f"{t77 / ts:.1f}x faster, 1/{m77 / max(ms, 1e-9):.1f} memory"
    summary = {**head, **summary}
    print("\nsummary (" + f"{args.arch}, {device.type}, {precision.name if hasattr(precision, 'name') else precision}"
          + ")")
    print("| " + " | ".join(summary) + " |")
    print("|" + "---|" * len(summary))
    print("| " + " | ".join(summary.values()) + " |")

    # issue 18's targets, for the settings this run measured: (what, measured ratio, target, met)
    targets, extra = [], []
    for n in args.classes:
        t77, m77 = train[n, "77-token"]
        ts, ms = train[n, "shared"]
        if n <= 5:
            fl, pf = train[n, "floor"][0], train[n, "prompted floor"][0]
            targets.append((f"train[{n}] time / floor", ts / fl, "<= 1.02", ts / fl <= 1.02))
            extra.append((f"train[{n}] time / MPL image encoder fwd+bwd", ts / pf))
            extra.append(("MPL image encoder fwd+bwd / floor", pf / fl))
        if n >= 500:
            targets.append((f"train[{n}] 77-token time / shared time", t77 / ts, ">= 10", t77 / ts >= 10))
            targets.append((f"train[{n}] 77-token peak / shared peak", m77 / max(ms, 1e-9), ">= 4", m77 >= 4 * ms))
    if args.eval_classes:
        speedup, ratio = evals["77-token"] / evals["shared"], evals["batch"] / evals["image"]
        if args.eval_classes >= 1000:
            targets.append((f"eval[{args.eval_classes}] text pass, 77-token / shared", speedup, ">= 8",
                            speedup >= 8))
        targets.append(("test batch (text cached) / image encoder alone", ratio, "<= 1.03", ratio <= 1.03))
        extra.append(("test batch (text cached) / MPL image encoder", evals["batch"] / evals["prompted image"]))
        extra.append(("MPL image encoder / image encoder (test batch)", evals["prompted image"] / evals["image"]))
    print("\ntargets (issue 18)")
    for what, value, goal, met in targets:
        print(f"  {what:48s} {value:8.3f}  target {goal:8s} {'met' if met else 'NOT met'}")
    if extra:
        print(f"the same against MPL's own image encoder, no text (its vision prompts: {vision_tokens})")
        for what, value in extra:
            print(f"  {what:48s} {value:8.3f}")
    if args.json:
        report = {
            "arch": args.arch, "device": str(device), "precision": str(precision), "batch": args.batch,
            "eval_batch": eval_batch, "test_images": args.test_images,
            "threads": torch.get_num_threads(), "clock": clock, "vision_tokens": trace, "plain_tokens": plain,
            "floor_s": t_floor,
            "rows": [{"name": name, "seconds": t, "x_floor": t / t_floor, "peak_mib": mib, "wall_s": wall}
                     for name, t, mib, wall in rows],
            "train": {str(n): {mode: {"seconds": train[n, mode][0], "peak_mib": train[n, mode][1]}
                               for mode in ("floor", "prompted floor", *MODES, "budget", "CPU plan")
                               if (n, mode) in train}
                      for n in args.classes},
            "largest_relative_logit_difference": {str(n): diffs[n] for n in args.classes},
            "eval": {k: v for k, v in evals.items()}, "largest_feature_difference": diffs.get("eval"),
            "summary": summary, "targets": [{"what": w, "value": v, "target": g, "met": bool(m)}
                                            for w, v, g, m in targets],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}")


if __name__ == "__main__":
    main()
