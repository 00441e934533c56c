"""clip.host_memory: glibc keeps freed activation buffers for reuse, and train.py turns that on for CPU runs."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trainers.runner as runner
from clip import host_memory
from trainers.api import build_cfg

ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 24 MiB tensor (the size of a ViT-B/16 MLP activation at batch 10), then allocates a slightly
# larger one, as MPL's growing vision sequence does; prints the resident-set changes in KiB.
PROBE = textwrap.dedent("""
    import sys
    import torch
    from clip.host_memory import reuse_freed_memory

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    reused = reuse_freed_memory() if sys.argv[1] == "1" else None
    n = 6 * 2 ** 20  # float32 elements: 24 MiB
    before = rss()
    x = torch.ones(n)
    held = rss()
    del x
    freed = rss()
    y = torch.ones(n + 64 * 1024)  # 256 KiB larger
    again = rss()
    print(reused, held - before, held - freed, again - freed)
""")


def _probe(reuse: bool):
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if reuse else "0"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], [int(v) for v in out[1:]]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's malloc only")
def test_freed_blocks_stay_for_reuse_only_when_asked():
    # glibc's defaults: the 24 MiB block is mapped on its own and handed back to the system when freed, so the
    # next, slightly larger one faults in fresh pages again
    reused, (grew, returned, regrew) = _probe(reuse=False)
    assert reused == "None" and grew > 20 * 1024
    assert returned > 20 * 1024 and regrew > 20 * 1024
    # reuse_freed_memory: the freed block stays in the heap for later blocks. (Whether the larger one fits into it
    # depends on the heap's layout, e.g. a small block allocated after it; not asserted.)
    reused, (grew, returned, regrew) = _probe(reuse=True)
    assert reused == "True" and grew > 20 * 1024
    assert returned < 1024


def test_train_py_reuses_memory_on_cpu_unless_switched_off(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: False)
    cfg = build_cfg([])
    assert cfg.CPU_REUSE_MEMORY is True
    runner.reuse_cpu_memory(cfg)
    assert calls == [1]
    cfg = build_cfg(["CPU_REUSE_MEMORY", "False"])
    runner.reuse_cpu_memory(cfg)
    assert calls == [1]
    # a CUDA run leaves the host allocator alone (its tensors live on the GPU)
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: True)
    cfg = build_cfg([])
    runner.reuse_cpu_memory(cfg)
    assert calls == [1]
