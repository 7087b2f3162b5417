"""Every hook a fedplug plugin may implement.

Hooks are called with keyword arguments only. A plugin is a module (or object) whose functions are
decorated with :data:`fedplug.hookimpl` and named after the specs below; it is found through the
``fedplug`` entry-point group::

    [project.entry-points.fedplug]
    myplugin = "my_package.plugin"

Contribution hooks receive a ``register(name, obj)`` callable: the host stores what is registered,
checks its type and refuses a name registered twice (naming both plugins). ``obj`` may be given as
an import path ``"package.module:attribute"``, imported only when the name is first used, so that
installing a plugin never slows down ``import fedplug``, ``fedplug --help`` or a node's start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # annotations only: the contracts layer imports nothing above it
    from fedplug.experiment import Experiment, ExperimentConfig
    from fedplug.node import Node

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

    :param register: ``register(name, scheme_class)``; ``scheme_class(settings)`` must return a
        :class:`fedplug.secagg.SecAggScheme`, and ``scheme_class.node_side(node, experiment_id)``
        its node-side state.
    :return: nothing.
    """


@hookspec
def fedplug_register_optimizer_modules(register: Register) -> None:
    """Register declearn optimizer plug-ins by name: ``OptiModule`` classes (gradient
    transforms such as ``"adam"``, auxiliary-variable pairs such as ``"scaffold-client"`` /
    ``"scaffold-server"``), ``Regularizer`` classes (``"fedprox"``) and learning-rate
    ``Scheduler`` classes (``"warmup"``).

    Called once per plugin manager, when an optimizer name is first resolved.
    Every implementation runs. :class:`fedplug.Optimizer` resolves the names it is given through
    this registry, on the researcher, on every node and when a checkpoint is loaded: an installed
    plugin's modules work everywhere without a manual import, and a disabled plugin's are gone.

    :param register: ``register(name, cls)``; ``cls`` is the declearn class or, better, its import
        path ``"package.module:Class"`` (declearn takes seconds to import). ``name`` must be the
        class's declearn ``name``. Resolving the name imports the class, which registers it (and
        its ``AuxVar`` type) with declearn.
    :return: nothing.
    """


@hookspec
def fedplug_register_transports(register: Register) -> None:
    """Register transports, how messages travel between the researcher and nodes, by name.

    Called once, when the transport registry is first built. Every implementation runs. Core
    registers ``"local"`` (nodes in this process or its worker processes); ``fedplug-grpc``
    registers ``"grpc"``. ``Experiment(transport=name, transport_options={...})`` builds one.

    :param register: ``register(name, factory)``; ``factory(*, nodes, tags, min_nodes,
        **options)`` returns a :class:`fedplug.transport.Transport` connected to the federation
        (``nodes``: the in-process nodes the experiment was given, or None; ``tags`` and
        ``min_nodes``: what the experiment needs, e.g. to wait for remote nodes). A factory
        refuses options it does not know with a :class:`ConfigError`.
    :return: nothing.
    """


@hookspec
def fedplug_register_trackers(register: Register) -> None:
    """Register experiment trackers (TensorBoard, MLflow, ...) that a researcher turns on by name.

    Called once, when the tracker registry is first built. Every implementation runs.
    ``Experiment(tracking="name")``, ``tracking=["a", "b"]`` or ``tracking={"name": {options}}``
    builds the named trackers when the experiment is built (an unknown name or option is a
    :class:`ConfigError` then, before any round).

    :param register: ``register(name, factory)``; ``factory(experiment, **options)`` returns a
        tracker: an object with any of ``round_finished(round_index, summary, experiment)``
        (after each applied round: ``summary`` is the round's history row),
        ``experiment_finished(experiment)`` (after :meth:`Experiment.run`'s last round: the
        final model is ``experiment.global_params``) and ``close()`` (when the experiment is
        closed). A tracker that raises while logging is reported once as a warning and turned
        off; the experiment goes on (tracking never costs a round).
    :return: nothing.
    """


@hookspec
def fedplug_register_commands(register: Register) -> None:
    """Register sub-commands of the ``fedplug`` command line (``fedplug NAME ...``).

    Called once each time the command line is built (``fedplug --help`` included), so keep the
    registration cheap. Every implementation runs.

    :param register: ``register(name, setup)``; ``setup(parser)`` adds the command's arguments
        (and sub-commands) to the ``argparse.ArgumentParser`` it is given and returns the function
        that runs the command: ``run(args) -> int`` (the exit code). The first line of ``setup``'s
        docstring is the command's help. A :class:`FedplugError` from ``run`` is reported as
        ``fedplug: error: ...`` with exit code 2.
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
    :return: a :class:`fedplug.adapter.ModelAdapter` for that model, or None when this plugin
        does not know the model's type.
    """


# -- the node: serving a request ----------------------------------------------------------------


@hookspec(firstresult=True)
def fedplug_node_request(node: Node, request: Any) -> Any | None:
    """Serve one request on a node and return its reply message.

    Called by :meth:`fedplug.node.Node.serve` for every request it decoded (its parameters already
    loaded into the plan when it trains or evaluates). Stops at the first non-None result: core's
    built-in plugin serves ``TrainRequest`` and ``EvaluateRequest`` (:meth:`Node.train`,
    :meth:`Node.evaluate`); a plugin serves request types of its own protocol (fedplug-secagg's
    ``SecAggRequest``). A request no implementation serves is answered with a ``MessageError``.

    Wrap it, ``@hookimpl(wrapper=True)`` with ``reply = yield``, to act around every request, as
    Flower's mods do around a client's handler: before ``yield``, refuse the request by raising a
    :class:`FedplugError` (the node answers with it, nothing else runs); after it, inspect or
    change the reply. fedplug-secagg's wrapper refuses auxiliary-variable optimizers and masks
    the trained parameters this way.

    :param node: the :class:`fedplug.node.Node` serving the request (its name, datasets, plugin
        manager, :meth:`~fedplug.node.Node.session` and per-experiment
        :meth:`~fedplug.node.Node.plugin_state`).
    :param request: the decoded request message (a :mod:`fedplug.messages` dataclass).
    :return: the reply message, or None when this implementation does not serve the request.
    """


# -- validation: every implementation runs; any may raise ---------------------------------------


@hookspec
def fedplug_validate_experiment(config: ExperimentConfig) -> None:
    """Check an experiment's configuration once, when the experiment is built: before any
    transport is opened or any node contacted.

    Every implementation runs. Raise a :class:`fedplug.errors.FedplugError` subclass (usually
    :class:`ConfigError`) naming the offending value and the fix to refuse the configuration.

    :param config: the experiment's resolved configuration (plan class, training args, aggregator,
        researcher optimizer, node-side optimizer, secure-aggregation scheme, the plugin manager
        that resolved them, ...).
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
