"""Readable results: plain-text tables and learning-curve plots of an experiment's history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
    """Per-node rows (train samples, test samples, metric, loss) of the last validated round, then
    a ``global`` row weighted by test samples, or with ``average="mean"`` a ``mean`` row averaged
    over nodes (FLamby's "mean over clients")."""
    validated = [row for row in history if "validation" in row]
    if not validated:
        return []
    last = validated[-1]
    rows = []
    for node, metrics in last["validation"].items():
        rows.append(
            [
                node,
                last["samples"].get(node),
                metrics.get("n_samples"),
                metrics.get(metric),
                metrics.get("loss"),
            ]
        )
    overall = last["validation_mean" if average == "mean" else "validation_global"]
    rows.append(
        [
            average,
            sum(last["samples"].values()),
            last["validation_global"].get("n_samples"),
            overall.get(metric),
            overall.get("loss"),
        ]
    )
    return rows


def plot_history(
    history: list[dict[str, Any]],
    path: str | Path,
    metric: str = "accuracy",
    title: str = "",
    average: str = "global",
) -> Path | None:
    """Write a PNG of training loss and validation ``metric`` (per node, and their ``global``
    average weighted by test samples or unweighted ``mean``) by round.

    Returns None when matplotlib is not installed (``pip install 'fedplug[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    rounds = [row["round"] + 1 for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(
        rounds,
        [row["train_loss_mean"] for row in history],
        marker="o",
        label="train loss (weighted)",
    )
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    validated = [row for row in history if "validation" in row]
    if validated:
        xs = [row["round"] + 1 for row in validated]
        ax_metric.plot(
            xs,
            [
                row["validation_mean" if average == "mean" else "validation_global"].get(metric)
                for row in validated
            ],
            marker="o",
            linewidth=2.5,
            label=average,
        )
        for node in validated[-1]["validation"]:
            ax_metric.plot(
                xs,
                [row["validation"].get(node, {}).get(metric) for row in validated],
                linestyle="--",
                alpha=0.8,
                label=node,
            )
    ax_metric.set_xlabel("round")
    ax_metric.set_ylabel(metric)
    ax_metric.set_title(f"validation {metric} of the global model")
    ax_metric.grid(alpha=0.3)
    ax_metric.legend(loc="lower right")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
