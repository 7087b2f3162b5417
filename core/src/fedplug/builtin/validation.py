"""Core's checks of an experiment's optimizer set-up, before any node is contacted:
auxiliary-variable modules without their partner on the other side, optimizer arguments the
plan's optimizer cannot take, and FedProx without an explicit strength."""

from __future__ import annotations

from typing import Any

from fedplug.errors import ConfigError
from fedplug.hookspecs import hookimpl
from fedplug.optimizer import Optimizer


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    node_opt, agg_opt = config.node_optimizer, config.agg_optimizer
    node_aux = node_opt.aux_modules if isinstance(node_opt, Optimizer) else {}
    agg_aux = agg_opt.aux_modules if agg_opt is not None else {}
    pm = config.plugin_manager
    for key, module in node_aux.items():
        if key not in agg_aux:
            partners = _partner_modules(key, module, pm)
            raise ConfigError(
                f"the plan's node-side optimizer module {module!r} exchanges auxiliary variables "
                f"({key!r}) with a researcher-side partner, but the experiment's agg_optimizer "
                f"{'is None' if agg_opt is None else f'has modules {agg_opt.module_names}'}; set "
                f"agg_optimizer=Optimizer(lr=1.0, modules={partners})"
            )
    for key, module in agg_aux.items():
        if key in node_aux:
            continue
        partners = _partner_modules(key, module, pm)
        if not isinstance(node_opt, Optimizer):
            raise ConfigError(
                f"the researcher-side module {module!r} needs its node-side partner "
                f"{partners} in the plan's optimizer, but the plan steps with "
                f"{_describe_optimizer(node_opt)}, which declearn modules cannot see; set "
                f"self.optimizer = fedplug.Optimizer(lr=..., modules={partners}) in the plan"
            )
        raise ConfigError(
            f"the researcher-side module {module!r} needs its node-side partner {partners} in "
            f"the plan's fedplug.Optimizer, whose modules are {node_opt.module_names}"
        )
    if config.training_args.optimizer_args and isinstance(node_opt, Optimizer):
        raise ConfigError(
            "training argument 'optimizer_args' sets options of a plan's native framework "
            f"optimizer (e.g. torch.optim), but this plan steps with {_describe_optimizer(node_opt)}; "
            "set a fedplug.Optimizer's options in its constructor instead"
        )
    for side, optimizer in (("node-side", node_opt), ("researcher-side", agg_opt)):
        if isinstance(optimizer, Optimizer) and "fedprox" in optimizer.implicit_regularizers:
            raise ConfigError(
                f"the {side} regularizer 'fedprox' was given without its strength; give it "
                "explicitly, e.g. regularizers=[('fedprox', {'alpha': 0.01})] (alpha is FedProx's mu)"
            )


def _describe_optimizer(optimizer: Any) -> str:
    if optimizer is None:
        return "its built-in update rule"
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def _partner_modules(aux_name: str, module: str, pm: Any) -> list[str]:
    return sorted(
        name
        for name, cls in Optimizer.available_modules(pm).items()
        if getattr(cls, "aux_name", None) == aux_name and name != module
    )
