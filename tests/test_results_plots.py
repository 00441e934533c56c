"""tools.results --plot: which plots are drawn, what they hold, and that the CLI names each file it wrote."""
import json
import random
import struct
from pathlib import Path

import pytest

from tests.test_results import result_json
from tools.results import Options, build, collect
from tools.results.__main__ import main
from tools.results.plot import shot_series, write_plots

from plot_checks import covered_points, text_overlaps, texts_outside

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


def figures_of(report, folder, monkeypatch):
    """The figures write_plots draws for ``report`` (still written to ``folder``), by file name."""
    import tools.results.plot as plot_module

    saved = {}
    real = plot_module._save
    monkeypatch.setattr(plot_module, "_save", lambda fig, path, dpi: (saved.__setitem__(Path(path).name, fig),
                                                                      real(fig, path, dpi))[1])
    written, skipped = write_plots(report, folder)
    assert skipped == []
    return saved


def label_texts(fig):
    return sorted(t.get_text() for t in fig.axes[0].texts)


def test_time_plot_labels_every_point(tmp_path, monkeypatch):
    """Each point carries its shots as text; the legend names the lines."""
    report = build("fewshot", collect(fewshot_tree(tmp_path / "out")), Options())
    fig = figures_of(report, tmp_path, monkeypatch)["fewshot_time.png"]
    assert label_texts(fig) == sorted(["1", "4", "16"] * 2)
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["CoOp", "MPL"]


# ------------------------------------------------------------------------------------------ the demo's pictures
DEMO_FEWSHOT = {"CoOp": 60, "ProGrad": 66, "MaPLe": 62, "TCP": 64, "MPL": 65}  # 1-shot level; +6 per doubling
# the offline demo's base-to-new table (README): Base, New, and a training time per run (s)
DEMO_B2N = {"ZeroshotCLIP": (83.76, 87.36, 0.0), "CoOp": (87.45, 75.71, 40.0), "ProGrad": (84.38, 86.74, 60.0),
            "MaPLe": (88.44, 78.31, 45.0), "TCP": (85.36, 79.80, 42.0), "MPL": (86.22, 86.25, 50.0),
            "PromptKD": (89.42, 88.10, 300.0)}


def demo_record(folder, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"schema": 1, "status": "finished", "config": "tiny_digits", "dataset": "Digits", "dataset_config": "digits",
           "epochs": 10, "split": "test", "output_dir": str(folder), "finished_at": "2026-01-01T00:00:00Z", **kw}
    (folder / "result.json").write_text(json.dumps(rec))


@pytest.fixture
def demo_tree(tmp_path):
    """The demo's methods on Digits: few-shot at 1-16 shots, seeds 1-3 (close lines, crowded at 1 shot), zero-shot
    CLIP's all-class run where scripts/zsclip/xd_test.sh writes it, and the README's base-to-new table."""
    root = tmp_path / "out"
    rng = random.Random(0)
    for method, level in DEMO_FEWSHOT.items():
        for k in (1, 2, 4, 8, 16):
            for seed in (1, 2, 3):
                demo_record(root / f"fewshot/digits/shots_{k}/{method}/tiny_digits/seed{seed}", method=method,
                            seed=seed, subsample="all", shots=k, eval_only=False,
                            accuracy=level + 6 * k.bit_length() + rng.uniform(-1.5, 1.5),
                            train_time_s=3.0 * k + 20 + rng.uniform(0, 2))
    demo_record(root / "crossdataset/evaluation/digits/ZeroshotCLIP/tiny_digits_16shots/seed1", method="ZeroshotCLIP",
                seed=1, subsample="all", shots=16, eval_only=True, accuracy=75.6, train_time_s=0.0)
    for method, (base, new, seconds) in DEMO_B2N.items():
        for seed in (1, 2, 3):
            tail = f"digits/shots_16/{method}/tiny_digits/seed{seed}"
            demo_record(root / "base2new/train_base" / tail, method=method, seed=seed, subsample="base", shots=16,
                        eval_only=seconds == 0, accuracy=base, train_time_s=seconds)
            demo_record(root / "base2new/test_new" / tail, method=method, seed=seed, subsample="new", shots=16,
                        eval_only=True, accuracy=new, train_time_s=0.0)
    return root


def assert_readable(fig):
    assert text_overlaps(fig) == [] and texts_outside(fig) == []
    assert covered_points(fig, fig.axes[0]) == []


def test_fewshot_plots_of_the_demo_are_readable_with_a_zero_shot_star(demo_tree, tmp_path, monkeypatch):
    report = build("fewshot", collect(demo_tree), Options())
    row = next(r for r in report.summary["rows"] if r["label"] == "ZeroshotCLIP" and r["dataset"] == "Digits")
    assert row["shots"] == 0 and row["accuracy"]["mean"] == pytest.approx(75.6) and row["accuracy"]["n"] == 1
    assert report.summary["missing"] == []  # zero-shot learns from nothing: one seed is all it needs
    figs = figures_of(report, tmp_path, monkeypatch)
    shots, times = figs["fewshot_shots.png"], figs["fewshot_time.png"]
    for fig in (shots, times):
        assert_readable(fig)
    ax = shots.axes[0]
    star = [line for line in ax.lines if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [0.0] and star[0].get_ydata()[0] == pytest.approx(75.6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "4", "8", "16"]
    renderer = shots.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the axes: it hides no point
    assert "ZeroshotCLIP (0 shots)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # every training point has its shots as a label; zero-shot trains for no time and is not on this plot
    assert label_texts(times) == sorted(["1", "2", "4", "8", "16"] * len(DEMO_FEWSHOT))


def test_base2new_time_plot_of_the_demo_labels_each_method_clear_of_the_others(demo_tree, tmp_path, monkeypatch):
    report = build("base2new", collect(demo_tree), Options())
    fig = figures_of(report, tmp_path, monkeypatch)["base2new_time.png"]
    assert_readable(fig)
    assert fig.axes[0].get_legend() is None  # the labels name the points
    assert [t.split(" (")[0] for t in label_texts(fig)] == sorted(DEMO_B2N)
