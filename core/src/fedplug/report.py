"""Readable results: plain-text tables and learning-curve plots of an experiment's history."""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: beyond this many nodes, a learning curve draws their spread instead of one curve each
MAX_NODE_CURVES = 12


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table; floats get 4 decimals, numbers are right-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[i], (int, float)) for row in rows if row[i] is not None)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def results_rows(
    history: list[dict[str, Any]], metric: str, average: str = "global"
) -> list[list[Any]]:
    """Per-node rows (train samples, test samples, metric, loss) of the last validated round,
    then a ``global`` row weighted by test samples, or with ``average="mean"`` a ``mean`` row
    averaged over nodes (FLamby's "mean over clients"). A node's train samples are those of the
    last round it trained in (with ``clients_per_round``, not every node trains every round); the
    average row's are their sum."""
    validated = [row for row in history if "validation" in row]
    if not validated:
        return []
    last = validated[-1]
    trained: dict[str, Any] = {}
    for row in history:  # up to the last validated round
        trained.update(row.get("samples", {}))
        if row is last:
            break
    rows = []
    for node, metrics in last["validation"].items():
        rows.append(
            [
                node,
                trained.get(node),
                metrics.get("n_samples"),
                metrics.get(metric),
                metrics.get("loss"),
            ]
        )
    overall = last["validation_mean" if average == "mean" else "validation_global"]
    rows.append(
        [
            average,
            sum(trained.values()),
            last["validation_global"].get("n_samples"),
            overall.get(metric),
            overall.get("loss"),
        ]
    )
    return rows


def condensed_rows(rows: Sequence[Sequence[Any]], keep: int = 3) -> list[list[Any]]:
    """:func:`results_rows` for a terminal: with more than ``4 * keep`` nodes, the ``keep``
    nodes of lowest metric (a node without one counts as lowest), one row for the others (their
    count and median metric), the ``keep`` of highest metric, then the average row; fewer nodes
    are returned as they are."""
    *nodes, average = rows if rows else [None]
    if average is None or len(nodes) <= 4 * keep:
        return [list(row) for row in rows]
    ranked = sorted(nodes, key=lambda row: (row[3] is not None, row[3] or 0))  # no metric: first
    middle = ranked[keep:-keep]
    values = [row[3] for row in middle if row[3] is not None]
    median = float(np.median(values)) if values else None
    summary = [f"({len(middle)} more: median)", None, None, median, None]
    return [*map(list, ranked[:keep]), summary, *map(list, ranked[-keep:]), list(average)]


class ResultsTable(list):
    """An experiment's results as rows (dicts with the same keys, in ``columns`` order): a list
    that ``pandas.DataFrame(table)`` takes as is (or :meth:`to_pandas`), that prints as a text
    table and that a notebook renders as an HTML table."""

    def __init__(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        super().__init__(rows)
        self.columns = list(columns)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the rows (pandas must be installed)."""
        import pandas as pd

        return pd.DataFrame(list(self), columns=self.columns)

    def __str__(self) -> str:
        return format_table(self.columns, [[row.get(c) for c in self.columns] for row in self])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        def cell(value: Any) -> str:
            text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else value
            return html.escape(str(text))

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in self.columns) + "</tr>"
            for row in self
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def results_table(history: list[dict[str, Any]], per_node: bool = False) -> ResultsTable:
    """The history as a table: a row per round (``round`` counted from 1, nodes that trained,
    weighted train loss, the global model's validation metrics as ``val_<name>`` on the
    validated rounds, failures, seconds), or with ``per_node`` a row per round and node (train
    samples and loss, test samples and validation metrics, training seconds)."""
    names: list[str] = []
    for row in history:
        for metrics in [row.get("validation_global", {}), *row.get("validation", {}).values()]:
            names += [n for n in metrics if n != "n_samples" and n not in names]
    names.sort(key=lambda n: (n != "loss", n))
    if per_node:
        columns = ["round", "node", "train_samples", "train_loss", "test_samples"]
        columns += [f"val_{n}" for n in names] + ["train_s"]
        rows = []
        for row in history:
            validation = row.get("validation", {})
            for node in sorted(set(row["nodes"]) | set(validation)):
                metrics = validation.get(node, {})
                rows.append(
                    {
                        "round": row["round"] + 1,
                        "node": node,
                        "train_samples": row["samples"].get(node),
                        "train_loss": row["train_loss"].get(node),
                        "test_samples": metrics.get("n_samples"),
                        **{f"val_{n}": metrics.get(n) for n in names},
                        "train_s": row.get("node_train_s", {}).get(node),
                    }
                )
        return ResultsTable(rows, columns)
    columns = ["round", "nodes", "train_loss", *(f"val_{n}" for n in names), "failures"]
    columns.append("round_s")
    rows = []
    for row in history:
        overall = row.get("validation_global", {})
        rows.append(
            {
                "round": row["round"] + 1,
                "nodes": len(row["nodes"]),
                "train_loss": row["train_loss_mean"],
                **{f"val_{n}": overall.get(n) for n in names},
                "failures": len(row.get("failures", {})) + len(row.get("validation_failures", {})),
                "round_s": row.get("durations", {}).get("round_s"),
            }
        )
    return ResultsTable(rows, columns)


def default_metric(history: list[dict[str, Any]]) -> str:
    """The validation metric a history reports besides the loss (``accuracy`` for the built-in
    plans), or ``loss`` when it has none."""
    for row in reversed(history):
        for name in row.get("validation_global", {}):
            if name not in ("loss", "n_samples"):
                return name
    return "loss"


def history_figure(
    history: list[dict[str, Any]],
    metric: str | None = None,
    title: str = "",
    average: str = "global",
) -> Any:
    """A matplotlib ``Figure`` of the history: training and validation loss, and the validation
    ``metric`` of the global model (its ``global`` average weighted by test samples, or the
    unweighted ``mean``, and each node's, labelled with its test-set size). Made without pyplot,
    so it changes no backend (a notebook shows it inline). The first and last rounds are marked
    on the x axis; a bounded metric (in [0, 1]) is never zoomed to less than a quarter of its
    range, so that one test sample does not look like a collapse. Beyond
    :data:`MAX_NODE_CURVES` nodes, their median and 10th-90th percentile band replace the
    per-node curves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = metric or default_metric(history)
    key = "validation_mean" if average == "mean" else "validation_global"
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    rounds = [row["round"] + 1 for row in history]
    ax_loss.plot(rounds, [row["train_loss_mean"] for row in history], marker="o", markersize=3,
                 label="train loss (weighted)")  # fmt: skip
    validated = [row for row in history if "validation" in row]
    xs = [row["round"] + 1 for row in validated]
    if validated:
        ax_loss.plot(xs, [row[key].get("loss") for row in validated], marker="s", markersize=3,
                     label=f"validation loss ({average})")  # fmt: skip
        values = [row[key].get(metric) for row in validated]
        tested = validated[-1]["validation_global"].get("n_samples")
        ax_metric.plot(xs, values, marker="o", markersize=3, linewidth=2.5,
                       label=f"{average} (n={tested})")  # fmt: skip
        last_nodes = validated[-1]["validation"]
        if len(last_nodes) > MAX_NODE_CURVES:  # a band of the nodes' spread, not a line each
            values += _node_spread(ax_metric, xs, validated, metric, len(last_nodes))
        else:
            for node, metrics in last_nodes.items():
                node_values = [row["validation"].get(node, {}).get(metric) for row in validated]
                values += node_values
                ax_metric.plot(xs, node_values, linestyle="--", alpha=0.8,
                               label=f"{node} (n={metrics.get('n_samples')})")  # fmt: skip
        finite = [v for v in values if isinstance(v, (int, float))]
        if finite and metric != "loss" and min(finite) >= 0.0 and max(finite) <= 1.0:
            low, high = min(finite), max(finite)
            span = max(high - low, 0.25)
            top = min(1.0, max(high, low + span))
            ax_metric.set_ylim(max(0.0, top - span) - 0.02, top + 0.02)
    ax_loss.set_title("loss")
    ax_metric.set_title(f"validation {metric} of the global model")
    ax_metric.set_ylabel(metric)
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if rounds:
            ax.set_xlim(rounds[0] - 0.5, rounds[-1] + 0.5)
            gap = 0.06 * (rounds[-1] - rounds[0])  # no tick crowding the first or the last
            ticks = [t for t in ax.get_xticks() if rounds[0] + gap < t < rounds[-1] - gap]
            ax.set_xticks(sorted({rounds[0], *ticks, rounds[-1]}))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    _show_inline(Figure)
    return fig


def _node_spread(
    ax: Any, xs: list[int], validated: list[dict[str, Any]], metric: str, n_nodes: int
) -> list[float]:
    """Draw the nodes' median ``metric`` per round and the band of their 10th to 90th
    percentiles; return the values drawn (for the axis limits)."""
    low, middle, high = [], [], []
    for row in validated:
        found = [m.get(metric) for m in row["validation"].values()]
        found = [v for v in found if isinstance(v, (int, float))]
        p10, p50, p90 = np.percentile(found, [10, 50, 90]) if found else (np.nan,) * 3
        low.append(float(p10))
        middle.append(float(p50))
        high.append(float(p90))
    ax.fill_between(xs, low, high, alpha=0.25, label=f"nodes, 10th-90th percentile ({n_nodes})")
    ax.plot(xs, middle, linestyle="--", label="nodes, median")
    return low + middle + high


def _show_inline(figure_class: type) -> None:
    """In IPython (a notebook), let a figure made without pyplot display as a PNG when it is a
    cell's value, as ``%matplotlib inline`` does for pyplot's figures."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    from IPython.core.pylabtools import print_figure

    formatter = shell.display_formatter.formatters["image/png"]
    formatter.for_type(figure_class, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


def plot_history(
    history: list[dict[str, Any]],
    path: str | Path,
    metric: str | None = None,
    title: str = "",
    average: str = "global",
    formats: Sequence[str] = ("png", "svg"),
) -> Path | None:
    """Write the learning curves (:func:`history_figure`) as ``path`` with each of ``formats``'
    suffixes (PNG for a glance, SVG to zoom and to put in a paper); return the first file.

    Returns None when matplotlib is not installed (``pip install 'fedplug[plot]'``).
    """
    try:
        fig = history_figure(history, metric, title, average)
    except ImportError:
        return None
    return save_figure(fig, path, formats)


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] = ("png", "svg")) -> Path:
    """Write ``fig`` as ``path`` with each of ``formats``' suffixes; return the first file."""
    targets = [Path(path).with_suffix(f".{suffix}") for suffix in formats]
    for target in targets:
        fig.savefig(target, dpi=110)
    return targets[0]


def write_outputs(
    out: str | Path,
    summary: dict[str, Any],
    experiment: Any,
    metric: str,
    title: str,
    average: str = "global",
) -> Path | None:
    """Write a demo's ``results.json`` (summary and history), ``model.npz`` and
    ``learning_curve.png`` under ``out``; return the curve's path (None without matplotlib)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = experiment.history
    (out / "results.json").write_text(
        json.dumps({"summary": summary, "history": history}, indent=2)
    )
    experiment.save_model(out / "model.npz")
    return plot_history(history, out / "learning_curve.png", metric, title, average=average)
