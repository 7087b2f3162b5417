"""Client factories to run in Ray actors: each client's data made on the cluster from its id.

``synthetic_client(client_id)``: a cross-device client of a logistic-regression task (the
reference workload W2's generator, scaled down per client): 20 features, 2 classes, 64 training
and 16 test records drawn from a seeded generator, each client's features shifted by its own
offset (non-IID), tagged ``synthetic``. The same id gives the same data on any machine, so a
federation of 10,000 clients is described by two numbers and built where it trains.
"""

from __future__ import annotations

import numpy as np

from fedplug.datasets import Dataset
from fedplug.node import Node

FEATURES = 20
TRAIN, TEST = 64, 16
TAGS = ["synthetic"]
_TRUE_WEIGHTS = np.random.default_rng(2024).normal(size=FEATURES)


def synthetic_data(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of client ``client_id``: TRAIN + TEST records, float32 features, int64 labels."""
    rng = np.random.default_rng([client_id, 7])
    shift = rng.normal(scale=0.5, size=FEATURES)
    x = rng.normal(size=(TRAIN + TEST, FEATURES)) + shift
    logits = x @ _TRUE_WEIGHTS + rng.normal(scale=0.5, size=TRAIN + TEST)
    return x.astype(np.float32), (logits > 0).astype(np.int64)


def synthetic_client(client_id: int) -> Node:
    """Client ``client_id`` (named ``client{id}``) of the synthetic federation."""
    x, y = synthetic_data(client_id)
    test = Dataset(x[TRAIN:], y[TRAIN:], TAGS, f"client{client_id}:test")
    return Node(
        f"client{client_id}", Dataset(x[:TRAIN], y[:TRAIN], TAGS, f"client{client_id}", test=test)
    )
