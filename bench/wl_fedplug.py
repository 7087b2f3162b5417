"""One workload of BENCHMARKS.md on fedplug's local transport, in this process.

Run by ``bench/workloads.py`` in a fresh interpreter (``python bench/wl_fedplug.py W1
[--workers N] [--processes]``); prints one JSON line. Written as a fedplug user would (README): in-process
``Node`` objects holding a ``Dataset`` each, a ``TorchTrainingPlan`` subclass shipped to the nodes
as source, ``Experiment(...).run()``. Round times come from a ``fedplug_round_finished`` observer.
"""

import time

T_START = time.monotonic()

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import wl_common  # noqa: E402
from torch import nn  # noqa: E402

from fedplug import Dataset, Experiment, Node, get_plugin_manager, hookimpl  # noqa: E402
from fedplug_demo.demo import label_skew_split, load_breast_cancer  # noqa: E402
from fedplug_torch import TorchTrainingPlan  # noqa: E402

T_IMPORTED = time.monotonic()


class MLPPlan(TorchTrainingPlan):
    """Linear layers of sizes ``model_args["layers"]`` with ReLU between them; cross-entropy;
    the default optimizer (torch SGD at the ``lr`` training argument)."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        sizes = self.model_args["layers"]
        modules = []
        for i in range(1, len(sizes)):
            if i > 1:
                modules.append(nn.ReLU())
            modules.append(nn.Linear(sizes[i - 1], sizes[i]))
        self.model = nn.Sequential(*modules)
        self.loss = nn.CrossEntropyLoss()
        self.add_dependency(["from torch import nn"])


class RoundClock:
    """Observer plugin: when each round finished."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    @hookimpl
    def fedplug_round_finished(self, round_index: int) -> None:
        self.ends.append(time.monotonic())


def build_nodes(workload: str) -> list[Node]:
    tags = [workload.lower()]
    if workload == "W1":
        x, y = load_breast_cancer()
        parts = label_skew_split(y, 3, wl_common.SEED)
        return [
            Node(f"hospital-{i + 1}", Dataset(x[idx], y[idx], tags=tags))
            for i, idx in enumerate(parts)
        ]
    return [
        Node(f"client-{i:03d}", Dataset(x, y, tags=tags))
        for i, (x, y) in enumerate(wl_common.synthetic_clients(workload))
    ]


def main() -> None:
    workload, workers, processes = wl_common.child_args(sys.argv[1:])
    recipe = wl_common.RECIPES[workload]
    nodes = build_nodes(workload)
    clock = RoundClock()
    pm = get_plugin_manager()
    pm.register(clock, name="bench-round-clock")
    exp = Experiment(
        nodes=nodes,
        tags=[workload.lower()],
        training_plan=MLPPlan,
        model_args={"layers": recipe.layers},
        training_args=recipe.training_args(),
        round_limit=recipe.rounds,
        seed=wl_common.SEED,
        # W1 validates the final model only (the floor evaluates once, at the end, too)
        validate=recipe.rounds if recipe.test_ratio else False,
        workers=workers,
        processes=processes,
        progress=False,
        plugin_manager=pm,
    )
    run_start = time.monotonic()
    history = exp.run()
    accuracy = history[-1].get("validation_global", {}).get("accuracy")
    done_mono = time.monotonic()

    flat = np.concatenate([v.astype(np.float64).ravel() for v in exp.global_params.values()])
    wl_common.report(
        workload=workload,
        system="fedplug",
        workers=exp.transport.workers,
        processes=processes,
        torch_threads=torch.get_num_threads(),
        plan_shipped_as="source" if exp.plan_ref.source else "registered name",
        start_mono=T_START,
        imported_mono=T_IMPORTED,
        run_start_mono=run_start,
        round_ends_mono=clock.ends,
        done_mono=done_mono,
        accuracy=accuracy,
        param_l2=float(np.linalg.norm(flat)),
        param_sum=float(flat.sum()),
        node_train_s=[sum(row["node_train_s"].values()) for row in history],
    )


if __name__ == "__main__":
    main()
