"""ACME's aggregator, plan, dataset type, transport and command."""

from __future__ import annotations

import json

import numpy as np

from fedplug import Dataset, FedAverage, LogisticRegressionPlan, Optimizer
from fedplug.plugins import current_plugin_manager
from fedplug.transport.local import LocalTransport


class AcmeMean(FedAverage):
    """FedAverage under ACME's name (a weighted sum, so secure aggregation could run it)."""

    name = "acme-mean"


class AcmePlan(LogisticRegressionPlan):
    """Logistic regression stepped by a fedplug.Optimizer given in ``model_args["optimizer"]``,
    whose modules are resolved wherever the plan is built (researcher or node)."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        spec = self.model_args.get("optimizer")
        if spec is not None:
            self.optimizer = Optimizer.from_dict(spec)


def load_synthetic(*, seed: int, n: int = 60, n_features: int = 4, tags=None, name: str = ""):
    """A separable two-class problem drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features))
    y = (x @ np.linspace(1.0, -1.0, n_features) > 0).astype(np.int64)
    return Dataset(x, y, tags or [], name or f"acme-{seed}")


class RelayTransport(LocalTransport):
    """The local transport, counting what it relays."""

    def __init__(self, nodes, label):
        super().__init__(nodes)
        self.label = label
        self.relayed = 0

    def dispatch(self, payload, nodes, **options):
        self.relayed += 1
        return super().dispatch(payload, nodes, **options)


def relay(*, nodes, tags, min_nodes, label: str = "acme"):
    return RelayTransport(nodes, label)


def acme_command(parser):
    """show what ACME's plugin registers"""
    parser.add_argument("--json", action="store_true")

    def run(args):
        pm = current_plugin_manager()
        [info] = [info for info in pm.plugin_infos() if info.name == "acme"]
        print(json.dumps(info.registers) if args.json else f"acme registers {info.registers}")
        return 0

    return run
