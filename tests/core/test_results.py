"""An experiment's results from the API: ``exp.results()`` as a table (text, HTML, pandas) and
``exp.plot()`` as learning curves (a figure, PNG and SVG files)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fedplug import ConfigError, Experiment
from fedplug.report import ResultsTable


def _experiment(sizes, data_seed, **settings) -> Experiment:
    """A logistic-regression experiment over nodes ``site-0``, ... of ``sizes`` records."""
    from fedplug import Dataset, Node

    rng = np.random.default_rng(data_seed)
    nodes = []
    for i, size in enumerate(sizes):
        x = rng.normal(size=(size, 4))
        y = (x[:, 0] + 0.3 * rng.normal(size=size) > 0).astype(np.int64)
        nodes.append(Node(f"site-{i}", Dataset(x, y, tags=["r"])))
    return Experiment(
        nodes=nodes,
        tags=["r"],
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        training_args={"batch_size": 8, "test_ratio": 0.25},
        progress=False,
        **settings,
    )


@pytest.fixture(scope="module")
def exp():
    exp = _experiment((40, 60), 3, round_limit=6, validate=2, seed=0)
    exp.run()
    return exp


def test_results_has_a_row_per_round_with_the_history_values(exp):
    table = exp.results()
    assert isinstance(table, ResultsTable) and len(table) == 6
    assert table.columns == [
        "round", "nodes", "train_loss", "val_loss", "val_accuracy", "failures", "round_s"
    ]  # fmt: skip
    for row, hist in zip(table, exp.history, strict=True):
        assert row["round"] == hist["round"] + 1 and row["nodes"] == 2
        assert row["train_loss"] == hist["train_loss_mean"]
        if "validation" in hist:
            assert row["val_accuracy"] == hist["validation_global"]["accuracy"]
        else:
            assert row["val_accuracy"] is None  # validated every 2 rounds
    assert [row["val_loss"] is not None for row in table] == [False, True] * 3


def test_results_per_node(exp):
    table = exp.results(per_node=True)
    assert len(table) == 12 and {row["node"] for row in table} == {"site-0", "site-1"}
    last = exp.history[-1]
    for row in table[-2:]:
        node = row["node"]
        assert row["train_samples"] == last["samples"][node]
        assert row["train_loss"] == last["train_loss"][node]
        assert row["test_samples"] == last["validation"][node]["n_samples"]
        assert row["val_accuracy"] == last["validation"][node]["accuracy"]


def test_results_become_a_data_frame_in_one_call_and_render_in_a_notebook(exp):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(exp.results())
    assert frame.shape == (6, 7)
    assert list(exp.results().to_pandas().columns) == exp.results().columns
    assert frame["train_loss"].is_monotonic_decreasing
    html = exp.results()._repr_html_()
    assert html.count("<tr>") == 7 and "<th>val_accuracy</th>" in html
    text = str(exp.results()).splitlines()
    assert text[0].split() == exp.results().columns and len(text) == 8


def test_plot_returns_a_figure_and_writes_png_and_svg(exp, tmp_path):
    pytest.importorskip("matplotlib")
    fig = exp.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "curve.svg").read_bytes()[:400]
    ax_loss, ax_metric = fig.axes
    labels = [line.get_label() for line in ax_loss.get_lines()]
    assert labels == ["train loss (weighted)", "validation loss (global)"]
    # each node's line says its test-set size
    metric_labels = [line.get_label() for line in ax_metric.get_lines()]
    sizes = {n: m["n_samples"] for n, m in exp.history[-1]["validation"].items()}
    assert metric_labels[1:] == [f"{n} (n={size})" for n, size in sizes.items()]
    for ax in fig.axes:  # the first and last rounds are on the axis
        ticks = list(ax.get_xticks())
        assert ticks[0] == 1 and ticks[-1] == 6
    low, high = ax_metric.get_ylim()  # a bounded metric is not zoomed to a sliver
    assert high - low >= 0.25
    fig.canvas.draw()  # the legends sit right of the axes, off the lines
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1


def test_plot_without_matplotlib_says_what_to_install(exp, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=r"pip install 'fedplug\[plot\]'"):
        exp.plot()


def _many_nodes_history(n_nodes: int, rounds: int = 3) -> list[dict]:
    """A history shaped as an experiment writes it, for ``n_nodes`` nodes whose accuracy is
    ``(i + 1) / n_nodes`` in the last round (node i)."""
    history = []
    for r in range(rounds):
        validation = {
            f"n{i}": {"accuracy": (i + 1) / n_nodes * (r + 1) / rounds, "loss": 1.0, "n_samples": 5}
            for i in range(n_nodes)
        }
        history.append(
            {
                "round": r,
                "train_loss_mean": 1.0 / (r + 1),
                "samples": {f"n{i}": 20 for i in range(n_nodes)},
                "validation": validation,
                "validation_global": {"accuracy": 0.5, "loss": 1.0, "n_samples": 5 * n_nodes},
            }
        )
    return history


def test_condensed_rows_keep_the_extremes_and_the_median_of_many_nodes():
    from fedplug.report import condensed_rows, results_rows

    rows = results_rows(_many_nodes_history(20), "accuracy")
    shown = condensed_rows(rows, 3)
    assert [row[0] for row in shown] == ["n0", "n1", "n2", "(14 more: median)", "n17", "n18",
                                         "n19", "global"]  # fmt: skip
    assert shown[3][3] == pytest.approx(np.median([(i + 1) / 20 for i in range(3, 17)]))
    assert shown[-1] == rows[-1]
    few = results_rows(_many_nodes_history(12), "accuracy")
    assert condensed_rows(few, 3) == few  # up to 4 * keep nodes: all of them
    rows[5][3] = None  # a node without the metric is listed among the lowest
    assert condensed_rows(rows, 3)[0][0] == "n5"


def test_a_plot_of_many_nodes_draws_their_spread_not_a_line_each():
    pytest.importorskip("matplotlib")
    from fedplug.report import MAX_NODE_CURVES, history_figure

    fig = history_figure(_many_nodes_history(MAX_NODE_CURVES + 1), "accuracy")
    _, ax_metric = fig.axes
    labels = [line.get_label() for line in ax_metric.get_lines()]
    assert labels == [f"global (n={5 * (MAX_NODE_CURVES + 1)})", "nodes, median"]
    [band] = ax_metric.collections
    assert band.get_label() == f"nodes, 10th-90th percentile ({MAX_NODE_CURVES + 1})"
    median = ax_metric.get_lines()[1].get_ydata()
    last = [(i + 1) / (MAX_NODE_CURVES + 1) for i in range(MAX_NODE_CURVES + 1)]
    assert median[-1] == pytest.approx(np.median(last))
    few = history_figure(_many_nodes_history(MAX_NODE_CURVES), "accuracy")
    assert len(few.axes[1].get_lines()) == 1 + MAX_NODE_CURVES


def test_result_rows_of_a_sampled_run_give_each_node_its_last_trained_samples():
    """With clients_per_round, a node trains in some rounds only: its row gives the samples of
    the last round it trained in, not a blank; the global row sums them."""
    from fedplug.report import results_rows

    exp = _experiment(range(20, 80, 10), 5, round_limit=4, clients_per_round=2, seed=1)
    history = exp.run()
    rows = results_rows(history, "accuracy")
    trained = {}
    for row in history:
        trained.update(row["samples"])
    assert len(history[-1]["samples"]) == 2 < len(trained)  # a sample each round
    assert {row[0]: row[1] for row in rows[:-1] if row[1] is not None} == trained
    assert rows[-1][1] == sum(trained.values())
