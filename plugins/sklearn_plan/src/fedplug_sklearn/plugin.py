"""fedplug-sklearn's plugin module (entry point ``sklearn``): plans and the estimator adapter.

Importing this module is cheap: scikit-learn is imported inside the hooks, when they run.
"""

from __future__ import annotations

import sys
from typing import Any

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_training_plans(register: Register) -> None:
    # import paths: scikit-learn is imported when a plan is first used, not at registry build
    register("sklearn-sgd", "fedplug_sklearn.plan:SGDClassifierPlan")
    register("sklearn-sgd-regressor", "fedplug_sklearn.plan:SGDRegressorPlan")
    register("sklearn-perceptron", "fedplug_sklearn.plan:PerceptronPlan")


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    """scikit-learn plans take their estimator's settings in ``model_args``, not
    ``optimizer_args``: refuse the latter before any round rather than ignore it."""
    if config.plan.framework != "sklearn" or not config.training_args.optimizer_args:
        return
    from fedplug import ConfigError

    keys = sorted(config.training_args.optimizer_args)
    raise ConfigError(
        f"training argument 'optimizer_args' ({keys}) does not apply to scikit-learn plans; "
        "give estimator settings (eta0, learning_rate, alpha, ...) in model_args instead"
    )


@hookimpl
def fedplug_model_adapter(model: Any) -> Any:
    if "sklearn" not in sys.modules:  # then ``model`` cannot be an estimator
        return None
    from fedplug_sklearn.plan import SUPPORTED_ESTIMATORS, SklearnAdapter

    if isinstance(model, SUPPORTED_ESTIMATORS):
        return SklearnAdapter(model)
    return None
