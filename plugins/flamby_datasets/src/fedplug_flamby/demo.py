"""``fedplug demo --flamby DATASET``: FLamby's benchmark for one dataset and algorithm."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from fedplug.errors import ConfigError
from fedplug.report import format_table, results_rows, write_outputs
from fedplug_flamby.datasets import center_datasets, dataset_module
from fedplug_flamby.experiment import flamby_experiment, flamby_federation, flamby_results


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
    transport: str = "local",
) -> dict[str, Any]:
    """Run the experiment; print the per-center table (or one JSON line); write results.json,
    model.npz and learning_curve.png under ``out``. Returns the JSON summary.

    With ``transport="grpc"`` each center is a ``fedplug node start`` process holding its
    FLamby data (:func:`~fedplug_flamby.experiment.flamby_federation`, set up under
    ``out/grpc``), connected over TLS on loopback; stopped at the end, also on Ctrl-C."""
    if transport not in ("local", "grpc"):
        raise ConfigError(f"--transport must be 'local' or 'grpc', got {transport!r}")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        nodes = None
        if transport == "grpc":
            dataset_module(dataset)  # an unknown name fails here, listing the datasets
            # The centers run on this machine: check the data terms once, here, so that a
            # refusal reads as in the local demo rather than in every node's log.
            center_datasets(dataset, 0, accept_license=accept_license)
            nodes = stack.enter_context(
                flamby_federation(
                    dataset, Path(out) / "grpc", accept_license=accept_license, report_to=sys.stderr
                )
            )
        exp = flamby_experiment(
            dataset,
            num_updates=num_updates,
            round_limit=rounds,
            algorithm=algorithm,
            seed=seed,
            accept_license=accept_license,
            progress=progress and not as_json,
            workers=None if nodes is not None else workers,
            secagg=secagg,
            nodes=nodes,
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
        "transport": transport,
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
