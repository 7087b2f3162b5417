"""Tune fedplug's FLamby presets on Fed-TCGA-BRCA without the test sets, then report them over
20 seeds beside FLamby's published row.

Usage: ``python bench/flamby_tuning.py [--accept-license] [--quick]`` (FLamby with its ``tcga``
extra importable; ``PYTHONPATH=tests/flamby_double`` in this repository).

1. **Validation split.** Each center's train split is cut once (numpy seed 2024) into 80 % to
   train on and 20 % to validate on, stratified by event (20 % of the deaths, at least one, and
   20 % of the censored records, redrawn, with one more event held out if need be, until an
   event precedes another record's time: a C-index needs such a pair to rank). The centers'
   test splits are not read while tuning.
2. **Grid.** For each algorithm of ``fedplug_flamby.ALGORITHMS``: the client learning rate in
   {0.01, 0.03, 0.1, 0.3} and, where the algorithm has one, its server rate or FedProx's mu (see
   ``GRID``); FLamby's budget (100 local updates, 5 rounds). Each setting is trained with tuning
   seeds 0-4 on the 80 % and scored by the mean over centers of the C-index on the 20 %; the
   setting with the best mean over those seeds wins (a collapse, below ``COLLAPSE``, costs its
   seed's score).
3. **Report.** The chosen settings, and FLamby's own strategies reproduced exactly
   (``hyperparameters="flamby", variants="flamby", batch_order="flamby"``), trained on the whole
   train splits with seeds 100-119 (never used for tuning) and scored on the centers' test
   splits: mean ± std over the seeds, the number of collapsed runs (mean C-index below
   ``COLLAPSE``), and FLamby's published value (5 seeds, 42-46).

Output: the tables and ``bench/results/flamby_tuning.json`` (the grid's scores, the choices, the
per-seed test scores). ``--quick``: 2 tuning seeds, 3 report seeds, the grid's corners only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedplug import Dataset, FedplugError, Node
from fedplug.report import format_table

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "flamby_tuning.json"
DATASET = "fed_tcga_brca"
METRIC = "c_index"
NUM_UPDATES = 100
SPLIT_SEED = 2024
VALIDATION = 0.2
COLLAPSE = 0.6  # a run whose mean client C-index falls below this has collapsed
CLIENT_LRS = (0.01, 0.03, 0.1, 0.3)
# the second axis of each algorithm's grid: (what it sets, its values)
GRID: dict[str, tuple[str, tuple[float, ...]] | None] = {
    "fedavg": None,
    "fedavgm": ("server_lr", (0.3, 1.0)),
    "fedprox": ("mu", (0.01, 0.1, 1.0)),
    "scaffold": None,
    "fedadam": ("server_lr", (0.01, 0.03, 0.1)),
    "fedyogi": ("server_lr", (0.01, 0.03, 0.1)),
    "fedadagrad": ("server_lr", (0.01, 0.03, 0.1)),
}
# FLamby's published mean client C-index (5 seeds) and the algorithms its benchmark runs
PUBLISHED = {
    "fedavg": 0.732,
    "fedprox": 0.729,
    "scaffold": 0.687,
    "fedadam": 0.815,
    "fedyogi": 0.815,
}


def specs(algorithm: str, lr: float, second: float | None) -> tuple[dict, dict | None]:
    """(node, researcher) optimizer specs of ``algorithm`` at one point of its grid."""
    from fedplug_flamby import ALGORITHMS

    preset = ALGORITHMS[algorithm]
    node = {**preset.node, "lr": lr}
    researcher = dict(preset.researcher) if preset.researcher else None
    axis = GRID[algorithm]
    if axis is not None and axis[0] == "mu":
        node["regularizers"] = [["fedprox", {"alpha": second}]]
    elif axis is not None:
        researcher["lr"] = second
    return node, researcher


def validation_nodes(accept_license: bool) -> list[Node]:
    """One node per center holding 80 % of its train split, validating on the other 20 %
    (stratified by event)."""
    from torch.utils.data import Subset

    from fedplug_flamby.datasets import center_datasets, dataset_info

    nodes = []
    rng = np.random.default_rng(SPLIT_SEED)
    for center in range(6):
        train, _, module = center_datasets(DATASET, center, accept_license=accept_license)
        truth = np.array([train[i][1].numpy() for i in range(len(train))])
        events = truth[:, 0] == 1.0
        held, kept = split(truth, events, rng)
        meta = {"flamby_dataset": DATASET, "center": center}
        metrics = {dataset_info(DATASET).metric: module.metric}
        held_out = Dataset(
            Subset(train, sorted(held)),
            None,
            [DATASET],
            f"center{center}:validation",
            meta=meta,
            metrics=metrics,
        )
        fit = Dataset(
            Subset(train, sorted(kept)),
            None,
            [DATASET],
            f"center{center}:fit",
            test=held_out,
            meta=meta,
            metrics=metrics,
        )
        nodes.append(Node(f"center{center}", fit))
    return nodes


def split(truth: np.ndarray, events: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
    """(validation, training) record indices: ``VALIDATION`` of the events (at least one) and of
    the censored records, redrawn, with one more event held out after 200 draws, until an event
    precedes another held-out record's time (a pair the C-index can rank)."""
    for extra in range(int(events.sum())):
        for _ in range(200):
            held, kept = [], []
            for group, more in ((np.flatnonzero(events), extra), (np.flatnonzero(~events), 0)):
                group = rng.permutation(group)
                cut = max(1, math.ceil(len(group) * VALIDATION)) + more
                held += group[:cut].tolist()
                kept += group[cut:].tolist()
            times, died = truth[held, 1], events[held]
            if any(died[i] and (times > times[i]).any() for i in range(len(held))):
                return held, kept
    raise ValueError("no validation split of this center has a pair the C-index can rank")


def score(nodes: list[Node], seed: int, **options: Any) -> float:
    """The mean client C-index after FLamby's budget (the last round's validation)."""
    from fedplug_flamby import flamby_experiment, flamby_results

    with flamby_experiment(
        DATASET, NUM_UPDATES, nodes=nodes, seed=seed, progress=False, **options
    ) as exp:
        value = flamby_results(exp.run(), METRIC)["mean"]
    return float("nan") if value is None else float(value)


def with_specs(node: dict, researcher: dict | None) -> dict[str, Any]:
    from fedplug import Optimizer

    return {
        "optimizer": Optimizer.from_dict(node),
        "agg_optimizer": Optimizer.from_dict(researcher) if researcher else None,
    }


def tune(seeds: list[int], accept_license: bool, quick: bool, log: Any) -> dict[str, Any]:
    nodes = validation_nodes(accept_license)
    grid_scores: dict[str, list[dict[str, Any]]] = {}
    try:
        for algorithm, axis in GRID.items():
            lrs = (CLIENT_LRS[0], CLIENT_LRS[-1]) if quick else CLIENT_LRS
            seconds = (
                (None,) if axis is None else (axis[1][:: len(axis[1]) - 1] if quick else axis[1])
            )
            grid_scores[algorithm] = []
            for lr, second in itertools.product(lrs, seconds):
                node, researcher = specs(algorithm, lr, second)
                values = [score(nodes, seed, **with_specs(node, researcher)) for seed in seeds]
                row = {
                    "lr": lr,
                    (axis[0] if axis else "second"): second,
                    "node": node,
                    "researcher": researcher,
                    "scores": values,
                    "mean": statistics.mean(values),
                    "collapses": sum(v < COLLAPSE for v in values),
                }
                grid_scores[algorithm].append(row)
                print(
                    f"{algorithm:10} lr {lr:<5} {'' if axis is None else f'{axis[0]} {second:<5}'}"
                    f" validation {METRIC} {row['mean']:.4f} (collapses {row['collapses']})",
                    file=log,
                    flush=True,
                )
    finally:
        for node in nodes:
            node.stop()
    chosen = {
        algorithm: max(rows, key=lambda r: r["mean"]) for algorithm, rows in grid_scores.items()
    }
    return {"grid": grid_scores, "chosen": chosen}


def report(
    chosen: dict[str, Any], seeds: list[int], accept_license: bool, log: Any
) -> dict[str, Any]:
    from fedplug_flamby import flamby_nodes

    nodes = flamby_nodes(DATASET, accept_license=accept_license)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for algorithm, row in chosen.items():
            options = with_specs(row["node"], row["researcher"])
            values = [score(nodes, seed, **options) for seed in seeds]
            rows[algorithm] = summary(values, PUBLISHED.get(algorithm))
            print(
                f"{algorithm:10} test {METRIC} {rows[algorithm]['mean']:.4f}", file=log, flush=True
            )
        for algorithm in PUBLISHED:
            options = {
                "algorithm": algorithm,
                "hyperparameters": "flamby",
                "variants": "flamby",
                "batch_order": "flamby",
            }
            values = [score(nodes, seed, **options) for seed in seeds]
            rows[f"{algorithm} as FLamby"] = summary(values, PUBLISHED[algorithm])
            print(f"{algorithm:10} as FLamby {rows[f'{algorithm} as FLamby']['mean']:.4f}",
                  file=log, flush=True)  # fmt: skip
    finally:
        for node in nodes:
            node.stop()
    return rows


def summary(values: list[float], published: float | None) -> dict[str, Any]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "collapses": sum(v < COLLAPSE for v in values),
        "per_seed": values,
        "published": published,
    }


def choice_table(chosen: dict[str, Any], tuning_seeds: list[int]) -> str:
    rows = []
    for algorithm, row in chosen.items():
        axis = GRID[algorithm]
        setting = f"lr {row['lr']}" + ("" if axis is None else f", {axis[0]} {row[axis[0]]}")
        rows.append([algorithm, setting, f"{row['mean']:.3f}", str(row["collapses"])])
    return format_table(
        [
            "algorithm",
            "chosen on validation",
            f"validation {METRIC} (seeds {tuning_seeds[0]}-{tuning_seeds[-1]})",
            "collapses",
        ],
        rows,
    )


def report_table(rows: dict[str, Any], seeds: list[int]) -> str:
    cells = [
        [
            name,
            f"{row['mean']:.3f} ± {row['std']:.3f}",
            f"{row['collapses']}/{len(row['per_seed'])}",
            "-" if row["published"] is None else f"{row['published']:.3f}",
        ]
        for name, row in rows.items()
    ]
    return format_table(
        [
            "method",
            f"test {METRIC}, seeds {seeds[0]}-{seeds[-1]}",
            f"collapsed (< {COLLAPSE})",
            "FLamby published",
        ],
        cells,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept-license", action="store_true", help="accept the data terms")
    parser.add_argument("--quick", action="store_true", help="a smoke run (minutes less)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    tuning_seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    report_seeds = list(range(100, 103 if args.quick else 120))
    started = time.perf_counter()
    try:
        tuned = tune(tuning_seeds, args.accept_license, args.quick, sys.stderr)
        rows = report(tuned["chosen"], report_seeds, args.accept_license, sys.stderr)
    except FedplugError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    choices = choice_table(tuned["chosen"], tuning_seeds)
    results = report_table(rows, report_seeds)
    print("\n## presets chosen on a validation split (20 % of each center's train split)")
    print(choices)
    print(f"\n## on the centers' test splits, {len(report_seeds)} seeds never used for tuning")
    print(results)
    document = {
        "split": {"seed": SPLIT_SEED, "validation": VALIDATION},
        "tuning_seeds": tuning_seeds,
        "report_seeds": report_seeds,
        "collapse_below": COLLAPSE,
        "grid": tuned["grid"],
        "chosen": tuned["chosen"],
        "report": rows,
        "tables": {"chosen": choices, "report": results},
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\ntook {document['seconds']:.0f} s; JSON in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
