"""FLamby's benchmark row for Fed-TCGA-BRCA, reproduced with fedplug.

Usage: ``python examples/flamby_tcga.py [--seeds 5] [--accept-license] [--json]``

Needs FLamby with its ``tcga`` extra and fedplug-flamby (see docs/flamby.md). Every run trains
FLamby's baseline (a linear Cox model, ``Baseline()``, with ``BaselineLoss()``) and scores it with
the dataset's ``metric`` (the C-index) on the test split of each of the 6 centers; a run's score
is the unweighted mean over those 6 test sets, FLamby's "mean over client test sets". The table
gives, per method, the mean and standard deviation of that score over the seeds (0, 1, ...),
next to the value FLamby published (5 seeds, ``num_updates=100``):

- ``pooled``: FLamby's "Pooled Training": one model trained on the union of the centers' train
  splits (``FedClass(pooled=True)``) for ``NUM_EPOCHS_POOLED`` epochs (30, i.e. 3,270 steps of
  ``BATCH_SIZE`` 8) with the dataset's ``Optimizer`` (Adam) at its ``LR`` (0.1). This is also the
  budget the federated runs are given: ``get_nb_max_rounds(100)`` = 5 rounds of 100 local
  updates on each of the 6 centers, 3,000 steps in all.
- ``local 0`` ... ``local 5``: FLamby's "Local i": the same training on center i's train split
  alone (``NUM_EPOCHS_POOLED`` epochs of it), scored on every center's test split.
- ``fedavg``, ``fedprox``, ``scaffold``, ``fedadam``, ``fedyogi``: ``flamby_experiment`` with
  the preset of ``fedplug_flamby.ALGORITHMS`` (clients on SGD), 100 local updates per round,
  FLamby's round count.

Pooled and local runs are fedplug experiments too: one node holding the data, trained for one
round of ``NUM_EPOCHS_POOLED`` epochs (federated averaging over a single node is plain
training); their model is then scored on every center's test split.

FLamby's Fed-TCGA-BRCA asks on standard input for acceptance of the data terms the first time
it is used; ``--accept-license`` records that you accepted them (see docs/flamby.md). In the
fedplug repository, without FLamby installed, run it against the test double:
``PYTHONPATH=tests/flamby_double python examples/flamby_tcga.py --accept-license``, then delete
the acceptance it records in the double
(``tests/flamby_double/flamby/datasets/fed_tcga_brca/dataset_creation_scripts/
license_agreement_fed_tcga_brca``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from fedplug import Dataset, FedplugError, Node, TrainingArgs
from fedplug.report import format_table
from fedplug_flamby import flamby_experiment, flamby_nodes, flamby_results
from fedplug_flamby.datasets import dataset_module

DATASET = "fed_tcga_brca"
METRIC = "c_index"
NUM_UPDATES = 100
FEDERATED = ("fedavg", "fedprox", "scaffold", "fedadam", "fedyogi")
# FLamby's published mean C-index over client test sets (5 seeds, num_updates=100)
PUBLISHED = {
    "pooled": 0.676,
    "fedavg": 0.732,
    "fedprox": 0.729,
    "scaffold": 0.687,
    "fedadam": 0.815,
    "fedyogi": 0.815,
}


def center_nodes(accept_license: bool = False) -> list[Node]:
    """One node per center (``center0`` ... ``center5``). Built first: a missing FLamby or an
    unaccepted licence stops here with the plugin's error, which names the fix."""
    return flamby_nodes(DATASET, accept_license=accept_license)


def pooled_node() -> Node:
    """A node holding the union of the centers' train splits (FLamby's pooled dataset)."""
    flamby = dataset_module(DATASET)
    # FedClass asks for the licence unless it was accepted: build the center nodes first
    pooled = flamby.FedClass(train=True, pooled=True)
    return Node("pooled", Dataset(pooled, tags=[DATASET], name=f"{DATASET}-pooled"))


def score(plan: Any, nodes: list[Node]) -> float:
    """Mean over the centers' test splits of the dataset's metric for ``plan``'s model."""
    args = TrainingArgs.from_dict({"batch_size": 64})
    return statistics.mean(plan.evaluate(node.datasets[0].test, args)[METRIC] for node in nodes)


def run_single(node: Node, seed: int, tests: list[Node]) -> float:
    """FLamby's pooled or local baseline: ``NUM_EPOCHS_POOLED`` epochs on ``node``'s data with
    the dataset's own optimizer, scored on every center's test split."""
    epochs = int(dataset_module(DATASET).NUM_EPOCHS_POOLED)
    with flamby_experiment(
        DATASET,
        epochs=epochs,
        round_limit=1,
        nodes=[node],
        seed=seed,
        validate=False,
        progress=False,
    ) as exp:
        exp.run()
        return score(exp.training_plan, tests)


def run_federated(algorithm: str, seed: int, nodes: list[Node]) -> float:
    """``flamby_experiment`` with an algorithm preset; the mean over client test sets."""
    with flamby_experiment(
        DATASET, NUM_UPDATES, algorithm=algorithm, nodes=nodes, seed=seed, progress=False
    ) as exp:
        return flamby_results(exp.run(), METRIC)["mean"]


def compare(
    seeds: list[int], accept_license: bool = False, log: Any = None
) -> dict[str, list[float]]:
    """Every method's score for each seed: ``{"pooled": [...], "local 0": [...], ...}``."""
    nodes = center_nodes(accept_license)
    pooled = pooled_node()
    methods = ["pooled", *(f"local {i}" for i in range(len(nodes))), *FEDERATED]
    scores: dict[str, list[float]] = {method: [] for method in methods}
    try:
        for seed in seeds:
            for method in methods:
                if method == "pooled":
                    value = run_single(pooled, seed, nodes)
                elif method.startswith("local"):
                    value = run_single(nodes[int(method.split()[1])], seed, nodes)
                else:
                    value = run_federated(method, seed, nodes)
                scores[method].append(value)
                if log is not None:
                    print(f"seed {seed} {method:9} {METRIC} {value:.4f}", file=log, flush=True)
    finally:
        for node in [*nodes, pooled]:
            node.stop()
    return scores


def summary(scores: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        method: {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values,
            "published": PUBLISHED.get(method),
        }
        for method, values in scores.items()
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    cells = [
        [
            method,
            f"{row['mean']:.3f} ± {row['std']:.3f}",
            f"{min(row['per_seed']):.3f} - {max(row['per_seed']):.3f}",
            "-" if row["published"] is None else f"{row['published']:.3f}",
        ]
        for method, row in rows.items()
    ]
    return format_table(
        ["method", f"mean {METRIC} ± std", "min - max over seeds", "FLamby published"], cells
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument(
        "--accept-license",
        action="store_true",
        help="accept Fed-TCGA-BRCA's data terms (FLamby asks otherwise)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    start = time.perf_counter()
    try:
        scores = compare(
            list(range(args.seeds)), args.accept_license, None if args.json else sys.stderr
        )
    except FedplugError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = summary(scores)
    seconds = time.perf_counter() - start
    if args.json:
        document = {
            "dataset": DATASET,
            "metric": METRIC,
            "num_updates": NUM_UPDATES,
            "seeds": list(range(args.seeds)),
            "methods": rows,
            "seconds": round(seconds, 2),
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"\nFed-TCGA-BRCA, mean {METRIC} over the 6 client test sets, seeds 0-{args.seeds - 1}"
        )
        print(table(rows))
        print(f"\n{seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
