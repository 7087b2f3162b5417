"""fedplug-secagg's plugin module (entry point ``secagg``): the ``masking`` scheme and the
auxiliary-variable guard.

Importing this module is cheap: the cryptography package is imported when a scheme is used.
"""

from __future__ import annotations

from typing import Any

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_secagg_schemes(register: Register) -> None:
    register("masking", "fedplug_secagg.masking:MaskingScheme")


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    """With secure aggregation on, refuse any optimizer module that exchanges auxiliary
    variables (Scaffold's, or a third party's): the researcher would see each node's."""
    if getattr(config, "secagg", None) is None:
        return
    from fedplug.errors import SecAggError
    from fedplug.optimizer import Optimizer

    sides = (
        ("node side (the training plan's optimizer)", config.node_optimizer),
        ("researcher side (the experiment's agg_optimizer)", config.agg_optimizer),
    )
    for side, optimizer in sides:
        if not isinstance(optimizer, Optimizer):
            continue
        for aux_name, module in optimizer.aux_modules.items():
            raise SecAggError(
                f"secure aggregation cannot be used with optimizer module {module!r} on the {side}: "
                f"it exchanges auxiliary variables ({aux_name!r}) that would reach the researcher "
                "unmasked, one per node. Either turn secure aggregation off (secagg=False), or "
                "use an optimizer without auxiliary variables (e.g. FedAvg, FedProx, FedAdam "
                "instead of Scaffold)"
            )
