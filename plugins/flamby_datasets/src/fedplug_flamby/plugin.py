"""fedplug-flamby's plugin module (entry point ``flamby``): FLamby plans, the ``flamby``
dataset type and FLamby's FedAdam/FedYogi server steps and Scaffold as optimizer plug-ins.

Importing this module is cheap: FLamby and torch are imported when a plan or dataset is used.
"""

from __future__ import annotations

import sys
from typing import Any

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


@hookimpl
def fedplug_register_optimizer_modules(register: Register) -> None:
    # import paths: declearn is imported when the module is first used
    register("flamby-adam", "fedplug_flamby.fedopt:FlambyAdamModule")
    register("flamby-yogi", "fedplug_flamby.fedopt:FlambyYogiModule")
    register("flamby-scaffold", "fedplug_flamby.fedopt:FlambyScaffoldRegularizer")


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    """FLamby centers come with their own test split: refuse a random one before any round."""
    plan_module = sys.modules.get("fedplug_flamby.plan")  # not imported: not a FLamby plan
    if plan_module is None or not isinstance(config.plan, plan_module.FlambyTrainingPlan):
        return
    if config.training_args.test_ratio:
        from fedplug.errors import ConfigError

        raise ConfigError(
            f"FLamby's {config.plan.dataset_name} centers come with their own test split, so "
            f"test_ratio={config.training_args.test_ratio} does not apply; set test_ratio=0 "
            "(and validate=True to evaluate on the centers' test splits each round)"
        )
