"""FLamby's Fed-TCGA-BRCA through fedplug: the benchmark row, and the cost of a round.

Usage: ``python bench/flamby_tcga.py [--seeds 5] [--repeats 5] [--accept-license] [--quick]``
(FLamby with its ``tcga`` extra must be importable; ``PYTHONPATH=tests/flamby_double`` in this
repository, whose double implements FLamby's API over the real data).

1. **Accuracy**: ``examples/flamby_tcga.py``'s comparison (pooled, local 0-5, FedAvg, FedProx,
   Scaffold, FedAdam, FedYogi; mean C-index over the 6 client test sets, mean ± std over seeds),
   next to FLamby's published values.
2. **FLamby's own runs**: FedAvg, FedProx, Scaffold, FedAdam and FedYogi again, run as FLamby's
   own strategies (``flamby_experiment(hyperparameters="flamby", variants="flamby",
   batch_order="flamby")``: the settings of FLamby's ``config_tcga_brca.json``, its update rules
   and its batch order), i.e. FLamby's per-seed numbers.
3. **Speed** (``--only speed``), medians over ``--repeats`` experiments of FLamby's 5 rounds
   (seeds 0, 1, ...; the two sides alternate, after an untimed warm-up):

   - **FLamby's own FedAvg** (``flamby.strategies.FedAvg`` built and run as FLamby's
     ``fed_benchmark.py`` does; the double's, or the real package where it is installed): the
     time of ``run()`` per round; against **fedplug doing the same math**: the same strategy
     reproduced (FLamby's settings, update rules and batches; no per-round validation, as
     ``run()`` does none) on 6 in-process nodes, the time of ``exp.run()`` per round, on the
     CPU and, where torch sees a GPU, with ``device="cuda"`` (the split and the model on the
     GPU). Both end with the same model (the largest parameter difference is printed). The
     speed-up comes from each node reading its center once into tensors (FLamby's item access
     goes through a DataLoader per batch) and from the batched Cox loss (FLamby's loops over a
     batch's records).
   - **fedplug's preset with validation every round** (``algorithm="fedavg"``) against a
     plain-PyTorch floor doing the same work in one loop on the same data path: each split read
     once into tensors, the batches fedplug draws (batch size 8, a seeded DataLoader's order),
     ``Baseline``, the batched Cox loss, ``torch.optim.SGD`` at the same rate, FedAvg by hand in
     float32, the same evaluation; the ratio is what fedplug's messages, sessions, declearn
     optimizer steps and bookkeeping cost. fedplug's time includes each node building its plan
     in the first round.

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

#: the algorithms FLamby's benchmark runs on Fed-TCGA-BRCA with its own settings
FLAMBY_ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedadam", "fedyogi")
#: FLamby's strategies by fedplug's algorithm name (the ones its own runs are compared with)
FLAMBY_STRATEGIES = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "Scaffold"}


def load_example() -> Any:
    # by path: this file has the same module name as the example
    spec = importlib.util.spec_from_file_location("flamby_tcga_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- FLamby's own runs ------------------------------------------------------------------------------
def flamby_reproduction(
    example: Any, nodes: list, algorithm: str, seed: int, **options: Any
) -> Any:
    """``flamby_experiment`` set to run as FLamby's own strategy (its hyper-parameters, its
    update rules, its batch order) for ``seed``."""
    from fedplug_flamby import flamby_experiment

    return flamby_experiment(
        example.DATASET,
        example.NUM_UPDATES,
        algorithm=algorithm,
        hyperparameters="flamby",
        variants="flamby",
        batch_order="flamby",
        nodes=nodes,
        seed=seed,
        progress=False,
        **options,
    )


def flamby_config_scores(example: Any, seeds: list[int], accept_license: bool) -> dict[str, list]:
    """Each of FLamby's algorithms run as FLamby's own strategy would, seed for seed."""
    from fedplug_flamby import flamby_results

    nodes = example.center_nodes(accept_license)
    scores: dict[str, list[float]] = {}
    try:
        for name in FLAMBY_ALGORITHMS:
            scores[name] = []
            for seed in seeds:
                with flamby_reproduction(example, nodes, name, seed) as exp:
                    scores[name].append(flamby_results(exp.run(), example.METRIC)["mean"])
    finally:
        for node in nodes:
            node.stop()
    return scores


def flamby_strategy_run(flamby: Any, algorithm: str, seed: int, num_updates: int) -> dict[str, Any]:
    """FLamby's own strategy as its benchmark runs it (fed_benchmark.py): the model made after
    ``set_seed(seed)``, the strategy built over shuffled DataLoaders, ``set_seed(seed)``, then
    ``run()``, timed; FLamby's hyper-parameters for Fed-TCGA-BRCA."""
    import flamby.strategies as strategies
    from flamby.benchmarks.benchmark_utils import set_seed

    from fedplug_flamby.experiment import FLAMBY_HYPERPARAMETERS

    node, researcher = FLAMBY_HYPERPARAMETERS["fed_tcga_brca"][algorithm]
    options: dict[str, Any] = {"learning_rate": node["lr"]}
    if algorithm == "fedprox":
        options["mu"] = node["regularizers"][0][1]["alpha"]
    if algorithm == "scaffold":
        options["server_learning_rate"] = researcher["lr"]
    set_seed(seed)
    init = flamby.Baseline()
    loaders = [
        torch.utils.data.DataLoader(
            flamby.FedClass(center=c, train=True), batch_size=int(flamby.BATCH_SIZE), shuffle=True
        )
        for c in range(int(flamby.NUM_CLIENTS))
    ]
    rounds = int(flamby.get_nb_max_rounds(num_updates))
    strategy = getattr(strategies, FLAMBY_STRATEGIES[algorithm])(
        loaders,
        copy.deepcopy(init),
        flamby.BaselineLoss(),
        torch.optim.SGD,
        num_updates=num_updates,
        nrounds=rounds,
        **options,
    )
    set_seed(seed)
    start = time.perf_counter()
    model = strategy.run()[0]
    seconds = time.perf_counter() - start
    params = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return {"round_s": seconds / rounds, "rounds": rounds, "params": params}


def fedplug_same_math(
    example: Any, nodes: list, algorithm: str, seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """fedplug as FLamby's own strategy (:func:`flamby_reproduction`), without per-round
    validation (FLamby's run() validates nothing), timed from the first round to the last."""
    with flamby_reproduction(
        example, nodes, algorithm, seed, validate=False, training_args={"device": device}
    ) as exp:
        start = time.perf_counter()
        history = exp.run()
        seconds = time.perf_counter() - start
        params = {k: np.array(v) for k, v in exp.global_params.items()}
    return {"round_s": seconds / len(history), "rounds": len(history), "params": params}


def config_table(presets: dict[str, dict], flamby: dict[str, dict], published: dict) -> str:
    def cell(row: dict) -> str:
        return f"{row['mean']:.3f} ± {row['std']:.3f}"

    rows = [
        [name, cell(presets[name]), cell(flamby[name]), f"{published[name]:.3f}"]
        for name in FLAMBY_ALGORITHMS
    ]
    headers = ["algorithm", "preset", "as FLamby's own run", "FLamby published"]
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
    """fedplug's FedAvg preset as one plain loop on the same data path: each center's split
    read once into tensors, the batches fedplug draws (a seeded DataLoader's order), the batched
    Cox loss, 6 centers x ``num_updates`` SGD steps, weighted averaging in float32, evaluation of
    the global model on each center's whole test split."""
    from fedplug_flamby.batches import loader_batches, materialize
    from fedplug_flamby.losses import CoxLoss

    trains = [materialize(flamby.FedClass(center=c, train=True)) for c in range(flamby.NUM_CLIENTS)]
    tests = [materialize(flamby.FedClass(center=c, train=False)) for c in range(flamby.NUM_CLIENTS)]
    loss_fn = CoxLoss()
    torch.manual_seed(seed)
    model = flamby.Baseline()
    start = time.perf_counter()
    means = []
    for r in range(rounds):
        total = sum(len(x) for x, _ in trains)
        summed = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        for x, y in trains:
            local = copy.deepcopy(model)
            optimizer = torch.optim.SGD(local.parameters(), lr=lr)
            generator = torch.Generator().manual_seed(seed + ROUND_SEED_STEP * (r + 1))
            for index in loader_batches(len(x), int(flamby.BATCH_SIZE), num_updates, generator):
                optimizer.zero_grad()
                loss_fn(local(x[index]), y[index]).backward()
                optimizer.step()
            for k, v in local.state_dict().items():
                summed[k] += v * len(x)
        model.load_state_dict({k: v / total for k, v in summed.items()})
        scores = []
        model.eval()
        with torch.no_grad():
            for x, y in tests:
                y_pred = model(x)
                scores.append(float(flamby.metric(y.numpy(), y_pred.numpy())))
                float(loss_fn(y_pred, y))  # the loss, as fedplug's validation reports it
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
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    try:
        # FLamby's own FedAvg against fedplug doing the same math (its batches, its settings)
        flamby_strategy_run(flamby, "fedavg", 0, example.NUM_UPDATES)  # warm-up
        fedplug_same_math(example, nodes, "fedavg", 0)
        theirs, same = [], {device: [] for device in devices}
        for seed in range(repeats):  # alternating, so that a slower phase hits both sides
            theirs.append(flamby_strategy_run(flamby, "fedavg", seed, example.NUM_UPDATES))
            for device in devices:
                same[device].append(fedplug_same_math(example, nodes, "fedavg", seed, device))
        # fedplug's preset with validation each round, against a plain-PyTorch loop
        fedplug_run(example, nodes, 0)
        fed = [fedplug_run(example, nodes, seed) for seed in range(repeats)]
        rounds = fed[0]["rounds"]
        floor_run(flamby, 0, 1, example.NUM_UPDATES, lr)
        floors = [
            floor_run(flamby, seed, rounds, example.NUM_UPDATES, lr) for seed in range(repeats)
        ]
    finally:
        for node in nodes:
            node.stop()

    def largest_difference(a: list[dict], b: list[dict]) -> float:
        return max(
            float(np.max(np.abs(x["params"][k] - y["params"][k])))
            for x, y in zip(a, b, strict=True)
            for k in x["params"]
        )

    fed_round = statistics.median(run["round_s"] for run in fed)
    floor_round = statistics.median(run["round_s"] for run in floors)
    flamby_round = statistics.median(run["round_s"] for run in theirs)
    same_round = {d: statistics.median(run["round_s"] for run in same[d]) for d in devices}
    return {
        "rounds": rounds,
        "num_updates": example.NUM_UPDATES,
        "repeats": repeats,
        "flamby_package": _flamby_origin(),
        "flamby_strategy_round_s": flamby_round,
        "fedplug_same_math_round_s": same_round,
        "speedup_vs_flamby": {d: flamby_round / same_round[d] for d in devices},
        "same_math_max_abs_param_diff": {d: largest_difference(same[d], theirs) for d in devices},
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
        "max_abs_param_diff": largest_difference(fed, floors),
    }


def _flamby_origin() -> str:
    import flamby

    where = Path(flamby.__file__).resolve()
    double = BENCH.parent / "tests" / "flamby_double"
    return "fedplug's test double" if double in where.parents else f"FLamby at {where.parent}"


def speed_table(result: dict[str, Any]) -> str:
    parts = result["fedplug_round_parts_s"]
    rows = [
        [
            "FLamby's own FedAvg (flamby.strategies.FedAvg)",
            f"{result['flamby_strategy_round_s']:.4f}",
            "1.00x",
            "-",
        ],
    ]
    for device, seconds in result["fedplug_same_math_round_s"].items():
        rows.append(
            [
                f"fedplug, the same math ({device})",
                f"{seconds:.4f}",
                f"{result['speedup_vs_flamby'][device]:.2f}x",
                f"{result['same_math_max_abs_param_diff'][device]:.1e}",
            ]
        )
    rows += [
        [
            "fedplug's preset, validating each round",
            f"{result['fedplug_round_s']:.4f}",
            "-",
            f"train {parts['train_s']:.4f}, aggregate {parts['aggregate_s']:.5f}, "
            f"validate {parts['validate_s']:.4f}",
        ],
        [
            "plain PyTorch floor of that",
            f"{result['floor_round_s']:.4f}",
            "-",
            f"ratio fedplug / floor {result['ratio']:.2f}x",
        ],
    ]
    return format_table(
        ["", "s per round", "faster than FLamby", "largest parameter difference / notes"], rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="accuracy: seeds 0..N-1 (5)")
    parser.add_argument("--repeats", type=int, default=5, help="speed: experiments per side (5)")
    parser.add_argument("--accept-license", action="store_true", help="accept the data terms")
    parser.add_argument("--quick", action="store_true", help="1 seed and 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    parser.add_argument(
        "--only",
        action="append",
        choices=("accuracy", "flamby", "speed"),
        help="run only this section (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.repeats = 1, 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes make the seconds noisy",
              file=sys.stderr)  # fmt: skip
    example = load_example()
    started = time.perf_counter()
    sections = set(args.only or ("accuracy", "flamby", "speed"))
    document: dict[str, Any] = {
        "meta": {
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}",
            "versions": {d: _version(d) for d in ("fedplug", "fedplug-torch", "fedplug-flamby")},
            "loadavg_before": load,
        }
    }
    seeds = list(range(args.seeds))
    try:
        rows = None
        if sections & {"accuracy", "flamby"}:
            scores = example.compare(seeds, args.accept_license, sys.stderr)
            rows = example.summary(scores)
            accuracy = example.table(rows)
            print(
                f"\n## accuracy: Fed-TCGA-BRCA, mean {example.METRIC} over the 6 client test "
                f"sets, seeds 0-{args.seeds - 1} ({time.perf_counter() - started:.1f} s)"
            )
            print(accuracy)
            document["accuracy"] = {"seeds": seeds, "methods": rows, "table": accuracy}
        if "flamby" in sections:
            from fedplug_flamby.experiment import FLAMBY_HYPERPARAMETERS

            flamby_rows = example.summary(flamby_config_scores(example, seeds, args.accept_license))
            settings = config_table(rows, flamby_rows, example.PUBLISHED)
            print(
                "\n## the same algorithms as FLamby's own runs (its hyper-parameters, update "
                "rules and batch order)"
            )
            print(settings)
            specs = FLAMBY_HYPERPARAMETERS[example.DATASET]
            document["flamby_settings"] = {
                "specs": {
                    name: dict(zip(("node", "researcher"), specs[name], strict=True))
                    for name in FLAMBY_ALGORITHMS
                },
                "methods": flamby_rows,
                "table": settings,
            }
        if "speed" in sections:
            timing = speed(example, args.repeats, args.accept_license)
            print(
                f"\n## speed: FedAvg, 6 centers x {timing['num_updates']} updates, "
                f"{timing['rounds']} rounds; medians of {timing['repeats']} experiments; "
                f"FLamby: {timing['flamby_package']}"
            )
            print(speed_table(timing))
            print(
                f"preset vs floor: largest parameter difference "
                f"{timing['max_abs_param_diff']:.2e}; mean {example.METRIC} fedplug "
                f"{statistics.mean(timing['fedplug_mean_c_index']):.4f}, floor "
                f"{statistics.mean(timing['floor_mean_c_index']):.4f}"
            )
            document["speed"] = timing
    except FedplugError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    document["meta"]["seconds"] = round(time.perf_counter() - started, 1)
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
