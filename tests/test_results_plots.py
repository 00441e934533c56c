"""tools.results --plot: which plots are drawn, what they hold, and that the CLI names each file it wrote."""
import struct
from pathlib import Path

import pytest

from tests.test_results import result_json
from tools.results import Options, build, collect
from tools.results.__main__ import main
from tools.results.plot import shot_series, write_plots

# method -> shots -> seed accuracies on EuroSAT
FEWSHOT = {"MPL": {1: [60.0, 62.0, 64.0], 4: [70.0, 71.0, 75.0], 16: [85.0, 86.0, 87.0]},
           "CoOp": {1: [50.0, 55.0, 60.0], 4: [65.0, 65.0, 65.0], 16: [80.0, 82.0, None]}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def fewshot_tree(root: Path, methods=("MPL", "CoOp")) -> Path:
    for method in methods:
        for shots, accs in FEWSHOT[method].items():
            for seed, acc in enumerate(accs, start=1):
                if acc is not None:
                    result_json(root / "fewshot" / "eurosat" / f"shots_{shots}" / method / f"seed{seed}",
                                method=method, dataset="EuroSAT", seed=seed, subsample="all", accuracy=acc,
                                eval_only=False, train_time_s=60.0 * shots, shots=shots)
    return root


def test_shot_series_has_means_and_seed_std(tmp_path):
    report = build("fewshot", collect(fewshot_tree(tmp_path / "out")), Options())
    series = shot_series(report)
    assert [k for k, *_ in series["MPL"]] == [1, 4, 16]
    k, mean, std, complete = series["MPL"][1]
    assert (k, complete) == (4, True) and mean == pytest.approx(72.0)
    assert std == pytest.approx((((70 - 72) ** 2 + (71 - 72) ** 2 + (75 - 72) ** 2) / 3) ** 0.5)
    assert series["CoOp"][2][1] == pytest.approx(81.0) and not series["CoOp"][2][3]  # seed 3 missing: partial


def test_cli_fewshot_writes_both_plots_and_names_them(tmp_path, capsys):
    out = tmp_path / "tables"
    assert main([str(fewshot_tree(tmp_path / "out")), "--protocol", "fewshot", "--out", str(out), "--plot",
                 "--quiet", "--plot-size", "640x480"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote plot: {out / 'fewshot_time.png'}" in printed
    assert f"wrote plot_shots: {out / 'fewshot_shots.png'}" in printed
    assert png_size(out / "fewshot_shots.png") == (640, 480) == png_size(out / "fewshot_time.png")


def test_time_plot_needs_more_than_one_method(tmp_path, capsys):
    root = fewshot_tree(tmp_path / "out", methods=("MPL",))
    out = tmp_path / "tables"
    assert main([str(root), "--protocol", "fewshot", "--out", str(out), "--plot", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "fewshot_time.png").exists()
    assert "no plot: fewshot_time.png: needs more than one method with accuracy and training time (only MPL)" \
        in printed
    assert "wrote plot_shots:" in printed and png_size(out / "fewshot_shots.png") == (800, 600)


def test_time_plot_labels_every_point(tmp_path, monkeypatch):
    """Each point carries its method's name (and shots) as text on the plot."""
    from matplotlib.axes import Axes

    labels = []
    real = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *a, **k: (labels.append(text), real(self, text, *a, **k))[1])
    report = build("fewshot", collect(fewshot_tree(tmp_path / "out")), Options())
    written, skipped = write_plots(report, tmp_path)
    assert skipped == [] and set(written) == {"plot", "plot_shots"}
    time_labels = labels[:6]
    assert sorted(time_labels) == sorted(["MPL 1-shot (62.0)", "MPL 4-shot (72.0)", "MPL 16-shot (86.0)",
                                          "CoOp 1-shot (55.0)", "CoOp 4-shot (65.0)", "CoOp 16-shot (81.0) partial"])
    assert sorted(labels[6:]) == ["CoOp", "MPL"]  # the shots plot names each line at its end
