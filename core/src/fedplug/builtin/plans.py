"""Core's training plan: multinomial logistic regression in NumPy (``numpy-logreg``)."""

from __future__ import annotations

from fedplug.hookspecs import Register, hookimpl


@hookimpl
def fedplug_register_training_plans(register: Register) -> None:
    register("numpy-logreg", "fedplug.numpy_plan:LogisticRegressionPlan")
