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
