"""The one rule of what secure aggregation cannot protect: optimizer modules that exchange
auxiliary variables (Scaffold's, or a third party's). The researcher would receive them unmasked,
one per node. Checked on the researcher before any node is contacted, and again by every node."""

from __future__ import annotations

from typing import Any

from fedplug.errors import SecAggError
from fedplug.optimizer import Optimizer


def refuse_aux_modules(optimizer: Any, side: str, pm: Any) -> None:
    """On the researcher: raise a :class:`SecAggError` naming the first module of ``optimizer``
    (a fedplug.Optimizer of ``side``) that exchanges auxiliary variables, and the plugin that
    provides it."""
    if not isinstance(optimizer, Optimizer):
        return
    for aux_name, module in optimizer.aux_modules.items():
        registry = pm.optimizer_modules
        source = (
            f"plugin {registry.owner(module)!r}"
            if module in registry
            else "no plugin: an instance given directly"
        )
        raise SecAggError(
            f"secure aggregation cannot be used with optimizer module {module!r} on the {side}: "
            f"it exchanges auxiliary variables ({aux_name!r}) that would reach the researcher "
            f"unmasked, one per node ({module!r} comes from {source}). Either turn secure "
            "aggregation off (secagg=False), or use an optimizer without auxiliary variables "
            "(e.g. FedAvg, FedProx, FedAdam instead of Scaffold)"
        )


def refuse_aux_request(node: str, aux_vars: Any, optimizer: Any) -> None:
    """On a node: refuse a secure-aggregation request that carries auxiliary variables, or whose
    plan's optimizer would send some, before any training."""
    exchanged = sorted(aux_vars) or (
        optimizer.module_names if isinstance(optimizer, Optimizer) and optimizer.aux_modules else []
    )
    if exchanged:
        raise SecAggError(
            f"node {node!r} refuses a secure-aggregation request whose optimizer exchanges "
            f"auxiliary variables ({exchanged}): secure aggregation cannot protect them"
        )
