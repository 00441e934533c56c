"""The one prepared GPU check: ``bash bench/gpu_check.sh OUTDIR`` (or ``python -m bench.gpu_check OUTDIR``).

No network, installs nothing. On a machine with CUDA it runs, each part guarded (a failure is reported and the
rest still runs) and under its own time budget, the whole within ``--budget`` seconds (default 480, 8 minutes):

1. ``environment``: device, torch, CUDA, TF32 settings.
2. ``cuda_tests``: ``python -m pytest -m cuda`` (tests/test_cuda.py: every method in fp16/bf16/amp on the GPU,
   DDP on one process, the CasPL teacher cache).
3. ``selfcheck``: ``tools.selfcheck`` for every registered method and precision (random ViT-B/16), each row
   against fp64 on the same weights within its precision's stated tolerance; per method the bf16/fp16 error
   ratio (rounding: about 8-16; far more: a lost fp32 accumulation).
4. ``text_overhead``: the text tower's cost of a pass in tokens, measured (forward + backward, the run's
   precision), beside the planner's constant ``clip.text_prefix.CUDA_TEXT_PASS_OVERHEAD``.
5. ``mpl_fp16_b4``: ``bench.bench_mpl`` (fp16, batch 4): MPL's train step at 5, 100, 500 classes as ratios to the
   image encoder alone (the floor) and to the 77-token computation, peak memory, the plan a CPU makes run on
   the GPU; the 1000-class evaluation text pass, a test batch of 100 against the image encoder, and a whole
   ImageNet evaluation (50,000 images) projected from the measured batches.
6. ``compile``: ``bench.compile_check``: torch.compile (inductor), CUDA graphs (reduce-overhead, and the
   evaluation step captured by hand) on MPL's train and eval step: exactness against eager, speed ratio.
7. ``caspl``: ``bench.bench_caspl`` (fp16): CasPL phase 1 with the teacher online against cached.
8. ``fast_suite``: ``python -m pytest -m "not slow"`` (the whole fast tier on the GPU machine).
9. ``mpl_fp16_b32``, ``mpl_fp32_b4``, ``mpl_amp_b4``, ``mpl_fp32_b32``, ``mpl_amp_b32``: the train steps again
   in the other precisions and at batch 32 (not launch-bound), as long as time is left.

It prints a compact report and writes ``report.json`` (everything), ``report.md`` (the tables) and ``logs/`` (each
part's output) under OUTDIR, after every part (a run cut short keeps what it measured). Exit status 0 when every
part that ran passed.

``--cpu`` (automatic without CUDA): the same parts on the tiny CLIP on the CPU, in-process, one repeat each (the
suite runs it: tests/test_gpu_check.py), so that the script cannot rot between GPU runs; the CUDA-only parts
report "skipped".
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Skip(Exception):
    """A part that does not apply here (its reason is reported)."""


class Context:
    def __init__(self, outdir: Path, cpu: bool, deadline: float):
        self.outdir, self.cpu, self.deadline = outdir, cpu, deadline
        self.logs = outdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = {}  # part name -> its result dict (later parts may read earlier ones)
        self.partial = {}  # part name -> what a part that then failed had measured (kept in the report)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def module(self, name: str, module: str, argv, timeout: float) -> None:
        """Run ``python -m module argv``: a subprocess with a timeout on a GPU (isolation: a crash or hang ends
        this part only), in-process on a CPU (seconds: no interpreter start). Output goes to ``logs/name.log``."""
        log = self.logs / f"{name}.log"
        if self.cpu:
            import importlib

            import torch

            buf, threads = io.StringIO(), torch.get_num_threads()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    rc = importlib.import_module(module).main(list(map(str, argv)))
                finally:
                    torch.set_num_threads(threads)  # a bench's --threads must not outlive it
                    log.write_text(buf.getvalue())
            if isinstance(rc, int) and rc != 0:
                raise RuntimeError(f"{module} exited with {rc} (see {log})")
            return
        run_command(log, [sys.executable, "-m", module, *map(str, argv)], timeout)


def run_command(log: Path, cmd, timeout: float) -> str:
    """Run ``cmd`` in the repository (its own process group, killed on timeout); output to ``log``."""
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"stopped after its budget of {timeout:.0f} s (see {log})")
    text = log.read_text()
    if rc != 0:
        tail = text.strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit status {rc}: {tail[0][:200]} (see {log})")
    return text


# ---------------------------------------------------------------------------------------------------------------
# parts: each returns a dict (its figures) and may raise Skip or any error
# ---------------------------------------------------------------------------------------------------------------
def part_environment(ctx, budget):
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_count": os.cpu_count(), "mode": "cpu" if ctx.cpu else "cuda"}
    if not ctx.cpu:
        out.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return out


def _pytest_counts(text):
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", text):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return counts


def part_cuda_tests(ctx, budget):
    targets = ["tests/test_cuda.py", "-n", "0"] if ctx.cpu else ["-n", "4"]
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *targets]
    log = ctx.logs / "cuda_tests.log"
    try:
        text = run_command(log, cmd, budget)
    except RuntimeError:
        text = log.read_text()
        counts = _pytest_counts(text.strip().splitlines()[-1] if text.strip() else "")
        raise RuntimeError(f"pytest -m cuda: {counts} (see {log})")
    counts = _pytest_counts(text.strip().splitlines()[-1])
    if ctx.cpu and counts.get("passed"):
        raise RuntimeError(f"CUDA tests passed without CUDA: {counts}")
    return {"counts": counts, "command": " ".join(cmd[1:])}


def part_fast_suite(ctx, budget):
    if ctx.cpu:
        raise Skip("CPU mode: the suite is what runs this check")
    cmd = [sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "-n", "8"]
    log = ctx.logs / "fast_suite.log"
    try:
        text = run_command(log, cmd, budget)
    except RuntimeError:
        text = log.read_text()
        raise RuntimeError(f"pytest -m 'not slow': {_pytest_counts(text.strip().splitlines()[-1])} (see {log})")
    return {"counts": _pytest_counts(text.strip().splitlines()[-1])}


def part_selfcheck(ctx, budget):
    path = ctx.outdir / "selfcheck.json"
    if ctx.cpu:
        argv = ["--device", "cpu", "--backbone", "tiny", "--cpu-half", "--steps", "1", "--methods", "CoOp",
                "--precisions", "fp32", "fp16", "bf16", "--json", path]
    else:
        argv = ["--device", "cuda", "--steps", "5", "--json", path]
    stopped = None
    try:
        ctx.module("selfcheck", "tools.selfcheck", argv, budget)
    except (RuntimeError, TimeoutError) as err:  # failed rows, or its budget ran out: report the rows it wrote
        if not path.is_file():
            raise
        stopped = err if isinstance(err, TimeoutError) else None
    data = json.loads(path.read_text())
    rows = data["rows"]
    out = {"tolerance": data["tolerance"], "rows": len(rows),
           "failed": [f"{r['method']} {r['precision']}: {r['status']}" for r in rows if r["status"] != "ok"]}
    worst = {}
    for r in rows:
        d = r.get("fp64_diff")
        if d is not None and d > worst.get(r["precision"], (0, ""))[0]:
            worst[r["precision"]] = (d, r["method"])
    out["largest_vs_fp64"] = {p: {"diff": d, "method": m} for p, (d, m) in worst.items()}
    by = {(r["method"], r["precision"]): r.get("fp64_diff") for r in rows}
    out["bf16_over_fp16"] = {m: by[m, "bf16"] / by[m, "fp16"] for m, p in by
                             if p == "fp16" and by.get((m, "bf16")) and by[m, "fp16"]}
    ctx.partial["selfcheck"] = out
    if stopped is not None:
        raise TimeoutError(f"{stopped} after {len(rows)} rows")
    if out["failed"]:
        raise RuntimeError("; ".join(out["failed"][:5]) + (f" (+{len(out['failed']) - 5})" if len(out["failed"]) > 5 else ""))
    return out


def part_text_overhead(ctx, budget):
    """The text tower's pass cost: time(passes) = a * tokens + b, fitted on two sizes; overhead = b / a tokens."""
    import statistics

    import torch

    import clip
    from clip import MASTER_DTYPE
    from clip.text_prefix import CUDA_TEXT_PASS_OVERHEAD
    from bench.bench_mpl import TINY
    from bench.common import CudaTimer

    device = torch.device("cpu" if ctx.cpu else "cuda")
    precision = clip.resolve_precision("fp32" if ctx.cpu else "fp16", device)
    model = clip.create_model(TINY if ctx.cpu else "ViT-B/16")
    precision.cast_model(model)
    model.to(device)
    for p in model.parameters():  # frozen, as in prompt learning: backward reaches the input only
        p.requires_grad_(False)
    tower = model.transformer
    width = tower.width

    def pass_time(rows, length, repeats):
        x = torch.randn(rows, length, width, device=device, dtype=model.dtype, requires_grad=True)

        def once():
            with precision.autocast(device):
                y = tower(x)
            y.to(MASTER_DTYPE).sum().backward()
        for _ in range(2):
            once()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                timer = CudaTimer()
                timer.start()
                once()
                times.append(timer.stop())
            else:
                start = time.perf_counter()
                once()
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    sizes = [(1, 8), (8, 32), (64, 32), (500, 24)] if not ctx.cpu else [(1, 8), (16, 16)]
    times = {f"{r}x{l}": pass_time(r, l, 3 if ctx.cpu else 10) for r, l in sizes}
    (r0, l0), (r1, l1) = sizes[0], sizes[-1]
    t0, t1 = times[f"{r0}x{l0}"], times[f"{r1}x{l1}"]
    per_token = (t1 - t0) / (r1 * l1 - r0 * l0)
    overhead = (t0 - per_token * r0 * l0) / per_token if per_token > 0 else float("inf")
    return {"device": str(device), "precision": str(precision), "pass_seconds": times,
            "seconds_per_token": per_token, "measured_overhead_tokens": overhead,
            "planner_constant": CUDA_TEXT_PASS_OVERHEAD if not ctx.cpu else model.text_pass_overhead}


def _mpl_part(prec, batch, with_eval):
    def part(ctx, budget):
        path = ctx.outdir / f"bench_mpl_{prec}_b{batch}.json"
        if ctx.cpu:
            if (prec, batch) != ("fp16", 4):
                raise Skip("CPU mode: one setting")
            argv = ["--arch", "tiny", "--device", "cpu", "--precision", "fp32", "--classes", "5", "--eval-classes",
                    "10", "--batch", "2", "--eval-batch", "2", "--repeats", "0", "--threads", "1", "--json", path]
        else:
            argv = ["--device", "cuda", "--precision", prec, "--batch", str(batch), "--repeats", "10", "--warmup", "3",
                    "--classes", "5", "100", "500", "--eval-classes", "1000" if with_eval else "0", "--json", path]
        ctx.module(f"mpl_{prec}_b{batch}", "bench.bench_mpl", argv, budget)
        return summarise_mpl(json.loads(path.read_text()))
    return part


def summarise_mpl(r):
    out = {"precision": r["precision"], "batch": r["batch"], "floor_ms": r["floor_s"] * 1e3, "train": {}}
    for n, modes in r["train"].items():
        s, t77, fl = modes["shared"], modes["77-token"], modes["floor"]
        row = {"step_ms": s["seconds"] * 1e3, "x_floor": s["seconds"] / fl["seconds"],
               "x_prompted_floor": s["seconds"] / modes["prompted floor"]["seconds"],
               "speedup_vs_77": t77["seconds"] / s["seconds"], "peak_mib": s["peak_mib"],
               "peak_77_mib": t77["peak_mib"], "memory_fraction_of_77": s["peak_mib"] / max(t77["peak_mib"], 1e-9),
               "77_token_ms": t77["seconds"] * 1e3, "truncated_ms": modes["truncated"]["seconds"] * 1e3}
        if "CPU plan" in modes:
            row["cpu_plan_ms"] = modes["CPU plan"]["seconds"] * 1e3
        out["train"][n] = row
    ev = r.get("eval") or {}
    if ev:
        scale = 100 / r["eval_batch"]  # a batch of 100 from the measured one
        images = r["test_images"]
        batches = -(-images // 100)
        once = ev["shared"] + batches * ev["batch"] * scale
        out["eval"] = {"text_pass_ms": ev["shared"] * 1e3, "text_77_ms": ev["77-token"] * 1e3,
                       "text_speedup_vs_77": ev["77-token"] / ev["shared"],
                       "batch_x_image_encoder": ev["batch"] / ev["image"],
                       "imagenet_eval_s": once, "imagenet_images_per_s": images / once,
                       "imagenet_eval_77_per_batch_s": batches * (ev["77-token"] + ev["batch"] * scale)}
    out["targets"] = r.get("targets", [])
    return out


def part_compile(ctx, budget):
    path = ctx.outdir / "compile_check.json"
    if ctx.cpu:
        argv = ["--arch", "tiny", "--device", "cpu", "--classes", "5", "--batch", "2", "--eval-batch", "2",
                "--repeats", "1", "--modes", "eager", "--json", path]
    else:
        argv = ["--device", "cuda", "--precision", "fp16", "--classes", "100", "--json", path]
    ctx.module("compile", "bench.compile_check", argv, budget)
    r = json.loads(path.read_text())
    return {"eager_ms": {k: v * 1e3 for k, v in r["eager"].items()},
            "modes": {m: {k: v for k, v in row.items() if k != "traceback"} for m, row in r["modes"].items()}}


def part_caspl(ctx, budget):
    path = ctx.outdir / "bench_caspl.json"
    if ctx.cpu:
        argv = ["--student", "tiny", "--teacher", "tiny", "--depth", "2", "--n-ctx", "2", "--repeats", "0",
                "--threads", "1", "--json", path]
    else:
        argv = ["--device", "cuda", "--precision", "fp16", "--repeats", "10", "--json", path]
    ctx.module("caspl", "bench.bench_caspl", argv, budget)
    r = json.loads(path.read_text())
    return {"summary": r["summary"], "online_over_cached": r["online_over_cached"],
            "logit_difference": r["logit_difference"], "precision": r["precision"]}


def part_families(ctx, budget):
    """One method of each adaptation family (bench.bench_families) at 5 and 500 classes against the floor."""
    path = ctx.outdir / "bench_families.json"
    if ctx.cpu:
        argv = ["--arch", "tiny", "--classes", "3", "--repeats", "0", "--threads", "1", "--json", path]
    else:
        argv = ["--device", "cuda", "--precision", "fp16", "--repeats", "5", "--json", path]
    ctx.module("families", "bench.bench_families", argv, budget)
    rows = json.loads(path.read_text())["rows"]
    return {f"{r['method']}[{r['classes']}]": {"x_floor": r["shared_s"] / r["floor_s"],
                                                 "prefix_off_x_floor": r["unshared_s"] / r["floor_s"],
                                                 "logit_difference": r["relative_logit_difference"]} for r in rows}


#: (name, function, budget in seconds on a GPU), in order of priority
PARTS = [
    ("environment", part_environment, 15),
    ("cuda_tests", part_cuda_tests, 90),
    ("selfcheck", part_selfcheck, 130),
    ("text_overhead", part_text_overhead, 20),
    ("mpl_fp16_b4", _mpl_part("fp16", 4, True), 60),
    ("compile", part_compile, 50),
    ("caspl", part_caspl, 25),
    ("fast_suite", part_fast_suite, 120),
    ("families", part_families, 45),
    ("mpl_fp16_b32", _mpl_part("fp16", 32, False), 30),
    ("mpl_fp32_b4", _mpl_part("fp32", 4, False), 25),
    ("mpl_amp_b4", _mpl_part("amp", 4, False), 25),
    ("mpl_fp32_b32", _mpl_part("fp32", 32, False), 30),
    ("mpl_amp_b32", _mpl_part("amp", 32, False), 30),
]


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def markdown(report) -> str:
    lines = [f"# GPU check ({report['mode']}), {report['started']}", "",
             f"{report['parts'].get('environment', {}).get('result', {})}", "",
             "| part | status | seconds | figures |", "|---|---|---:|---|"]
    for name, p in report["parts"].items():
        res = p.get("result") or {}
        brief = {k: v for k, v in res.items() if k not in ("train", "eval", "modes", "rows", "targets",
                                                           "pass_seconds", "bf16_over_fp16")}
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {_fmt(brief) if brief else ''} |")
    for name, p in report["parts"].items():
        res = p.get("result") or {}
        if "train" in res:
            lines += ["", f"## {name} (floor {res['floor_ms']:.1f} ms)", "",
                      "| classes | step ms | x floor | x MPL image enc. | vs 77-token | peak MiB | 77-token MiB | "
                      "CPU plan ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for n, r in res["train"].items():
                lines.append(f"| {n} | {r['step_ms']:.1f} | {r['x_floor']:.2f} | {r['x_prompted_floor']:.2f} | "
                             f"{r['speedup_vs_77']:.2f}x | {r['peak_mib']:.0f} | {r['peak_77_mib']:.0f} | "
                             f"{r.get('cpu_plan_ms', float('nan')):.1f} |")
            if "eval" in res:
                lines += ["", "evaluation: " + _fmt(res["eval"])]
        if "modes" in res:
            lines += ["", f"## {name}", "", f"eager: {_fmt(res['eager_ms'])} ms", ""]
            lines += [f"- {m}: {_fmt(row)}" for m, row in res["modes"].items()]
        if "bf16_over_fp16" in res:
            lines += ["", f"## {name}", "", "largest difference against fp64: " + _fmt(res["largest_vs_fp64"]),
                      "", "bf16 / fp16 error by method: " + _fmt(res["bf16_over_fp16"])]
        if p.get("error"):
            lines += ["", f"### {name}: {p['status']}", "", "```", p["error"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU mode (automatic without CUDA)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    parser.add_argument("--parts", nargs="+", help="run only these parts (names as in the report)")
    args = parser.parse_args(argv)
    import torch

    cpu = args.cpu or not torch.cuda.is_available()
    names = [n for n, _, _ in PARTS]
    unknown = [p for p in args.parts or () if p not in names]
    if unknown:
        print(f"error: unknown parts {unknown}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    outdir = Path(args.outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the output folder {outdir} ({err}); give a writable folder", file=sys.stderr)
        return 2
    start = time.monotonic()
    ctx = Context(outdir, cpu, start + args.budget)
    report = {"mode": "cpu" if cpu else "cuda", "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "budget_s": args.budget, "parts": {}}
    print(f"GPU check ({report['mode']} mode), budget {args.budget:.0f} s, report in {outdir}", flush=True)
    for name, fn, budget in PARTS:
        if args.parts and name not in args.parts:
            continue
        left = ctx.left() - 5  # keep a few seconds to write the report
        entry = {"status": "ok", "seconds": 0.0}
        if left < 5:
            entry["status"] = "skipped: out of time"
        else:
            t0 = time.monotonic()
            try:
                entry["result"] = fn(ctx, min(budget, left))
            except Skip as why:
                entry["status"] = f"skipped: {why}"
            except Exception as err:  # reported; the next part runs
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
                entry["status"] = f"FAIL {type(err).__name__}: {first}"
                entry["error"] = traceback.format_exc()[-4000:]
                if name in ctx.partial:
                    entry["result"] = ctx.partial[name]
            entry["seconds"] = time.monotonic() - t0
        ctx.results[name] = entry.get("result")
        report["parts"][name] = entry
        print(f"  {name:14s} {entry['status'][:100]:100s} {entry['seconds']:6.0f} s", flush=True)
        report["seconds"] = time.monotonic() - start
        (outdir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (outdir / "report.md").write_text(markdown(report))
    print()
    print(markdown(report))
    failed = [n for n, p in report["parts"].items() if p["status"].startswith("FAIL")]
    print(f"{len(report['parts'])} parts in {report['seconds']:.0f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every part that ran passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
