"""Shared fixtures of the fedplug-sklearn tests: small synthetic tasks spread over nodes."""

import numpy as np
import pytest

import fedplug

N_FEATURES = 6
TAGS = ["sklearn-plan-test"]
_RNG = np.random.default_rng(4321)
# The true models every node's targets come from.
_DIRECTION = _RNG.normal(size=N_FEATURES)
_CLASS_DIRECTIONS = _RNG.normal(size=(N_FEATURES, 3))


def synthetic_task(kind: str, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``binary``: separable 0/1 labels; ``multiclass``: labels 0, 1, 2 by the largest of three
    linear scores; ``regression``: a linear target plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, N_FEATURES))
    if kind == "binary":
        return x, (x @ _DIRECTION > 0).astype(np.int64)
    if kind == "multiclass":
        return x, np.argmax(x @ _CLASS_DIRECTIONS, axis=1).astype(np.int64)
    if kind == "regression":
        return x, x @ _DIRECTION + 0.5 + 0.05 * rng.normal(size=n_samples)
    raise ValueError(kind)


@pytest.fixture
def task():
    """``task(kind, n_samples, seed)``: see :func:`synthetic_task`."""
    return synthetic_task


@pytest.fixture
def tags() -> list[str]:
    """The tags of every dataset that :func:`make_nodes` creates."""
    return list(TAGS)


@pytest.fixture
def make_nodes():
    """``make_nodes(kind, n_nodes=3, n_samples=150)``: nodes holding one tagged dataset each,
    stopped when the test ends (by the root conftest)."""

    def make(kind: str, n_nodes: int = 3, n_samples: int = 150, **node_kwargs):
        nodes = [
            fedplug.Node(
                f"node-{i}",
                fedplug.Dataset(*synthetic_task(kind, n_samples, seed=i), tags=TAGS),
                **node_kwargs,
            )
            for i in range(n_nodes)
        ]
        return nodes

    return make
