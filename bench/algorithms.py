"""Rounds to reach a target accuracy for each algorithm of ``fedplug demo --algorithm``.

Usage: ``python bench/algorithms.py [--seeds 0,1,2] [--rounds N | --rounds DEMO,SKEWED]
[--target-demo 0.95] [--target-skewed 0.85] [--algorithms fedavg,scaffold] [--quick]``

Every algorithm runs with the settings of ``fedplug_demo.demo.ALGORITHMS`` (a node-side and a
researcher-side ``fedplug.Optimizer`` spec), so the benchmark measures what the demo runs, on two
tasks:

- **demo**: the demo task itself (``fedplug_demo.demo``): breast cancer over 3 label-skewed hospitals
  (benign shares 0.27 / 0.68 / 0.90), 20 % of each held out, with the ``torch-mlp`` and the
  ``sklearn-sgd`` plans and ``fedplug_demo.demo.PLANS``' model and training arguments. An algorithm
  without a node-side spec trains with the plan's own optimizer, as in the demo. 30 rounds,
  target 0.95.
- **skewed**: a harder split where client drift matters. 4 synthetic clients of 5 features whose
  feature means are shifted apart (normal, scale 2; fixed, drawn from ``SKEWED_GEOMETRY``) and
  whose decision boundary shifts with them (the recipe of ``drifting_nodes`` in
  ``tests/core/test_aux_vars.py``); each keeps ~98 % of one class (clients alternate), so local
  training drifts towards "always my class". 30 % of each client is held out. The plan is
  ``numpy-logreg`` (``fedplug.LogisticRegressionPlan``) stepping with a node-side
  ``fedplug.Optimizer`` built from the algorithm's node spec, or plain SGD at the demo's node rate
  (0.05) when it has none. Nodes run 10 local epochs of batches of 10: many local steps, which is
  what lets local models drift. ``--skewed-lr-scale`` multiplies every node rate (default 1, the
  demo's rates; 10 gives the harsher drift of the test above, plain SGD at 0.5). 40 rounds,
  target 0.85.

Seeds (default 0, 1, 2) set the experiment seed and the data: which patients go to which hospital
on the demo task, the samples drawn on the skewed task (its client geometry stays fixed). After
every round the global model is validated on the nodes' held-out splits (``validation_global``:
accuracy and loss, averaged weighted by test samples). Reported per task, algorithm and plan, as
medians over seeds: rounds to reach the target (the first round whose global accuracy is at least
the target; a seed that never reaches it counts as never, so the median is "not reached" when at
least half the seeds never do), final and best accuracy, final loss and wall seconds per run (nodes,
experiment and all rounds; one untimed round of each configuration runs first to pay imports).
A ``centralized`` reference row trains the same plan on one node holding all the task's data
(FedAvg over a single node is plain training): how far the federated algorithms are from pooling.

Output: one table per task, a JSON document (``bench/results/algorithms.json``: settings, every
run's per-round curves, the summary) and a PNG of median accuracy per round, one panel per task and
plan (``bench/results/algorithms.png``; needs matplotlib, ``pip install 'fedplug[plot]'``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedplug import Dataset, Experiment, LogisticRegressionPlan, Node, Optimizer
from fedplug.errors import FedplugError
from fedplug.plugins import FedplugPluginManager, get_plugin_manager
from fedplug.report import format_table
from fedplug_demo.demo import ALGORITHMS, PLANS, TAGS, demo_nodes

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "algorithms.json"
CENTRALIZED = "centralized"  # reference row: one node holding all the data

DEMO_ROUNDS, SKEWED_ROUNDS = 30, 40
DEMO_TARGET, SKEWED_TARGET = 0.95, 0.85
QUICK_DEMO_ROUNDS, QUICK_SKEWED_ROUNDS = 15, 20

# the skewed task
SKEWED_CLIENTS = 4
SKEWED_FEATURES = 5
SKEWED_SAMPLES = 150  # per client, before the 30 % validation hold-out
SKEWED_MAJORITY = 0.98  # share of the client's own class
SKEWED_SHIFT = 2.0  # scale of the clients' feature-mean offsets
# Seed of the client offsets. Chosen among 0-15 (with FedAvg and Scaffold runs) for a learnable task
# -- logistic regression on the pooled data fits ~95 % -- on which drift hurts FedAvg consistently
# over sample seeds 0-2; many other offsets give tasks that every algorithm solves in 1-2 rounds.
SKEWED_GEOMETRY = 14
SKEWED_TAGS = ["skewed-logreg"]
PLAIN_NODE_SGD = {"lr": 0.05}  # the node SGD rate of demo.ALGORITHMS (fedprox, scaffold)
SKEWED_LR_SCALE = 1.0  # default of --skewed-lr-scale
SKEWED_TRAINING_ARGS = {"batch_size": 10, "epochs": 10, "test_ratio": 0.3}


class NodeOptimizerLogReg(LogisticRegressionPlan):
    """``LogisticRegressionPlan`` stepping with the ``fedplug.Optimizer`` of
    ``model_args["optimizer"]`` (a ``fedplug.Optimizer.from_dict`` spec)."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer.from_dict(self.model_args["optimizer"])
        self.add_dependency("from fedplug import Optimizer")


@dataclass(frozen=True)
class Setting:
    """One panel of the plot: a task learnt with one plan."""

    task: str  # "demo" | "skewed"
    plan: str  # a registered plan name
    lr_scale: float = 1.0  # skewed task: factor on every node learning rate

    @property
    def key(self) -> str:
        return f"{self.task}/{self.plan}"


def settings_for(tasks: list[str], lr_scale: float = SKEWED_LR_SCALE) -> list[Setting]:
    out = []
    if "demo" in tasks:
        out += [Setting("demo", PLANS[choice][0]) for choice in ("torch", "sklearn")]
    if "skewed" in tasks:
        out.append(Setting("skewed", "numpy-logreg", lr_scale))
    return out


# -- data -----------------------------------------------------------------------------------------
def skewed_data(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) of each skewed-task client: offsets fixed by SKEWED_GEOMETRY, samples by ``seed``."""
    offsets = (
        np.random.default_rng(SKEWED_GEOMETRY).normal(size=(SKEWED_CLIENTS, SKEWED_FEATURES))
        * SKEWED_SHIFT
    )
    rng = np.random.default_rng([SKEWED_GEOMETRY, seed])
    w = np.ones(SKEWED_FEATURES) / np.sqrt(SKEWED_FEATURES)
    draw = 4 * SKEWED_SAMPLES
    clients = []
    for i, offset in enumerate(offsets):
        x = rng.normal(size=(draw, SKEWED_FEATURES)) + offset
        y = (x @ w - offset @ w + 0.5 * rng.normal(size=draw) > 0).astype(np.int64)
        keep = (y == i % 2) | (rng.random(draw) > SKEWED_MAJORITY)
        x, y = x[keep][:SKEWED_SAMPLES], y[keep][:SKEWED_SAMPLES]
        if len(y) < SKEWED_SAMPLES:
            raise SystemExit(f"skewed client {i} drew only {len(y)} samples; raise `draw`")
        clients.append((x, y))
    return clients


def make_nodes(setting: Setting, seed: int, pooled: bool, pm: FedplugPluginManager) -> list[Node]:
    if setting.task == "demo":
        return demo_nodes(1 if pooled else 3, seed, plugin_manager=pm)
    clients = skewed_data(seed)
    if pooled:
        x = np.concatenate([x for x, _ in clients])
        y = np.concatenate([y for _, y in clients])
        clients = [(x, y)]
    return [
        Node(
            f"client-{i + 1}",
            Dataset(x, y, tags=SKEWED_TAGS, name=f"skewed-{i + 1}"),
            plugin_manager=pm,
        )
        for i, (x, y) in enumerate(clients)
    ]


# -- one run --------------------------------------------------------------------------------------
def node_spec(setting: Setting, algorithm: str) -> dict[str, Any] | None:
    """The node-side optimizer spec the run uses (None: the plan's own optimizer)."""
    spec = ALGORITHMS[algorithm].node if algorithm != CENTRALIZED else None
    if setting.task == "demo":
        return spec
    spec = dict(spec or PLAIN_NODE_SGD)
    spec["lr"] = spec["lr"] * setting.lr_scale
    return spec


def researcher_spec(algorithm: str) -> dict[str, Any] | None:
    return ALGORITHMS[algorithm].researcher if algorithm != CENTRALIZED else None


def experiment_args(setting: Setting, algorithm: str) -> dict[str, Any]:
    spec = node_spec(setting, algorithm)
    if setting.task == "demo":
        choice = next(c for c, p in PLANS.items() if p[0] == setting.plan)
        _, _, model_args, training_args = PLANS[choice]
        if spec is not None:
            model_args = {**model_args, "optimizer": {"type": "fedplug", **spec}}
        return {
            "tags": TAGS,
            "training_plan": setting.plan,
            "model_args": model_args,
            "training_args": {**training_args, "test_ratio": 0.2},
        }
    return {
        "tags": SKEWED_TAGS,
        "training_plan": NodeOptimizerLogReg,
        "model_args": {"n_features": SKEWED_FEATURES, "optimizer": spec},
        "training_args": SKEWED_TRAINING_ARGS,
    }


def run_one(
    setting: Setting, algorithm: str, seed: int, rounds: int, pm: FedplugPluginManager
) -> dict[str, Any]:
    """Train ``rounds`` rounds; the global validation accuracy and loss after each."""
    start = time.perf_counter()
    nodes = make_nodes(setting, seed, algorithm == CENTRALIZED, pm)
    try:
        researcher = researcher_spec(algorithm)
        exp = Experiment(
            nodes=nodes,
            round_limit=rounds,
            seed=seed,
            progress=False,
            plugin_manager=pm,
            agg_optimizer=Optimizer.from_dict(researcher) if researcher else None,
            **experiment_args(setting, algorithm),
        )
        try:
            history = exp.run()
        finally:
            exp.transport.close()  # idempotent; what Experiment.close() does where it exists
    finally:
        for node in nodes:
            node.stop()
    return {
        "task": setting.task,
        "plan": setting.plan,
        "algorithm": algorithm,
        "seed": seed,
        "accuracy": [row["validation_global"]["accuracy"] for row in history],
        "loss": [row["validation_global"]["loss"] for row in history],
        "seconds": time.perf_counter() - start,
    }


def rounds_to(curve: list[float], target: float) -> int | None:
    """The first round (1-based) whose accuracy reaches ``target``; None if none does."""
    return next((i + 1 for i, value in enumerate(curve) if value >= target), None)


# -- summary --------------------------------------------------------------------------------------
def summarize(setting: Setting, algorithm: str, runs: list[dict[str, Any]], target: float) -> dict:
    reached = [rounds_to(run["accuracy"], target) for run in runs]
    # a seed that never reaches the target counts as infinitely many rounds
    middle = statistics.median(math.inf if r is None else r for r in reached)
    return {
        "task": setting.task,
        "plan": setting.plan,
        "algorithm": algorithm,
        "target": target,
        "rounds": len(runs[0]["accuracy"]),
        "seeds": [run["seed"] for run in runs],
        "rounds_to_target": None if math.isinf(middle) else middle,
        "rounds_to_target_per_seed": reached,
        "final_accuracy": statistics.median(run["accuracy"][-1] for run in runs),
        "best_accuracy": statistics.median(max(run["accuracy"]) for run in runs),
        "final_loss": statistics.median(run["loss"][-1] for run in runs),
        "seconds": statistics.median(run["seconds"] for run in runs),
        "median_accuracy_curve": [
            statistics.median(values)
            for values in zip(*(run["accuracy"] for run in runs), strict=True)
        ],
    }


def _rounds_cell(value: float | None) -> str | int:
    if value is None:
        return "not reached"
    return int(value) if float(value).is_integer() else f"{value:.1f}"


def task_table(rows: list[dict[str, Any]]) -> str:
    target = rows[0]["target"]
    headers = [
        "algorithm",
        "plan",
        f"rounds to {target:g}",
        "per seed",
        "final accuracy",
        "best accuracy",
        "final loss",
        "s per run",
    ]
    cells = [
        [
            row["algorithm"] + (" *" if row["algorithm"] == CENTRALIZED else ""),
            row["plan"],
            str(_rounds_cell(row["rounds_to_target"])),
            " ".join("-" if r is None else str(r) for r in row["rounds_to_target_per_seed"]),
            row["final_accuracy"],
            row["best_accuracy"],
            row["final_loss"],
            round(row["seconds"], 2),
        ]
        for row in rows
    ]
    return format_table(headers, cells)


def spec_text(spec: dict[str, Any] | None, default: str) -> str:
    """A short description of an optimizer spec: ``lr 0.05, scaffold-client``."""
    if spec is None:
        return default
    parts = [f"lr {spec['lr']:g}"]
    for item in [*spec.get("modules", []), *spec.get("regularizers", [])]:
        if isinstance(item, str):
            parts.append(item)
        else:
            name, config = item
            parts.append(f"{name}({', '.join(f'{k}={v}' for k, v in config.items())})")
    return ", ".join(parts)


def settings_table(algorithms: list[str], lr_scale: float) -> str:
    skewed = Setting("skewed", "numpy-logreg", lr_scale)
    demo = Setting("demo", "torch-mlp")
    rows = [
        [
            name,
            spec_text(node_spec(demo, name), "plan default"),
            spec_text(node_spec(skewed, name), "-"),
            spec_text(researcher_spec(name), "apply the average"),
        ]
        for name in algorithms
    ]
    return format_table(
        ["algorithm", "node, demo task", "node, skewed task (SGD)", "researcher"], rows
    )


# -- plot -----------------------------------------------------------------------------------------
def plot(
    summary: list[dict[str, Any]], settings: list[Setting], algorithms: list[str], path: Path
) -> Path | None:
    """One panel per task and plan: median global accuracy per round of each algorithm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(algorithms)}
    # alternate solid and dashed lines: algorithms with the same curve stay visible
    styles = {name: "-" if i % 2 == 0 else "--" for i, name in enumerate(algorithms)}
    width = max(10.0, 5.2 * len(settings))
    fig, axes = plt.subplots(1, len(settings), figsize=(width, 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        rows = [r for r in summary if (r["task"], r["plan"]) == (setting.task, setting.plan)]
        for row in rows:
            curve = row["median_accuracy_curve"]
            rounds = range(1, len(curve) + 1)
            if row["algorithm"] == CENTRALIZED:
                ax.plot(rounds, curve, color="black", linestyle=":", linewidth=1.5)
            else:
                name = row["algorithm"]
                ax.plot(rounds, curve, color=colors[name], linestyle=styles[name], linewidth=1.6)
        if rows:
            ax.axhline(rows[0]["target"], color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"{setting.task} task, {setting.plan} (target {rows[0]['target']:g})")
        ax.set_xlabel("round")
        ax.set_ylabel("global validation accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colors[name], linestyle=styles[name], linewidth=2, label=name)
        for name in algorithms
    ]
    if any(row["algorithm"] == CENTRALIZED for row in summary):
        handles.append(
            plt.Line2D([], [], color="black", linestyle=":", label="centralized (1 node)")
        )
    handles.append(plt.Line2D([], [], color="grey", linestyle="--", label="target"))
    per_row = len(handles) if width >= 15 else math.ceil(len(handles) / 2)
    fig.legend(handles=handles, loc="lower center", ncol=per_row, frameon=False)
    seeds = summary[0]["seeds"] if summary else []
    fig.suptitle(
        "fedplug demo.ALGORITHMS: global validation accuracy per round "
        f"(median over seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))})"
    )
    fig.tight_layout(rect=(0, 0.07 * math.ceil(len(handles) / per_row), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -----------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--rounds",
        help=f"rounds per run: N for both tasks or DEMO,SKEWED (default {DEMO_ROUNDS},"
        f"{SKEWED_ROUNDS}; --quick: {QUICK_DEMO_ROUNDS},{QUICK_SKEWED_ROUNDS})",
    )
    parser.add_argument("--target-demo", type=float, default=DEMO_TARGET)
    parser.add_argument("--target-skewed", type=float, default=SKEWED_TARGET)
    parser.add_argument(
        "--skewed-lr-scale",
        type=float,
        default=SKEWED_LR_SCALE,
        help="skewed task: factor on every node learning rate (default 1: the demo's rates)",
    )
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="comma-separated subset of demo.ALGORITHMS (default: all)",
    )
    parser.add_argument("--tasks", default="demo,skewed", help="demo, skewed or both (default)")
    parser.add_argument(
        "--no-centralized", action="store_true", help="skip the centralized reference rows"
    )
    parser.add_argument("--quick", action="store_true", help="seed 0 only, fewer rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    args = parser.parse_args(argv)
    try:
        args.seeds = _int_list(args.seeds)
        rounds = _int_list(args.rounds) if args.rounds else []
    except ValueError:
        parser.error("--seeds and --rounds take comma-separated integers")
    if args.quick:
        args.seeds = args.seeds[:1]
    if not args.seeds or min(args.seeds) < 0:
        parser.error("--seeds needs at least one non-negative seed")
    if not rounds:
        rounds = (
            [QUICK_DEMO_ROUNDS, QUICK_SKEWED_ROUNDS]
            if args.quick
            else [
                DEMO_ROUNDS,
                SKEWED_ROUNDS,
            ]
        )
    if len(rounds) == 1:
        rounds *= 2
    if len(rounds) != 2 or min(rounds) < 1:
        parser.error("--rounds takes N or DEMO,SKEWED (positive)")
    args.rounds = {"demo": rounds[0], "skewed": rounds[1]}
    args.targets = {"demo": args.target_demo, "skewed": args.target_skewed}
    if not 0 < args.skewed_lr_scale < math.inf:
        parser.error("--skewed-lr-scale must be a positive number")
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not args.algorithms or set(args.algorithms) - set(ALGORITHMS):
        parser.error(f"--algorithms takes a comma-separated subset of {','.join(ALGORITHMS)}")
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or set(args.tasks) - {"demo", "skewed"}:
        parser.error("--tasks takes demo, skewed or demo,skewed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"warning: load average {load:.2f} before the benchmark: other processes make the "
            "seconds noisy (torch-mlp runs can take 100x longer when the cores are shared)",
            file=sys.stderr,
        )
    pm = get_plugin_manager()
    settings = []
    for setting in settings_for(args.tasks, args.skewed_lr_scale):
        if setting.plan in pm.training_plans or setting.task == "skewed":
            settings.append(setting)
        else:
            print(
                f"skipping {setting.key}: plan {setting.plan!r} is not installed", file=sys.stderr
            )
    names = [*args.algorithms, *([] if args.no_centralized else [CENTRALIZED])]
    configs = [(s, a) for s in settings for a in names]

    for setting, algorithm in configs:  # untimed: pay imports and first-call costs
        run_one(setting, algorithm, args.seeds[0], 1, pm)

    runs: dict[tuple[Setting, str], list[dict[str, Any]]] = {c: [] for c in configs}
    errors = []
    for setting, algorithm in configs:
        for seed in args.seeds:
            try:
                run = run_one(setting, algorithm, seed, args.rounds[setting.task], pm)
            except FedplugError as exc:
                errors.append(f"{setting.key} {algorithm} seed {seed}: {exc}")
                print(f"error: {errors[-1]}", file=sys.stderr)
                continue
            runs[setting, algorithm].append(run)
            target = args.targets[setting.task]
            print(
                f"{setting.key:22} {algorithm:11} seed {seed}: rounds to {target:g} "
                f"{rounds_to(run['accuracy'], target) or 'not reached'}, final accuracy "
                f"{run['accuracy'][-1]:.4f}, {run['seconds']:.2f} s",
                flush=True,
            )
    summary = [summarize(s, a, runs[s, a], args.targets[s.task]) for s, a in configs if runs[s, a]]

    tables = {}
    headings = {
        "demo": f"demo task: breast cancer over 3 label-skewed hospitals, {args.rounds['demo']} "
        f"rounds, target accuracy {args.targets['demo']:g}",
        "skewed": f"skewed task: {SKEWED_CLIENTS} drifting clients, ~{SKEWED_MAJORITY:.0%} one "
        f"class each, numpy logistic regression, {SKEWED_TRAINING_ARGS['epochs']} local epochs, "
        f"node lr x{args.skewed_lr_scale:g}, {args.rounds['skewed']} rounds, target accuracy "
        f"{args.targets['skewed']:g}",
    }
    print("\n## algorithm settings (fedplug_demo.demo.ALGORITHMS)")
    print(settings_table(args.algorithms, args.skewed_lr_scale))
    for task in args.tasks:
        rows = [row for row in summary if row["task"] == task]
        if not rows:
            continue
        tables[task] = task_table(rows)
        print(f"\n## {headings[task]}; medians over seeds {','.join(map(str, args.seeds))}")
        print(tables[task])
    if not args.no_centralized:
        print(f"\n* {CENTRALIZED}: the same plan trained on one node holding all the task's data")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(summary, settings, args.algorithms, args.out.with_suffix(".png"))
    meta = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "versions": {d: _version(d) for d in ("fedplug", "fedplug-torch", "fedplug-sklearn")},
        "loadavg_before": load,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "targets": args.targets,
        "algorithms": {
            name: {"node": recipe.node, "researcher": recipe.researcher, "what": recipe.what}
            for name, recipe in ALGORITHMS.items()
            if name in args.algorithms
        },
        "demo_task": {
            "plans": {
                choice: {"plan": p[0], "model_args": p[2], "training_args": p[3]}
                for choice, p in PLANS.items()
            },
            "nodes": 3,
            "test_ratio": 0.2,
        },
        "skewed_task": {
            "clients": SKEWED_CLIENTS,
            "features": SKEWED_FEATURES,
            "samples_per_client": SKEWED_SAMPLES,
            "majority_share": SKEWED_MAJORITY,
            "shift": SKEWED_SHIFT,
            "geometry_seed": SKEWED_GEOMETRY,
            "training_args": SKEWED_TRAINING_ARGS,
            "plain_node_sgd": PLAIN_NODE_SGD,
            "node_lr_scale": args.skewed_lr_scale,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    document = {
        "meta": meta,
        "summary": summary,
        "runs": [run for config in configs for run in runs[config]],
        "tables": tables,
        "errors": errors,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nbenchmark took {meta['seconds']:.0f} s; JSON in {args.out}", end="")
    print(f"; curves in {png}" if png else "; no PNG: pip install 'fedplug[plot]'")
    return 1 if errors else 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
