"""What a round reports: history rows, metrics averaged over nodes, and the progress bar."""

from __future__ import annotations

from typing import Any


def mean_over_nodes(per_node: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric of per-node validation results averaged over the nodes that report it with
    test samples, unweighted (FLamby's "mean over clients"); ``Experiment.evaluate()``'s first
    value is such a ``per_node`` dict."""
    reporting = [m for m in per_node.values() if m.get("n_samples")]
    keys = sorted({k for m in reporting for k in m if k != "n_samples"})
    return {
        key: sum(m[key] for m in reporting if key in m) / sum(key in m for m in reporting)
        for key in keys
    }


def weighted_metrics(replies: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict]:
    """Per-node metrics of evaluation replies, and their average weighted by test samples
    (over the metrics every node with test samples reports), with ``n_samples``."""
    per_node = {node: dict(r.metrics, n_samples=r.n_samples) for node, r in sorted(replies.items())}
    total = sum(r.n_samples for r in replies.values())
    overall: dict[str, float] = {}
    if total:
        keys = set.intersection(*(set(r.metrics) for r in replies.values() if r.n_samples))
        for key in sorted(keys):
            overall[key] = (
                sum(r.metrics[key] * r.n_samples for r in replies.values() if r.n_samples) / total
            )
    overall["n_samples"] = total
    return per_node, overall


def train_summary(index: int, replies: dict[str, Any]) -> dict[str, Any]:
    """A round's history row, as far as training goes."""
    samples = {node: r.n_samples for node, r in sorted(replies.items())}
    total = sum(samples.values())
    return {
        "round": index,
        "nodes": sorted(replies),
        "samples": samples,
        "train_loss": {node: r.train_loss for node, r in sorted(replies.items())},
        "train_loss_mean": sum(r.train_loss * r.n_samples for r in replies.values()) / total,
        "node_train_s": {node: r.duration_s for node, r in sorted(replies.items())},
    }


def progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="rounds", unit="round", dynamic_ncols=True, leave=True)


def postfix(row: dict[str, Any]) -> str:
    parts = [f"train_loss={row['train_loss_mean']:.4f}"]
    for key, value in row.get("validation_global", {}).items():
        if key != "n_samples":
            parts.append(f"val_{key}={value:.4f}")
    return " ".join(parts)
