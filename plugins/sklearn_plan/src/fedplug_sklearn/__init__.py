"""scikit-learn training plans for fedplug: linear models trained by SGD.

``SGDClassifierPlan`` (registered as ``sklearn-sgd``), ``SGDRegressorPlan``
(``sklearn-sgd-regressor``) and ``PerceptronPlan`` (``sklearn-perceptron``) train with
``partial_fit`` at the estimator's own learning rate, or with a :class:`fedplug.Optimizer` through
:class:`SklearnAdapter`, which computes the exact gradient of the estimator's loss and penalty.
"""

from typing import Any

__all__ = [
    "PerceptronPlan",
    "SGDClassifierPlan",
    "SGDRegressorPlan",
    "SklearnAdapter",
    "SklearnTrainingPlan",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the entry point does) must not import scikit-learn.
    if name in __all__:
        from fedplug_sklearn import plan

        return getattr(plan, name)
    raise AttributeError(f"module 'fedplug_sklearn' has no attribute {name!r}")
