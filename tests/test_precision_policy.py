"""Precision is chosen once (clip/precision.py): no model code names a float dtype or calls .half()/.float()."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_CODE = ("clip", "trainers", "pretrain", "bench")
PATTERN = re.compile(r"\.half\(\)|\.float\(\)|\.double\(\)|\.bfloat16\(\)|"
                     r"torch\.(float16|half|bfloat16|float32|float64|double)\b")


def test_no_dtype_literals_outside_the_precision_module():
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for folder in MODEL_CODE for path in sorted((REPO / folder).rglob("*.py"))
        if path.relative_to(REPO).as_posix() != "clip/precision.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if PATTERN.search(line)
    ]
    assert not offenders, offenders


def test_the_scan_sees_a_literal():
    assert PATTERN.search("x = logits.float()") and PATTERN.search("dtype=torch.float16")
    assert not PATTERN.search("x = logits.to(MASTER_DTYPE)")
