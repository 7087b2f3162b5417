"""fedplug-torch's plugin module (entry point ``torch``): plans and the ``nn.Module`` adapter.

Importing this module is cheap: torch is imported inside the hooks, when they run.
"""

from __future__ import annotations

import sys
from typing import Any

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_training_plans(register: Register) -> None:
    # an import path: torch is imported when the plan is first used, not at registry build
    register("torch-mlp", "fedplug_torch.plan:TorchMLPPlan")


@hookimpl
def fedplug_model_adapter(model: Any) -> Any:
    if "torch" not in sys.modules:  # then ``model`` cannot be a torch module
        return None
    import torch

    if isinstance(model, torch.nn.Module):
        from fedplug_torch.plan import TorchAdapter

        return TorchAdapter(model)
    return None
