"""Every hook a fedplug plugin may implement.

Hooks are called with keyword arguments only. A plugin is a module (or object) whose functions are
decorated with :data:`fedplug.hookimpl` and named after the specs below; it is found through the
``fedplug`` entry-point group::

    [project.entry-points.fedplug]
    myplugin = "my_package.plugin"

Contribution hooks receive a ``register(name, obj)`` callable: the host stores what is registered,
checks its type and refuses a name registered twice (naming both plugins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fedplug.experiment import Experiment, ExperimentConfig

hookspec = pluggy.HookspecMarker("fedplug")
hookimpl = pluggy.HookimplMarker("fedplug")

Register = Callable[[str, Any], None]


# -- contributions: called once when a registry is first needed ---------------------------------


@hookspec
def fedplug_register_training_plans(register: Register) -> None:
    """Register training-plan classes under names that experiments and nodes can refer to.

    Called once, when the plan registry is first built. Every implementation runs.

    :param register: ``register(name, plan_class)``; ``plan_class`` must be a subclass of
        :class:`fedplug.plan.TrainingPlan`, or its import path ``"package.module:Class"`` so that
        the plan's framework is imported only when the plan is used. A name registered twice is
        a :class:`PluginError`.
    :return: nothing; registering is done through ``register``.
    """


@hookspec
def fedplug_register_aggregators(register: Register) -> None:
    """Register aggregator classes or factories (e.g. ``"fedavg"``, ``"median"``).

    Called once, when the aggregator registry is first built. Every implementation runs.

    :param register: ``register(name, factory)``; ``factory()`` must return a
        :class:`fedplug.aggregators.Aggregator`.
    :return: nothing.
    """


@hookspec
def fedplug_register_dataset_types(register: Register) -> None:
    """Register node-side dataset loaders (e.g. ``"csv"``, ``"numpy"``).

    Called once, when a node's dataset-type registry is first built. Every implementation runs.

    :param register: ``register(name, loader)``; ``loader(**options)`` must return
        a :class:`fedplug.datasets.Dataset`.
    :return: nothing.
    """


@hookspec
def fedplug_register_secagg_schemes(register: Register) -> None:
    """Register secure-aggregation schemes (e.g. ``"masking"``).

    Called once, when the secagg registry is first built. Every implementation runs.

    :param register: ``register(name, scheme_class)``.
    :return: nothing.
    """


# -- selection: the first non-None result wins --------------------------------------------------


@hookspec(firstresult=True)
def fedplug_model_adapter(model: Any) -> Any | None:
    """Wrap a framework model so that :class:`fedplug.Optimizer` (declearn) can step it.

    Called each time a node-side ``fedplug.Optimizer`` is bound to a plan's model. Stops at the
    first non-None result.

    :param model: the model object of a training plan (a torch ``nn.Module``, a scikit-learn
        estimator, a core numpy model, ...).
    :return: a :class:`fedplug.optimizer.ModelAdapter` for that model, or None when this plugin
        does not know the model's type.
    """


# -- validation: every implementation runs; any may raise ---------------------------------------


@hookspec
def fedplug_validate_experiment(config: ExperimentConfig) -> None:
    """Check an experiment's configuration once, when the experiment is built, before any round.

    Every implementation runs. Raise a :class:`fedplug.errors.FedplugError` subclass (usually
    :class:`ConfigError`) naming the offending value and the fix to refuse the configuration.

    :param config: the experiment's resolved configuration (plan class, training args, aggregator,
        researcher optimizer, node-side optimizer description, ...).
    :return: nothing.
    """


# -- lifecycle: observers (tracking, logging, plotting) -----------------------------------------


@hookspec
def fedplug_round_started(round_index: int, experiment: Experiment) -> None:
    """Called at the start of each round, before any request is sent. Every implementation runs.

    :param round_index: the 0-based index of the round about to run.
    :param experiment: the running experiment (read it, do not mutate it).
    :return: nothing.
    """


@hookspec
def fedplug_round_finished(round_index: int, summary: dict, experiment: Experiment) -> None:
    """Called after a round is aggregated and validated. Every implementation runs.

    :param round_index: the 0-based index of the round that just finished.
    :param summary: the round's history row (nodes, samples, train loss, validation metrics,
        durations), as stored in ``experiment.history``.
    :param experiment: the running experiment.
    :return: nothing.
    """


@hookspec
def fedplug_experiment_finished(experiment: Experiment) -> None:
    """Called once when :meth:`Experiment.run` completes its last round. Every implementation runs.

    :param experiment: the finished experiment, with its final model and history.
    :return: nothing.
    """
