"""``python -m tools.selfcheck``: one table of methods x precisions (run here on a CPU with the tiny backbone)."""
import re

from tools import selfcheck


def test_selfcheck_prints_one_row_per_method_and_precision(tmp_path, capsys):
    rc = selfcheck.main(["--device", "cpu", "--backbone", "tiny", "--cpu-half", "--steps", "1",
                         "--methods", "CoOp", "MaPLe", "--precisions", "fp32", "amp", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| (CoOp|MaPLe) \|", line)]
    assert rc == 0, out
    assert [r.split(" | ")[:3] for r in rows] == [["| CoOp", "fp32", "ok"], ["| CoOp", "amp", "ok"],
                                                  ["| MaPLe", "fp32", "ok"], ["| MaPLe", "amp", "ok"]]
    amp = rows[1].split(" | ")
    assert re.fullmatch(r"\d+\.\d\d%", amp[7].rstrip(" |"))  # logit difference against fp32 reported
    assert float(amp[4]) > 0 and float(amp[5]) > 0  # speeds measured
    # every row against an fp64 computation on the same weights, within its precision's tolerance
    fp32, amp_fp64 = float(rows[0].split(" | ")[8]), float(amp[8])
    assert fp32 < 1e-5 and 0 < amp_fp64 <= selfcheck.TOLERANCE["amp"]


def test_fp64_reference_runs_in_float64_and_restores_the_trainer(tmp_path, tiny_ckpt, eurosat_root):
    import torch

    from tiny_runs import build_for_classes, fixed_batch, tiny_cfg

    trainer = build_for_classes(tiny_cfg(eurosat_root, tiny_ckpt, "TCP", tmp_path))  # a method with a fp32 cast
    trainer.set_model_mode("eval")
    images = fixed_batch(4)["img"]
    with torch.no_grad():
        before = trainer.model_inference(images)
    ref = selfcheck.fp64_logits(trainer, images)
    assert ref.dtype == torch.float64 and not torch.equal(ref.float(), before)  # computed in fp64, not rounded fp32
    assert ((ref - before.double()).abs().max() / ref.abs().max()).item() < 1e-5
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(trainer.model_inference(images), before)


def test_a_row_beyond_its_tolerance_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(selfcheck.TOLERANCE, "amp", 1e-9)
    rc = selfcheck.main(["--device", "cpu", "--backbone", "tiny", "--cpu-half", "--steps", "1", "--methods", "CoOp",
                         "--precisions", "amp", "--workdir", str(tmp_path)])
    assert rc == 1 and "| CoOp | amp | FAIL beyond tolerance |" in capsys.readouterr().out


def test_selfcheck_refuses_unknown_methods(capsys):
    assert selfcheck.main(["--device", "cpu", "--backbone", "tiny", "--methods", "NoSuchMethod"]) == 2
    assert "unknown methods ['NoSuchMethod']" in capsys.readouterr().err
