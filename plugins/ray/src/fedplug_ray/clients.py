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


# -- the reference workload W2, client by client --------------------------------------------------
W2_FEATURES, W2_SAMPLES, W2_SEED = 20, 50, 0
W2_TAGS = ["w2"]


def w2_data(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client_id`` of BENCHMARKS.md's W2 (50 logistic-regression samples, 20 standard
    normal features, labels drawn from a logistic model with fixed true weights), generated from
    the id alone, so that any number of clients can be made where they train."""
    w_true = np.random.default_rng(W2_SEED).normal(size=W2_FEATURES)
    rng = np.random.default_rng([W2_SEED, client_id])
    x = rng.normal(size=(W2_SAMPLES, W2_FEATURES)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(x @ w_true)))
    return x, (rng.random(W2_SAMPLES) < p).astype(np.int64)


def w2_client(client_id: int) -> Node:
    """W2's client ``client_id`` as a node (``client-00042``), tagged ``w2``."""
    x, y = w2_data(client_id)
    return Node(f"client-{client_id:05d}", Dataset(x, y, W2_TAGS, f"client-{client_id:05d}"))
