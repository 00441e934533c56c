"""Speed and memory of MPL at full size, as ratios against a floor measured in the same run.

Floor: the same image encoder's forward and backward with no prompts and no text (backward reaches the input
image, since CLIP is frozen). Measured against it, with random ViT-B/16 weights (no download):

* ``train[C]``: one MPL training step (reference config ``vit_b4_c1_add2_rm1``, batch 4) with C classes --
  text encoder on every class, loss, backward -- with the exact text truncation on (the default);
* ``train77[C]``: the same step with truncation off (the 77-token text path of the references); the two
  give equal logits, which is checked;
* evaluation: the time of the text features of C classes and of one test batch with them cached; from these,
  the throughput over a test set of ``--test-images`` images with the text features computed once per
  evaluation (the default) and recomputed for every batch (the references).

Usage::

    python -m bench.bench_mpl                       # CPU, small class counts, a few repeats
    python -m bench.bench_mpl --device cuda --classes 10 500 --precision fp16
    python -m bench.bench_mpl --skip-train                # evaluation only

Prints a table of seconds, ratio to the floor and memory (CUDA: peak of ``max_memory_allocated``; CPU: the
tensors saved for backward), and the speed-up of truncation. Nothing here is asserted: these are measurements, not tests.
"""
from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from clip import MASTER_DTYPE  # noqa: E402
from trainers.common import PromptedCLIP  # noqa: E402
from trainers.mpl import MultiModalPromptLearner, mpl_defaults  # noqa: E402


def reference_cfg():
    c = mpl_defaults()
    c.N_CTX, c.N_ADD_OP, c.N_RM_OP, c.PROMPT_DEPTH = 1, 2, 1, 9
    return c


def classnames(n: int):
    # Realistic lengths: one to four words per class name.
    words = ["red", "spotted", "northern", "great", "cat", "warbler", "maple", "truck", "river", "lake"]
    return [" ".join(words[(i + k) % len(words)] for k in range(1 + i % 4)) + f" {i}" for i in range(n)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn, device) -> float:
    """Memory of one call in MiB.

    CUDA: the allocator's peak above what was allocated before the call. CPU (where no allocator peak is
    exposed): the bytes of the tensors autograd saves for backward, which is what grows with the number of
    classes and the text length; 0 for calls without a backward pass.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="fp32, fp16, bf16 or amp (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="default: 10 500 on CUDA, 10 100 on CPU")
    parser.add_argument("--batch", type=int, default=4, help="training batch (the reference's 4)")
    parser.add_argument("--eval-batch", type=int, default=100, help="evaluation batch (the reference's 100)")
    parser.add_argument("--test-images", type=int, default=10000, help="test-set size for the throughput figure")
    parser.add_argument("--skip-train", action="store_true", help="only the evaluation measurements")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = args.classes or ([10, 500] if device.type == "cuda" else [10, 100])
    precision = clip.resolve_precision(args.precision or ("fp16" if device.type == "cuda" else "fp32"), device)
    torch.manual_seed(0)

    model = clip.create_model(args.arch)
    res = model.visual.input_resolution
    cfg = reference_cfg()
    print(f"{args.arch} random weights, device {device}, precision {precision}, train batch {args.batch}, "
          f"eval batch {args.eval_batch}, threads {torch.get_num_threads()}")

    rows = []
    image = torch.randn(args.batch, 3, res, res, device=device)
    learner0 = MultiModalPromptLearner(cfg, classnames(2), model)
    net = PromptedCLIP(model, learner0)
    precision.cast_model(net.clip_model)
    net.to(device)
    for p in net.clip_model.parameters():
        p.requires_grad_(False)

    def floor():
        x = image.clone().requires_grad_(True)
        with precision.autocast(device):
            out = net.clip_model.encode_image(x)
        out.to(MASTER_DTYPE).sum().backward()

    t_floor = timeit(floor, device, args.repeats)
    rows.append(("floor (image fwd+bwd)", t_floor, peak_memory(floor, device)))

    speedups, throughputs = [], []
    for n in classes:
        net.prompt_learner = MultiModalPromptLearner(cfg, classnames(n), net.clip_model).to(device)
        label = torch.randint(0, n, (args.batch,), device=device)

        if not args.skip_train:

            def step():
                with precision.autocast(device):
                    logits = net(image)
                loss = F.cross_entropy(logits.to(MASTER_DTYPE), label)
                loss.backward()
                net.prompt_learner.zero_grad(set_to_none=True)

            logits, times, mems = {}, {}, {}
            for truncate in (True, False):
                net.clip_model.text_truncation = truncate
                with torch.no_grad(), precision.autocast(device):
                    logits[truncate] = net(image).to(MASTER_DTYPE)
                times[truncate] = timeit(step, device, args.repeats)
                mems[truncate] = peak_memory(step, device)
            net.clip_model.text_truncation = True
            diff = (logits[True] - logits[False]).abs().max().item()
            rows.append((f"train[{n}] truncated text", times[True], mems[True]))
            rows.append((f"train77[{n}] 77-token text", times[False], mems[False]))
            speedups.append((n, times[False] / times[True], diff))

        eval_image = torch.randn(args.eval_batch, 3, res, res, device=device)

        def text_once():
            with torch.no_grad(), precision.autocast(device):
                net.encode_text(net.prompt_learner())

        def eval_batch():  # one test batch with the text features already computed
            with torch.no_grad(), precision.autocast(device):
                net(eval_image)

        t_text = timeit(text_once, device, args.repeats)
        with torch.no_grad(), precision.autocast(device), net.frozen_text_features():
            t_batch = timeit(eval_batch, device, args.repeats)
        rows.append((f"text features[{n}] (eval, once)", t_text, 0.0))
        rows.append((f"eval batch of {args.eval_batch} (text cached)", t_batch, 0.0))
        batches = math.ceil(args.test_images / args.eval_batch)
        cached = args.test_images / (batches * t_batch + t_text)
        per_batch = args.test_images / (batches * (t_batch + t_text))
        throughputs.append((n, cached, per_batch))

    print(f"\n{'measurement':40s} {'seconds':>10s} {'x floor':>9s} {'MiB':>10s}")
    for name, t, mem in rows:
        print(f"{name:40s} {t:10.4f} {t / t_floor:9.2f} {mem:10.1f}")
    print()
    for n, s, diff in speedups:
        print(f"{n} classes: truncation makes a training step {s:.2f}x faster than the 77-token path "
              f"(max |logit difference| {diff:.2e})")
    for n, cached, per_batch in throughputs:
        print(f"{n} classes, {args.test_images} test images: {cached:.1f} images/s with text features once per "
              f"evaluation, {per_batch:.1f} images/s recomputing them per batch ({cached / per_batch:.2f}x)")


if __name__ == "__main__":
    main()
