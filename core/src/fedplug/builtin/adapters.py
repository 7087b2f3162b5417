"""Core's model adapter: the NumPy plan's model, stepped by ``fedplug.Optimizer``."""

from __future__ import annotations

import sys
from typing import Any

from fedplug.hookspecs import hookimpl


@hookimpl
def fedplug_model_adapter(model: Any) -> Any:
    numpy_plan = sys.modules.get("fedplug.numpy_plan")  # not imported: not a NumPy model
    if numpy_plan is None or not isinstance(model, numpy_plan.NumpyModel):
        return None
    from fedplug.adapter import NumpyAdapter

    return NumpyAdapter(model.params, model.grads)
