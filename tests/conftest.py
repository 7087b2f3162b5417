"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from fedplug import Dataset, Experiment, Node


@pytest.fixture(autouse=True)
def _plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the installed plugins, whatever the developer's shell exports."""
    monkeypatch.delenv("FEDPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("FEDPLUG_STRICT_PLUGINS", raising=False)


#: the tracker tests' federation: three in-process nodes on separable data, the core's NumPy
#: logistic-regression plan, validation on a held-out quarter each round
TRACKED_WEIGHTS = np.array([1.5, -2.0, 0.5, 1.0])


@pytest.fixture
def make_tracked_experiment() -> Callable[..., Experiment]:
    """``make_tracked_experiment(tracking, **kwargs)``: an experiment of 3 rounds over 3 fresh nodes."""

    def make(tracking: object, **kwargs: object) -> Experiment:
        tag = f"tag-{uuid.uuid4().hex[:8]}"
        nodes = []
        for i, size in enumerate((60, 80, 100)):
            rng = np.random.default_rng(i)
            x = rng.normal(size=(size, 4))
            y = (x @ TRACKED_WEIGHTS > 0).astype(np.int64)
            nodes.append(Node(f"hospital-{i}", Dataset(x, y, tags=[tag])))
        settings = {
            "nodes": nodes,
            "tags": [tag],
            "training_plan": "numpy-logreg",
            "model_args": {"n_features": 4},
            "training_args": {"batch_size": 20, "test_ratio": 0.25},
            "round_limit": 3,
            "seed": 0,
            "tracking": tracking,
            **kwargs,
        }
        return Experiment(**settings)

    return make


@pytest.fixture
def wait_process_group_gone() -> Callable[[int, float], None]:
    """``wait_process_group_gone(pgid, timeout)``: fail unless no process of group ``pgid`` is
    left within ``timeout`` seconds (what Ctrl-C must leave behind: nothing)."""

    def wait(pgid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, f"a process of group {pgid} outlived Ctrl-C"
            time.sleep(0.05)

    return wait
