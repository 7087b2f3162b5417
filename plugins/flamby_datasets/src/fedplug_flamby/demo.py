"""``fedplug demo --flamby DATASET``: FLamby's benchmark for one dataset and algorithm."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedplug.report import format_table, results_rows, write_outputs
from fedplug_flamby.experiment import flamby_experiment, flamby_results


def run_flamby_demo(
    dataset: str = "fed_tcga_brca",
    algorithm: str = "fedavg",
    rounds: int | None = None,
    num_updates: int = 100,
    seed: int = 0,
    out: str | Path = "fedplug-demo",
    as_json: bool = False,
    progress: bool = True,
    accept_license: bool = False,
    workers: int | None = None,
    secagg: bool = False,
) -> dict[str, Any]:
    """Run the experiment; print the per-center table (or one JSON line); write results.json,
    model.npz and learning_curve.png under ``out``. Returns the JSON summary."""
    start = time.perf_counter()
    exp = flamby_experiment(
        dataset,
        num_updates=num_updates,
        round_limit=rounds,
        algorithm=algorithm,
        seed=seed,
        accept_license=accept_license,
        progress=progress and not as_json,
        workers=workers,
        secagg=secagg,
    )
    metric = exp.flamby_metric
    with exp:
        history = exp.run()
    seconds = time.perf_counter() - start
    results = flamby_results(history, metric)
    summary = {
        "dataset": dataset,
        "algorithm": algorithm,
        "secagg": secagg,
        "metric": metric,
        "rounds": len(history),
        "num_updates": num_updates,
        "per_center": results["per_center"],
        "mean": results["mean"],
        "seconds": round(seconds, 3),
    }
    out = Path(out)
    curve = write_outputs(
        out, summary, exp, metric, f"fedplug demo: FLamby {dataset}, {algorithm}", average="mean"
    )
    if as_json:
        print(json.dumps(summary))
    else:
        print()
        rows = results_rows(history, metric, average="mean")
        print(format_table(["center", "train samples", "test samples", metric, "loss"], rows))
        print(
            f"\n{len(history)} rounds of {num_updates} updates in {seconds:.2f} s; "
            f"results in {out / 'results.json'}"
        )
        if curve:
            print(f"learning curve: {curve}")
    return summary
