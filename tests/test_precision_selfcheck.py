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


def test_selfcheck_refuses_unknown_methods(capsys):
    assert selfcheck.main(["--device", "cpu", "--backbone", "tiny", "--methods", "NoSuchMethod"]) == 2
    assert "unknown methods ['NoSuchMethod']" in capsys.readouterr().err
