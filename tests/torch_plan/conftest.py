"""Shared fixtures of the fedplug-torch tests: a learnable synthetic task spread over nodes.

Plan classes stay in the test modules: a plan defined there is not registered by any plugin, so
an experiment ships it to nodes as source, which is what these tests exercise.
"""

import numpy as np
import pytest
import torch

import fedplug

N_FEATURES = 8
TAGS = ["torch-plan-test"]
# The task's true separating direction; every node's labels come from it.
_DIRECTION = np.random.default_rng(1234).normal(size=N_FEATURES)


def synthetic_task(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable two-class data: float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, N_FEATURES)).astype(np.float32)
    y = (x @ _DIRECTION > 0).astype(np.int64)
    return x, y


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Model initialisations drawn from torch's global generator are the same every run."""
    torch.manual_seed(0)


@pytest.fixture
def task():
    """``task(n_samples, seed)``: see :func:`synthetic_task`."""
    return synthetic_task


@pytest.fixture
def tags() -> list[str]:
    """The tags of every dataset that :func:`make_nodes` creates."""
    return list(TAGS)


@pytest.fixture
def make_nodes():
    """``make_nodes(n_nodes=3, n_samples=200)``: nodes holding one tagged numpy dataset each,
    stopped when the test ends (by the root conftest)."""

    def make(n_nodes: int = 3, n_samples: int = 200, **node_kwargs) -> list[fedplug.Node]:
        nodes = [
            fedplug.Node(
                f"node-{i}",
                fedplug.Dataset(*synthetic_task(n_samples, seed=i), tags=TAGS, name=f"data-{i}"),
                **node_kwargs,
            )
            for i in range(n_nodes)
        ]
        return nodes

    return make
