"""FLamby's Fed-TCGA-BRCA through fedplug: the benchmark row, and the cost of a round.

Usage: ``python bench/flamby_tcga.py [--seeds 5] [--repeats 5] [--accept-license] [--quick]``
(FLamby with its ``tcga`` extra must be importable; ``PYTHONPATH=tests/flamby_double`` in this
repository, whose double implements FLamby's API over the real data).

1. **Accuracy**: ``examples/flamby_tcga.py``'s comparison (pooled, local 0-5, FedAvg, FedProx,
   Scaffold, FedAdam, FedYogi; mean C-index over the 6 client test sets, mean ± std over seeds),
   next to FLamby's published values.
2. **FLamby's own hyper-parameters**: FedAvg, FedProx, Scaffold, FedAdam and FedYogi again, with
   the client and server settings of FLamby's ``config_tcga_brca.json`` instead of the presets of
   ``fedplug_flamby.ALGORITHMS``.
3. **Speed**: seconds per round of ``flamby_experiment(..., algorithm="fedavg")`` (6 in-process
   nodes, 100 local SGD updates each at lr 0.1, sample-weighted averaging, then validation of the
   global model on each center's whole test split with the C-index and the loss), against a
   plain-PyTorch floor doing the same work in one loop: the same FLamby datasets, ``DataLoader``
   (batch size 8, shuffled by a generator seeded as fedplug seeds each node's round), ``Baseline``,
   ``BaselineLoss`` and ``torch.optim.SGD`` at the same rate, FedAvg by hand in float32 as
   fedplug's aggregator, the same evaluation. Both start from the same initial model, so they
   end with the same model (the script checks it); the ratio is what fedplug's messages,
   sessions, declearn optimizer steps and bookkeeping cost. Each side runs ``--repeats``
   experiments of FLamby's 5 rounds (seeds 0, 1, ...) after an untimed warm-up; reported:
   medians over the experiments of the time of ``run()`` divided by its rounds (fedplug) and of
   the round loop divided by its rounds (floor). fedplug's time includes each node building its
   plan for the experiment in the first round; the floor builds its datasets and model before
   its timer starts. The JSON adds fedplug's median time to build the experiment (the nodes
   are built once and reused).

Output: the tables, and ``bench/results/flamby_tcga.json``. With the double, ``--accept-license``
records the acceptance in ``tests/flamby_double/flamby/datasets/fed_tcga_brca/
dataset_creation_scripts/license_agreement_fed_tcga_brca``: delete that file afterwards.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedplug import FedplugError
from fedplug.report import format_table

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "flamby_tcga.json"
EXAMPLE = BENCH.parent / "examples" / "flamby_tcga.py"
ROUND_SEED_STEP = 1_000_003  # fedplug.node._with_round_seed: round r trains with seed + step*(r+1)

# FLamby's own hyper-parameters for Fed-TCGA-BRCA (flamby/config_tcga_brca.json; clients on SGD),
# as fedplug.Optimizer specs (node side, researcher side). FLamby's FedOpt "tau" is declearn's eps.
FLAMBY_CONFIG: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "fedavg": ({"lr": 0.1}, None),
    "fedprox": ({"lr": 0.1, "regularizers": [["fedprox", {"alpha": 0.1}]]}, None),
    "scaffold": (
        {"lr": 0.01, "modules": ["scaffold-client"]},
        {"lr": 1.0, "modules": ["scaffold-server"]},
    ),
    "fedadam": (
        {"lr": 0.01},
        {"lr": 0.1, "modules": [["adam", {"beta_1": 0.9, "beta_2": 0.999, "eps": 1e-8}]]},
    ),
    "fedyogi": (
        {"lr": 0.01},
        {"lr": 0.1, "modules": [["yogi", {"beta_1": 0.9, "beta_2": 0.999, "eps": 1e-8}]]},
    ),
}


def load_example() -> Any:
    # by path: this file has the same module name as the example
    spec = importlib.util.spec_from_file_location("flamby_tcga_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- FLamby's hyper-parameters --------------------------------------------------------------------
def flamby_config_scores(example: Any, seeds: list[int], accept_license: bool) -> dict[str, list]:
    """Each algorithm of FLAMBY_CONFIG run with FLamby's settings instead of the preset's."""
    from fedplug import Optimizer
    from fedplug_flamby import flamby_experiment, flamby_results

    nodes = example.center_nodes(accept_license)
    scores: dict[str, list[float]] = {}
    try:
        for name, (node, researcher) in FLAMBY_CONFIG.items():
            scores[name] = []
            for seed in seeds:
                with flamby_experiment(
                    example.DATASET,
                    example.NUM_UPDATES,
                    optimizer=Optimizer.from_dict(node),
                    agg_optimizer=Optimizer.from_dict(researcher) if researcher else None,
                    nodes=nodes,
                    seed=seed,
                    progress=False,
                ) as exp:
                    scores[name].append(flamby_results(exp.run(), example.METRIC)["mean"])
    finally:
        for node in nodes:
            node.stop()
    return scores


def config_table(presets: dict[str, dict], flamby: dict[str, dict], published: dict) -> str:
    def cell(row: dict) -> str:
        return f"{row['mean']:.3f} ± {row['std']:.3f}"

    rows = [
        [name, cell(presets[name]), cell(flamby[name]), f"{published[name]:.3f}"]
        for name in FLAMBY_CONFIG
    ]
    headers = ["algorithm", "fedplug preset", "FLamby's settings", "FLamby published"]
    return format_table(headers, rows)


# -- fedplug --------------------------------------------------------------------------------------
def fedplug_run(example: Any, nodes: list, seed: int) -> dict[str, Any]:
    from fedplug_flamby import flamby_experiment, flamby_results

    start = time.perf_counter()
    with flamby_experiment(
        example.DATASET,
        example.NUM_UPDATES,
        algorithm="fedavg",
        nodes=nodes,
        seed=seed,
        progress=False,
    ) as exp:
        built = time.perf_counter()
        history = exp.run()
        ran = time.perf_counter()
        params = exp.global_params
    return {
        "setup_s": built - start,
        "round_s": (ran - built) / len(history),
        "rounds": len(history),
        "mean": flamby_results(history, example.METRIC)["mean"],
        "params": {name: np.array(value) for name, value in params.items()},
        "round_parts_s": {
            key: statistics.median(row["durations"][key] for row in history)
            for key in ("train_s", "aggregate_s", "validate_s")
        },
    }


# -- the plain-PyTorch floor ----------------------------------------------------------------------
def floor_run(flamby: Any, seed: int, rounds: int, num_updates: int, lr: float) -> dict[str, Any]:
    """FLamby's FedAvg as one loop: 6 centers x ``num_updates`` SGD steps, weighted averaging in
    float32, evaluation of the global model on each center's test split."""
    from torch.utils.data import DataLoader

    trains = [flamby.FedClass(center=c, train=True) for c in range(flamby.NUM_CLIENTS)]
    tests = [flamby.FedClass(center=c, train=False) for c in range(flamby.NUM_CLIENTS)]
    loss_fn = flamby.BaselineLoss()
    torch.manual_seed(seed)
    model = flamby.Baseline()
    start = time.perf_counter()
    means = []
    for r in range(rounds):
        total = sum(len(train) for train in trains)
        summed = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        for train in trains:
            local = copy.deepcopy(model)
            optimizer = torch.optim.SGD(local.parameters(), lr=lr)
            generator = torch.Generator().manual_seed(seed + ROUND_SEED_STEP * (r + 1))
            loader = DataLoader(train, batch_size=int(flamby.BATCH_SIZE), shuffle=True,
                                generator=generator)  # fmt: skip
            done = 0
            while done < num_updates:
                for x, y in loader:
                    optimizer.zero_grad()
                    loss_fn(local(x), y).backward()
                    optimizer.step()
                    done += 1
                    if done == num_updates:
                        break
            for k, v in local.state_dict().items():
                summed[k] += v * len(train)
        model.load_state_dict({k: v / total for k, v in summed.items()})
        scores = []
        model.eval()
        with torch.no_grad():
            for test in tests:
                batches = list(DataLoader(test, batch_size=int(flamby.BATCH_SIZE)))
                y_pred = torch.cat([model(x) for x, _ in batches])
                y_true = torch.cat([y for _, y in batches])
                scores.append(float(flamby.metric(y_true.numpy(), y_pred.numpy())))
                float(loss_fn(y_pred, y_true))  # the loss, as fedplug's validation reports it
        model.train()
        means.append(statistics.mean(scores))
    seconds = time.perf_counter() - start
    return {
        "round_s": seconds / rounds,
        "mean": means[-1],
        "params": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
    }


def speed(example: Any, repeats: int, accept_license: bool) -> dict[str, Any]:
    from fedplug_flamby import ALGORITHMS
    from fedplug_flamby.datasets import dataset_module

    nodes = example.center_nodes(accept_license)
    flamby = dataset_module(example.DATASET)
    lr = ALGORITHMS["fedavg"].node["lr"]
    try:
        fedplug_run(example, nodes, 0)  # warm-up: imports, first-call costs
        fed = [fedplug_run(example, nodes, seed) for seed in range(repeats)]
        rounds = fed[0]["rounds"]
        floor_run(flamby, 0, 1, example.NUM_UPDATES, lr)
        floors = [
            floor_run(flamby, seed, rounds, example.NUM_UPDATES, lr) for seed in range(repeats)
        ]
    finally:
        for node in nodes:
            node.stop()
    max_diff = max(
        float(np.max(np.abs(f["params"][k] - p["params"][k])))
        for f, p in zip(fed, floors, strict=True)
        for k in f["params"]
    )
    fed_round = statistics.median(run["round_s"] for run in fed)
    floor_round = statistics.median(run["round_s"] for run in floors)
    return {
        "rounds": rounds,
        "num_updates": example.NUM_UPDATES,
        "repeats": repeats,
        "fedplug_round_s": fed_round,
        "fedplug_setup_s": statistics.median(run["setup_s"] for run in fed),
        "fedplug_round_parts_s": {
            key: statistics.median(run["round_parts_s"][key] for run in fed)
            for key in fed[0]["round_parts_s"]
        },
        "floor_round_s": floor_round,
        "ratio": fed_round / floor_round,
        "fedplug_mean_c_index": [run["mean"] for run in fed],
        "floor_mean_c_index": [run["mean"] for run in floors],
        "max_abs_param_diff": max_diff,
    }


def speed_table(result: dict[str, Any]) -> str:
    parts = result["fedplug_round_parts_s"]
    rows = [
        [
            "fedplug flamby_experiment (FedAvg)",
            f"{result['fedplug_round_s']:.4f}",
            f"train {parts['train_s']:.4f}, aggregate {parts['aggregate_s']:.5f}, "
            f"validate {parts['validate_s']:.4f}",
        ],
        ["plain PyTorch floor", f"{result['floor_round_s']:.4f}", "-"],
        ["ratio fedplug / floor", f"{result['ratio']:.2f}x", "-"],
    ]
    return format_table(["", "s per round", "fedplug's round, by part (s)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="accuracy: seeds 0..N-1 (5)")
    parser.add_argument("--repeats", type=int, default=5, help="speed: experiments per side (5)")
    parser.add_argument("--accept-license", action="store_true", help="accept the data terms")
    parser.add_argument("--quick", action="store_true", help="1 seed and 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.repeats = 1, 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes make the seconds noisy",
              file=sys.stderr)  # fmt: skip
    example = load_example()
    started = time.perf_counter()
    try:
        scores = example.compare(list(range(args.seeds)), args.accept_license, sys.stderr)
        accuracy_s = time.perf_counter() - started
        flamby_scores = flamby_config_scores(example, list(range(args.seeds)), args.accept_license)
        timing = speed(example, args.repeats, args.accept_license)
    except FedplugError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = example.summary(scores)
    accuracy = example.table(rows)
    print(
        f"\n## accuracy: Fed-TCGA-BRCA, mean {example.METRIC} over the 6 client test sets, "
        f"seeds 0-{args.seeds - 1} ({accuracy_s:.1f} s)"
    )
    print(accuracy)
    flamby_rows = example.summary(flamby_scores)
    settings = config_table(rows, flamby_rows, example.PUBLISHED)
    print("\n## the same algorithms with FLamby's own hyper-parameters (config_tcga_brca.json)")
    print(settings)
    print(
        f"\n## speed: FedAvg, 6 centers x {timing['num_updates']} updates, {timing['rounds']} "
        f"rounds, validation every round; medians of {timing['repeats']} experiments"
    )
    print(speed_table(timing))
    print(
        f"same model: largest parameter difference fedplug vs floor "
        f"{timing['max_abs_param_diff']:.2e}; mean {example.METRIC} fedplug "
        f"{statistics.mean(timing['fedplug_mean_c_index']):.4f}, floor "
        f"{statistics.mean(timing['floor_mean_c_index']):.4f}"
    )
    document = {
        "meta": {
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}",
            "versions": {d: _version(d) for d in ("fedplug", "fedplug-torch", "fedplug-flamby")},
            "loadavg_before": load,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "accuracy": {"seeds": list(range(args.seeds)), "methods": rows, "table": accuracy},
        "flamby_settings": {
            "specs": {name: {"node": n, "researcher": r} for name, (n, r) in FLAMBY_CONFIG.items()},
            "methods": flamby_rows,
            "table": settings,
        },
        "speed": timing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nbenchmark took {document['meta']['seconds']:.0f} s; JSON in {args.out}")
    return 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
