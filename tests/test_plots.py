"""Plots people read: whole-number epochs and blocks, legends for what is marked, readable text."""

from types import SimpleNamespace

import numpy as np
from matplotlib.colors import to_rgb

from clip_hba.evaluation import plots


def _tick_values(axis):
    return [t for t in axis.get_majorticklocs()]


def test_learning_curves_have_whole_epoch_ticks():
    log = [
        {"epoch": e, "train_loss": 10.0 / (e + 1), "val_loss": 9.0 / (e + 1), "rdm48_spearman": 0.1}
        for e in range(4)
    ]
    fig = plots._learning_curves_figure(log)
    for ax in fig.axes:
        ticks = _tick_values(ax.xaxis)
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_layer_weights_are_labelled_by_whole_blocks_from_1():
    times = np.arange(-100, 300, 5.0)
    weights = np.full((times.size, 5), 0.2)
    fig = plots._layer_weights_figure(weights, times, np.zeros((5, times.size)), times)
    for ax in fig.axes[:2]:  # the two heatmaps (then their colour bars)
        ticks = _tick_values(ax.yaxis)
        assert all(float(t).is_integer() for t in ticks)
        fig.canvas.draw()
        labels = {t.get_text() for t in ax.get_yticklabels()} - {""}
        assert labels <= {"1", "2", "3", "4", "5"} and labels


def test_layer_time_has_no_best_layer_entry_without_significant_times():
    times = np.arange(0, 100, 10.0)
    matrix = np.random.default_rng(0).random((3, times.size))
    labels = ["block_1", "block_2", "block_3"]
    none = plots._layer_time_figure(matrix, times, labels, significant=np.zeros(times.size, bool))
    assert none.axes[0].get_legend() is None
    assert not [line for line in none.axes[0].get_lines() if "best" in line.get_label()]
    some = np.zeros(times.size, bool)
    some[4] = True
    marked = plots._layer_time_figure(matrix, times, labels, significant=some)
    legend = marked.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["best layer (significant times)"]


def test_specificity_explains_its_frames_and_cells_are_readable():
    matrix = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.05, 0.7]])
    result = SimpleNamespace(
        matrix=matrix, participants=("a", "b", "c"), difference=0.5, p_value=0.17
    )
    fig = plots._specificity_figure(result)
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any("column maximum" in t for t in texts)
    ax = fig.axes[0]
    colours = {t.get_text(): to_rgb(t.get_color()) for t in ax.texts}
    # viridis: high values are light (dark text), low values dark (light text)
    assert sum(colours["0.900"]) < 1.5 < sum(colours["0.050"])


def test_robustness_plot_says_when_a_score_is_missing(tmp_path):
    rows = [
        {"severity": s, "rdm48_spearman": 0.5 - 0.1 * s, "odd_one_out_accuracy": None}
        for s in (1, 2)
    ]
    result = {
        "model": "run",
        "clean": {"rdm48_spearman": 0.6, "odd_one_out_accuracy": None},
        "corruptions": {"blur": rows},
    }
    path = plots.plot_corruptions(result, tmp_path / "robustness.png")
    assert path.stat().st_size > 0
    fig = plots._corruptions_figure(result)
    assert any("no odd-one-out score" in t.get_text() for t in fig.axes[1].texts)
    assert not fig.axes[0].texts
