"""bench/bench_mpl.py runs end to end (ViT-B/32 with a batch of one: seconds) and measures equal logits and features
in its three text modes, and MPL's vision sequence (its JSON report; the printed wording is not under test)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess at ViT-B/32

ROOT = Path(__file__).resolve().parents[1]


def test_bench_mpl_measures_equal_logits_and_the_reference_schedule(tmp_path):
    report = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_mpl", "--arch", "ViT-B/32", "--classes", "3", "--eval-classes", "3",
         "--repeats", "0", "--batch", "1", "--eval-batch", "1", "--threads", "1", "--device", "cpu",
         "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(report.read_text())
    # MPL's reference schedule (1 context token, add 2, remove 1, depth 9) on ViT-B/32's 50 tokens
    assert r["plain_tokens"] == 50 and r["vision_tokens"] == [51, 52, 53, 54, 55, 56, 57, 58, 59, 59, 59, 59]
    # the three text modes (shared prefix, truncated, 77 tokens) give the same logits and features: float32
    # rounding of the same sums in other orders (measured below 1e-6)
    assert r["largest_relative_logit_difference"]["3"] < 1e-5 and r["largest_feature_difference"] < 1e-5
    assert set(r["train"]["3"]) >= {"floor", "prompted floor", "shared", "truncated", "77-token"}
    assert all(v["seconds"] > 0 for v in r["train"]["3"].values()) and r["floor_s"] > 0
    assert {"shared", "truncated", "77-token", "image", "prompted image", "batch"} <= set(r["eval"])
