"""fedplug-mlflow's plugin module (entry point ``mlflow``): the ``mlflow`` tracker.

Importing this module is cheap: MLflow is imported when an experiment turns the tracker on.
"""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_trackers(register: Register) -> None:
    register("mlflow", "fedplug_mlflow.tracker:MlflowTracker")
