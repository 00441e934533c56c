"""``bench/gpu_check.sh``'s CPU mode (the tiny CLIP, in-process), so the GPU check cannot rot between GPU runs: the
report is written as JSON and Markdown with the figures each part measured, one failing part is reported while
the rest runs, and the time budget skips what does not fit."""
import json

import pytest

from bench import gpu_check

CHEAP = ["environment", "selfcheck", "text_overhead", "mpl_fp16_b4", "caspl", "families"]


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_cpu_mode_measures_and_writes_the_report(tmp_path):
    out = tmp_path / "check"
    assert gpu_check.main([str(out), "--cpu", "--parts", *CHEAP]) == 0
    parts = _report(out)["parts"]
    assert list(parts) == CHEAP and all(p["status"] == "ok" for p in parts.values()), parts
    sc = parts["selfcheck"]["result"]
    assert sc["largest_vs_fp64"]["fp32"]["diff"] < 1e-5 and not sc["failed"]
    assert 0 < sc["largest_vs_fp64"]["fp16"]["diff"] <= sc["tolerance"]["fp16"] and "CoOp" in sc["bf16_over_fp16"]
    mpl = parts["mpl_fp16_b4"]["result"]
    assert mpl["train"]["5"]["speedup_vs_77"] > 0 and mpl["train"]["5"]["x_floor"] > 0
    assert mpl["eval"]["imagenet_images_per_s"] > 0 and mpl["eval"]["text_speedup_vs_77"] > 0
    assert parts["caspl"]["result"]["logit_difference"] == 0
    assert parts["text_overhead"]["result"]["planner_constant"] == 32
    families = parts["families"]["result"]
    assert set(families) == {"MPL[3]", "MMA[3]", "CLIPLoRA[3]", "MMRL[3]"}
    assert all(r["x_floor"] > 0 and r["logit_difference"] < 1e-5 for r in families.values()), families
    md = (out / "report.md").read_text()
    assert "| mpl_fp16_b4 | ok |" in md and "| classes | step ms |" in md
    assert (out / "logs" / "mpl_fp16_b4.log").read_text()


def test_a_failing_part_is_reported_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(ctx, budget):
        raise ValueError("measured nothing")

    parts = [(n, broken if n == "text_overhead" else f, b) for n, f, b in gpu_check.PARTS]
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    out = tmp_path / "check"
    assert gpu_check.main([str(out), "--cpu", "--parts", "environment", "text_overhead", "fast_suite"]) == 1
    got = _report(out)["parts"]
    assert got["text_overhead"]["status"] == "FAIL ValueError: measured nothing"
    assert got["environment"]["status"] == "ok" and got["fast_suite"]["status"].startswith("skipped: CPU mode")
    assert "measured nothing" in (out / "report.md").read_text()


def test_a_selfcheck_cut_short_keeps_the_rows_it_wrote(tmp_path, monkeypatch):
    def stopped(ctx, name, module, argv, timeout):
        path = argv[argv.index("--json") + 1]
        row = {"method": "CoOp", "precision": "fp32", "status": "ok", "fp64_diff": 1e-7}
        path.write_text(json.dumps({"tolerance": {"fp32": 0.005}, "rows": [row]}))
        raise TimeoutError("stopped after its budget of 1 s")

    monkeypatch.setattr(gpu_check.Context, "module", stopped)
    out = tmp_path / "check"
    assert gpu_check.main([str(out), "--cpu", "--parts", "selfcheck"]) == 1
    part = _report(out)["parts"]["selfcheck"]
    assert part["status"] == "FAIL TimeoutError: stopped after its budget of 1 s after 1 rows"
    assert part["result"]["rows"] == 1 and part["result"]["largest_vs_fp64"]["fp32"]["diff"] == 1e-7


def test_the_budget_skips_what_does_not_fit(tmp_path):
    out = tmp_path / "check"
    assert gpu_check.main([str(out), "--cpu", "--budget", "1", "--parts", "environment", "selfcheck"]) == 0
    assert {p["status"] for p in _report(out)["parts"].values()} == {"skipped: out of time"}


def test_unknown_parts_are_one_error(tmp_path, capsys):
    assert gpu_check.main([str(tmp_path / "x"), "--cpu", "--parts", "nope"]) == 2
    assert "unknown parts ['nope']" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_whole_cpu_mode(tmp_path):
    """Every part, as ``bash bench/gpu_check.sh OUT --cpu`` runs them (about a minute here)."""
    import subprocess

    out = tmp_path / "check"
    run = subprocess.run(["bash", str(gpu_check.REPO / "bench" / "gpu_check.sh"), str(out), "--cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    parts = _report(out)["parts"]
    assert [n for n, _, _ in gpu_check.PARTS] == list(parts)
    assert all(p["status"] == "ok" or p["status"].startswith("skipped: CPU mode") for p in parts.values()), parts
    cuda = parts["cuda_tests"]["result"]["counts"]
    assert cuda.get("skipped", 0) > 0 and not cuda.get("passed") and not cuda.get("failed")
    assert parts["compile"]["result"]["modes"]["eager"]["exact"] is True
    assert "every part that ran passed" in run.stdout
