"""fedplug-flamby's plugin module (entry point ``flamby``): FLamby plans and the ``flamby``
dataset type.

Importing this module is cheap: FLamby and torch are imported when a plan or dataset is used.
"""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_training_plans(register: Register) -> None:
    # import paths: torch and FLamby are imported when a plan is first used
    from fedplug_flamby.datasets import DATASETS, plan_class_name

    register("flamby", "fedplug_flamby.plan:FlambyTrainingPlan")
    for dataset in DATASETS:
        register(f"flamby-{dataset}", f"fedplug_flamby.plan:{plan_class_name(dataset)}")


@hookimpl
def fedplug_register_dataset_types(register: Register) -> None:
    from fedplug_flamby.datasets import load_flamby

    register("flamby", load_flamby)
