"""bench/bench_mpl.py runs end to end (at ViT-B/32 with a batch of one: seconds) and prints what the README quotes."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_mpl_prints_every_figure_and_equal_logits():
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_mpl", "--arch", "ViT-B/32", "--classes", "3", "--eval-classes", "3",
         "--repeats", "0", "--batch", "1", "--eval-batch", "1", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "freed memory reused (clip.host_memory)" in text
    # MPL's reference schedule (1 context token, add 2, remove 1, depth 9) on ViT-B/32's 50 tokens
    assert "MPL vision sequence: 51 52 53 54 55 56 57 58 59 59 59 59 tokens at layers 0-11, against 50" in text
    for row in ("floor: image encoder fwd+bwd", "floor: MPL image encoder fwd+bwd (no text)", "train[3] shared",
                "train[3] truncated", "train[3] 77-token", "eval text pass[3] shared",
                "eval: MPL image encoder alone, 1 images", "eval: test batch of 1, text cached"):
        assert re.search(rf"^{re.escape(row)} +[0-9.]+ +[0-9.]+ +-?[0-9.]+", text, re.M), row
    # the three text modes give the same logits and features
    diff = float(re.search(r"train\[3\]: .* largest relative logit difference ([0-9.e+-]+)", text).group(1))
    assert diff < 1e-5
    assert float(re.search(r"largest feature difference ([0-9.e+-]+)", text).group(1)) < 1e-5
    summary = text.split("summary (ViT-B/32, cpu, fp32)\n", 1)[1].splitlines()
    assert summary[0].startswith("| train[3] x floor |") and summary[1].startswith("|---|")
    assert "test batch (text cached) / image encoder alone" in text and "target <= 1.03" in text
    assert "train[3] time / MPL image encoder fwd+bwd" in text
