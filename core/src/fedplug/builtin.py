"""fedplug's built-in plugin: core's aggregators, numpy plan, dataset types and model adapter.

Registered under the name ``fedplug`` by :func:`fedplug.plugins.get_plugin_manager`, exactly as a
third-party plugin would be: core has no privileged path.
"""

from __future__ import annotations

from typing import Any

from fedplug.hookspecs import Register, hookimpl


@hookimpl
def fedplug_register_training_plans(register: Register) -> None:
    from fedplug.numpy_plan import LogisticRegressionPlan

    register("numpy-logreg", LogisticRegressionPlan)


@hookimpl
def fedplug_register_aggregators(register: Register) -> None:
    from fedplug.aggregators import FedAverage, Median

    register("fedavg", FedAverage)
    register("median", Median)


@hookimpl
def fedplug_register_dataset_types(register: Register) -> None:
    from fedplug.datasets import load_csv, load_numpy

    register("numpy", load_numpy)
    register("csv", load_csv)


@hookimpl
def fedplug_model_adapter(model: Any) -> Any:
    from fedplug.numpy_plan import NumpyModel
    from fedplug.optimizer import NumpyAdapter

    if isinstance(model, NumpyModel):
        return NumpyAdapter(model.params, model.grads)
    return None


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    """Refuse optimizer set-ups that cannot work, before any round: auxiliary-variable modules
    without their partner on the other side, and FedProx without an explicit strength."""
    from fedplug.errors import ConfigError
    from fedplug.optimizer import Optimizer

    node_opt, agg_opt = config.node_optimizer, config.agg_optimizer
    node_aux = node_opt.aux_modules if isinstance(node_opt, Optimizer) else {}
    agg_aux = agg_opt.aux_modules if agg_opt is not None else {}
    for key, module in node_aux.items():
        if key not in agg_aux:
            partners = _partner_modules(key, module)
            raise ConfigError(
                f"the plan's node-side optimizer module {module!r} exchanges auxiliary variables "
                f"({key!r}) with a researcher-side partner, but the experiment's agg_optimizer "
                f"{'is None' if agg_opt is None else f'has modules {agg_opt.module_names}'}; set "
                f"agg_optimizer=Optimizer(lr=1.0, modules={partners})"
            )
    for key, module in agg_aux.items():
        if key in node_aux:
            continue
        partners = _partner_modules(key, module)
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


def _partner_modules(aux_name: str, module: str) -> list[str]:
    from fedplug.optimizer import Optimizer

    return sorted(
        name
        for name, cls in Optimizer.available_modules().items()
        if getattr(cls, "aux_name", None) == aux_name and name != module
    )
