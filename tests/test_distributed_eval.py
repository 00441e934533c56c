"""The evaluator's gather over 2 gloo processes equals the single-process evaluator on random predictions.

(The end-to-end runs in test_distributed.py use a tiny random CLIP whose predictions are nearly constant; here
the predictions are spread over every class, and the split of 101 images is uneven: 51 + 50.)
"""
import contextlib
import io
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import SequentialSampler

from dassl.config import get_cfg_default
from dassl.data.distributed_sampler import ShardedEvalBatchSampler
from dassl.evaluation import build_evaluator

N, C, BATCH = 101, 7, 16


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=g), torch.randint(C, (N,), generator=g)


def _evaluate(indices_batches):
    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    evaluator = build_evaluator(cfg, lab2cname={i: f"class{i}" for i in range(C)})
    logits, labels = _data()
    for idx in indices_batches:
        evaluator.process(logits[idx], labels[idx])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = evaluator.evaluate()
    return dict(results), printed.getvalue()


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batches = list(ShardedEvalBatchSampler(SequentialSampler(range(N)), BATCH, rank, world))
        results, printed = _evaluate(batches)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"results": results, "printed": printed, "n": sum(len(b) for b in batches)}, f)
    finally:
        dist.destroy_process_group()


def test_gathered_evaluation_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a child forked from a test process whose torch thread pools already ran can deadlock
    # (it did in the full suite); spawning imports torch again in each child, a few seconds
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    single_results, single_printed = _evaluate([list(range(i, min(i + BATCH, N))) for i in range(0, N, BATCH)])
    assert 0 < single_results["accuracy"] < 100 and "* total: 101\n" in single_printed
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["n"] for r in ranks] == [51, 50]  # each rank saw its own part only, no padding
    for r in ranks:  # every rank ends with the numbers of the whole split
        assert r["results"] == single_results
        assert r["printed"] == single_printed
