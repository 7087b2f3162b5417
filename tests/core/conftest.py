"""Fixtures shared by core's tests: synthetic data, in-process nodes, fresh plugin managers."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pytest

from fedplug import Dataset, Node, get_plugin_manager
from fedplug.plugins import FedplugPluginManager

N_FEATURES = 4
#: The direction that separates the two classes of :func:`separable`.
TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5, 1.0])


def separable(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of a linearly separable 2-class task in ``N_FEATURES`` dimensions."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=shift, size=(n, N_FEATURES))
    y = (x @ TRUE_WEIGHTS > shift * TRUE_WEIGHTS.sum()).astype(np.int64)
    return x, y


@pytest.fixture
def make_data() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`separable`: ``make_data(n, seed, shift=0.0)`` -> ``(x, y)``."""
    return separable


@pytest.fixture
def fresh_pm() -> FedplugPluginManager:
    """A plugin manager with only fedplug's built-in plugin (no entry points)."""
    return get_plugin_manager(load_entry_points=False)


@pytest.fixture
def make_nodes() -> Callable[..., list[Node]]:
    """Build in-process nodes with unique names and tags.

    ``make_nodes(sizes=(60, 80, 100))`` returns one node per size, each holding
    :func:`separable` data; ``tags`` defaults to one tag unique to the call.
    """

    def make(
        sizes: tuple[int, ...] = (60, 80, 100),
        *,
        tags: list[str] | None = None,
        seed: int = 0,
        node_cls: type[Node] = Node,
        datasets: list[Dataset] | None = None,
        **node_kwargs: object,
    ) -> list[Node]:
        prefix = uuid.uuid4().hex[:8]
        tags = tags if tags is not None else [f"tag-{prefix}"]
        if datasets is None:
            datasets = [
                Dataset(*separable(size, seed + i), tags=tags, name=f"data-{i}")
                for i, size in enumerate(sizes)
            ]
        nodes = [
            node_cls(f"node-{prefix}-{i}", dataset, **node_kwargs)
            for i, dataset in enumerate(datasets)
        ]
        return nodes

    return make
