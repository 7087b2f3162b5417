"""The reference workloads of BENCHMARKS.md: recipes and data, shared by both benchmark children.

Imports numpy only (no torch, no fedplug), so that the "no framework" floor pays for nothing it
would not import itself. W1's data is read from the ``.npz`` file that ships inside fedplug
(located without importing fedplug) and split exactly as ``fedplug_demo.demo`` does;
``bench/workloads.py`` checks that the two agree before it measures anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
#: How fedplug derives each round's training seed from the experiment seed
#: (``fedplug.node._with_round_seed``); the floor uses the same seeds so that both systems make
#: the same SGD updates and end with the same model.
ROUND_SEED_STEP = 1_000_003


@dataclass(frozen=True)
class Recipe:
    layers: list[int]
    rounds: int
    batch_size: int
    lr: float
    epochs: int | None = None
    num_updates: int | None = None
    test_ratio: float = 0.0

    def training_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"batch_size": self.batch_size, "lr": self.lr}
        if self.epochs is not None:
            args["epochs"] = self.epochs
        if self.num_updates is not None:
            args["num_updates"] = self.num_updates
        if self.test_ratio:
            args["test_ratio"] = self.test_ratio
        return args

    def steps(self, n_samples: int) -> int:
        """Optimizer steps of one client in one round (``TrainingArgs.num_steps``)."""
        if self.num_updates is not None:
            return self.num_updates
        return (self.epochs or 1) * math.ceil(n_samples / self.batch_size)


RECIPES: dict[str, Recipe] = {
    # breast-cancer MLP 30-64-2, 3 label-skewed nodes, 20 % held out, 20 rounds of 1 epoch
    "W1": Recipe(layers=[30, 64, 2], rounds=20, batch_size=16, lr=0.05, epochs=1, test_ratio=0.2),
    # 100 clients x 50 synthetic logistic-regression samples, Linear(20, 2), 5 rounds of 1 epoch
    "W2": Recipe(layers=[20, 2], rounds=5, batch_size=10, lr=0.05, epochs=1),
    # MLP 1000-3000-2300-2 (9,909,902 parameters), 4 clients x 64 samples, 1 SGD step per round
    "W3": Recipe(layers=[1000, 3000, 2300, 2], rounds=3, batch_size=64, lr=0.01, num_updates=1),
}

Client = tuple[np.ndarray, np.ndarray]


# -- W1 -----------------------------------------------------------------------------------------
W1_SIZES = (181, 189, 199)
W1_SHARES = (0.27, 0.68, 0.90)


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised float32 features and int64 labels (as ``fedplug_demo.demo.load_breast_cancer``)."""
    spec = importlib.util.find_spec("fedplug_demo")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fedplug-demo is not installed: its package ships W1's data")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "breast_cancer.npz"
    with np.load(path, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y.astype(np.int64)


def w1_node_indices(y: np.ndarray, seed: int = SEED) -> list[np.ndarray]:
    """W1's label-skewed split over 3 nodes (``fedplug_demo.demo.label_skew_split(y, 3, seed)``)."""
    sizes, shares = np.array(W1_SIZES), np.array(W1_SHARES)
    ones = np.round(sizes * shares).astype(int)
    residual, i = int(y.sum()) - int(ones.sum()), 0
    while residual:  # spread the rounding residual without exceeding a node's size
        step, node = (1 if residual > 0 else -1), i % len(ones)
        if 0 <= ones[node] + step <= sizes[node]:
            ones[node] += step
            residual -= step
        i += 1
    rng = np.random.default_rng(seed)
    pools = {label: list(rng.permutation(np.flatnonzero(y == label))) for label in (0, 1)}
    parts = []
    for size, n_one in zip(sizes, ones, strict=True):
        take = [pools[1].pop() for _ in range(n_one)] + [
            pools[0].pop() for _ in range(size - n_one)
        ]
        parts.append(np.array(sorted(take)))
    return parts


def holdout(n: int, ratio: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a node's split (``fedplug.datasets.Dataset.split``)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * ratio)
    return order[n_test:], order[:n_test]


# -- W2 and W3 ----------------------------------------------------------------------------------
def logistic_clients(
    n_clients: int = 100, n_samples: int = 50, n_features: int = 20, seed: int = SEED
) -> list[Client]:
    """W2: standard-normal features; labels drawn from a logistic model with fixed true weights."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=n_features)
    clients = []
    for _ in range(n_clients):
        x = rng.normal(size=(n_samples, n_features)).astype(np.float32)
        p = 1.0 / (1.0 + np.exp(-(x @ w_true)))
        clients.append((x, (rng.random(n_samples) < p).astype(np.int64)))
    return clients


def random_clients(
    n_clients: int = 4, n_samples: int = 64, n_features: int = 1000, seed: int = SEED
) -> list[Client]:
    """W3: random standard-normal features and random binary labels."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((n_samples, n_features), dtype=np.float32),
            rng.integers(0, 2, n_samples, dtype=np.int64),
        )
        for _ in range(n_clients)
    ]


def synthetic_clients(workload: str) -> list[Client]:
    return logistic_clients() if workload == "W2" else random_clients()


# -- what a child reports -----------------------------------------------------------------------
def report(**values: Any) -> None:
    """Print the child's one JSON line (times are ``time.monotonic()``: CLOCK_MONOTONIC, which
    every process of a Linux machine shares, so the parent can subtract its launch time)."""
    values["report_mono"] = time.monotonic()
    print(json.dumps(values), flush=True)


def child_args(argv: list[str]) -> tuple[str, int | None, bool]:
    """``WORKLOAD [--workers N] [--processes]``."""
    if not argv or argv[0] not in RECIPES:
        raise SystemExit(
            f"usage: WORKLOAD [--workers N] [--processes]; WORKLOAD in {sorted(RECIPES)}"
        )
    workers = int(argv[argv.index("--workers") + 1]) if "--workers" in argv else None
    return argv[0], workers, "--processes" in argv
