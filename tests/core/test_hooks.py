"""Each hook of fedplug.hookspecs, exercised through a plugin registered on a fresh manager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedplug import (
    ConfigError,
    Dataset,
    Experiment,
    LogisticRegressionPlan,
    Median,
    Node,
    NodeError,
    Optimizer,
    PluginError,
    hookimpl,
)
from fedplug import messages as msg
from fedplug.numpy_plan import NumpyModel
from fedplug.optimizer import NumpyAdapter
from fedplug.plugins import get_plugin_manager

MODEL_ARGS = {"n_features": 4}


class CustomPlan(LogisticRegressionPlan):
    """A plan a plugin contributes by name."""


class RecordingNode(Node):
    """Counts the requests it receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = 0

    def serve(self, request, size=None):
        self.requests += 1
        return super().serve(request, size)


# -- contributions ------------------------------------------------------------------------------


def test_hook_fedplug_register_training_plans(fresh_pm, make_nodes):
    class Plugin:
        @hookimpl
        def fedplug_register_training_plans(self, register):
            register("custom-plan", CustomPlan)

    fresh_pm.register(Plugin(), name="plans")
    assert fresh_pm.training_plans["custom-plan"] is CustomPlan
    nodes = make_nodes(plugin_manager=fresh_pm)
    exp = Experiment(
        nodes=nodes,
        training_plan="custom-plan",
        model_args=MODEL_ARGS,
        round_limit=1,
        plugin_manager=fresh_pm,
    )
    assert exp.plan_class is CustomPlan
    assert (exp.plan_ref.name, exp.plan_ref.source) == ("custom-plan", None)  # sent by name
    assert exp.run()[0]["nodes"] == [node.name for node in nodes]

    # a node whose plugins do not provide the name refuses the request, naming what it has
    lacking = make_nodes((50,), tags=exp.tags)
    exp = Experiment(
        nodes=lacking, training_plan="custom-plan", model_args=MODEL_ARGS, plugin_manager=fresh_pm
    )
    with pytest.raises(NodeError, match="no training plan named 'custom-plan'"):
        exp.run_once()

    fresh_pm.register(Plugin(), name="plans-again")
    with pytest.raises(PluginError, match="'custom-plan'"):
        fresh_pm.training_plans  # noqa: B018 (building the registry is the point)


def test_hook_fedplug_register_aggregators(fresh_pm, make_nodes):
    class Plugin:
        @hookimpl
        def fedplug_register_aggregators(self, register):
            register("my-median", lambda: Median())  # a factory is enough

    fresh_pm.register(Plugin(), name="aggs")
    exp = Experiment(
        nodes=make_nodes(),
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        aggregator="my-median",
        round_limit=1,
        plugin_manager=fresh_pm,
    )
    assert isinstance(exp.aggregator, Median)
    exp.run()
    fresh_pm.register(Plugin(), name="aggs-again")
    with pytest.raises(PluginError, match="'my-median'"):
        fresh_pm.aggregators  # noqa: B018


def test_hook_fedplug_register_dataset_types(fresh_pm, tmp_path: Path):
    def constant(*, n: int, tags=None):
        return Dataset(np.zeros((n, 2)), np.zeros(n, dtype=np.int64), tags or [], "constant")

    class Plugin:
        def __init__(self, name):
            self.name = name

        @hookimpl
        def fedplug_register_dataset_types(self, register):
            register(self.name, constant)

    fresh_pm.register(Plugin("constant"), name="loaders")
    assert len(fresh_pm.dataset_types["constant"](n=5, tags=["a"])) == 5
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\n2,1\n")
    assert len(fresh_pm.dataset_types["csv"](path=str(path), target="label")) == 2

    fresh_pm.register(Plugin("csv"), name="csv-clash")
    with pytest.raises(PluginError, match="'csv'") as info:
        fresh_pm.dataset_types  # noqa: B018
    assert "'fedplug.builtin.datasets'" in str(info.value) and "'csv-clash'" in str(info.value)


def test_hook_fedplug_register_secagg_schemes(fresh_pm):
    class Scheme:
        pass

    class Plugin:
        @hookimpl
        def fedplug_register_secagg_schemes(self, register):
            register("masking", Scheme)

    assert len(fresh_pm.secagg_schemes) == 0  # core ships none
    fresh_pm.register(Plugin(), name="secagg")
    assert fresh_pm.secagg_schemes["masking"] is Scheme
    assert fresh_pm.secagg_schemes.owner("masking") == "secagg"
    fresh_pm.register(Plugin(), name="secagg-copy")
    with pytest.raises(PluginError, match="'masking'") as info:
        fresh_pm.secagg_schemes  # noqa: B018
    assert "'secagg'" in str(info.value) and "'secagg-copy'" in str(info.value)


# -- selection: first non-None result -----------------------------------------------------------


class Widget:
    """A model type no installed plugin knows."""

    def __init__(self):
        self.params = {"w": np.array([1.0, 2.0, 3.0])}
        self.grads = {"w": np.array([0.5, -1.0, 2.0])}


class AdapterPlugin:
    def __init__(self, result=None):
        self.result = result
        self.calls = 0

    @hookimpl
    def fedplug_model_adapter(self, model):
        self.calls += 1
        if isinstance(model, Widget):
            return self.result or NumpyAdapter(model.params, model.grads)
        return None


def test_hook_fedplug_model_adapter_first_non_none_wins(fresh_pm):
    assert isinstance(fresh_pm.model_adapter(NumpyModel(2, 2)), NumpyAdapter)  # built-in
    with pytest.raises(PluginError, match="Widget") as info:
        fresh_pm.model_adapter(Widget())
    assert "fedplug-torch" in str(info.value)

    knows = AdapterPlugin(result="adapter-of-knows")
    declines = AdapterPlugin()
    declines.fedplug_model_adapter = hookimpl(lambda model: None)  # knows nothing
    fresh_pm.register(knows, name="knows")
    fresh_pm.register(declines, name="declines")  # registered last: asked first
    assert fresh_pm.model_adapter(Widget()) == "adapter-of-knows"

    class Eager:
        @hookimpl(tryfirst=True)
        def fedplug_model_adapter(self, model):
            return "adapter-of-eager"

    fresh_pm.register(Eager(), name="eager")
    knows.calls = 0
    assert fresh_pm.model_adapter(Widget()) == "adapter-of-eager"
    assert knows.calls == 0  # stopped at the first non-None result


def test_hook_fedplug_model_adapter_lets_the_optimizer_step_any_model(fresh_pm):
    fresh_pm.register(AdapterPlugin(), name="widgets")
    widget = Widget()
    before, grads = widget.params["w"].copy(), widget.grads["w"].copy()
    Optimizer(lr=0.5).step(widget, fresh_pm)
    np.testing.assert_allclose(widget.params["w"], before - 0.5 * grads)


# -- validation -----------------------------------------------------------------------------------


def test_hook_fedplug_validate_experiment_refuses_before_any_round(fresh_pm, make_nodes):
    seen = []

    class Observer:
        @hookimpl
        def fedplug_validate_experiment(self, config):
            seen.append(("observer", config))

    class Refuser:
        @hookimpl
        def fedplug_validate_experiment(self, config):
            seen.append(("refuser", config))
            if isinstance(config.aggregator, Median):
                raise ConfigError("median is not allowed by the refuser plugin")

    fresh_pm.register(Observer(), name="observer")
    fresh_pm.register(Refuser(), name="refuser")
    nodes = make_nodes(node_cls=RecordingNode)
    with pytest.raises(ConfigError, match="refuser"):
        Experiment(
            nodes=nodes,
            training_plan=LogisticRegressionPlan,
            model_args=MODEL_ARGS,
            aggregator="median",
            round_limit=2,
            plugin_manager=fresh_pm,
        )
    assert all(node.requests == 0 for node in nodes)

    exp = Experiment(
        nodes=nodes,
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        training_args={"epochs": 2},
        round_limit=2,
        plugin_manager=fresh_pm,
    )
    last = [entry for entry in seen if entry[1] is exp.config]
    assert sorted(name for name, _ in last) == ["observer", "refuser"]  # every one ran
    config = exp.config
    assert config.plan_class is LogisticRegressionPlan
    assert config.training_args.epochs == 2
    assert config.nodes == [node.name for node in nodes]
    assert config.round_limit == 2
    assert all(node.requests == 0 for node in nodes)


# -- the node: serving a request ------------------------------------------------------------------


class EvaluationGuard:
    """Wraps every request on a node: refuses evaluation, halves trained parameters, and
    records what it saw (a node-side policy written as a plugin)."""

    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def fedplug_node_request(self, node, request):
        self.seen.append((node.name, type(request).__name__))
        if isinstance(request, msg.EvaluateRequest):
            raise ConfigError(f"node {node.name!r} evaluates nothing today")
        reply = yield
        if isinstance(reply, msg.TrainReply):
            reply.params = {name: value / 2 for name, value in reply.params.items()}
        return reply


class SecAggResponder:
    """Serves a request type core does not (what fedplug-secagg does for its steps)."""

    @hookimpl
    def fedplug_node_request(self, node, request):
        if isinstance(request, msg.SecAggRequest):
            data = msg.SecAggData("echo", "pong", {"node": node.name})
            return msg.SecAggReply(request.experiment_id, request.round_index, node.name, data)
        return None


def test_hook_fedplug_node_request(fresh_pm, make_nodes):
    # core's built-in implementation trains and evaluates; SecAggRequest is nobody's
    [plain] = make_nodes((40,), plugin_manager=fresh_pm)
    ping = msg.encode(msg.SecAggRequest("exp", 0, msg.SecAggData("echo", "ping")))
    reply = msg.decode(b"".join(plain.serve(ping)))
    assert isinstance(reply, msg.ErrorReply) and "serves no SecAggRequest" in reply.message

    guard = EvaluationGuard()
    fresh_pm.register(guard, name="guard")
    fresh_pm.register(SecAggResponder(), name="responder")
    reply = msg.decode(b"".join(plain.serve(ping)))
    assert isinstance(reply, msg.SecAggReply) and reply.data.values == {"node": plain.name}

    nodes = make_nodes(plugin_manager=fresh_pm)
    exp = Experiment(
        nodes=nodes,
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20, "test_ratio": 0.25},
        validate=False,
        round_limit=1,
        seed=0,
        plugin_manager=get_plugin_manager(load_entry_points=False),
    )
    exp.run()
    reference = Experiment(
        nodes=make_nodes(plugin_manager=get_plugin_manager(load_entry_points=False)),
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20, "test_ratio": 0.25},
        validate=False,
        round_limit=1,
        seed=0,
    )
    reference.run()
    for name, value in reference.global_params.items():  # every node's update was halved
        np.testing.assert_allclose(exp.global_params[name], value / 2)
    with pytest.raises(NodeError, match="evaluates nothing today"):
        exp.evaluate()
    assert ("SecAggRequest" in {kind for _, kind in guard.seen}) and (
        {kind for _, kind in guard.seen} >= {"TrainRequest", "EvaluateRequest"}
    )


# -- lifecycle ------------------------------------------------------------------------------------


def test_hooks_round_started_round_finished_and_experiment_finished(fresh_pm, make_nodes):
    events = []

    class Tracker:
        @hookimpl
        def fedplug_round_started(self, round_index, experiment):
            events.append(("started", round_index, len(experiment.history)))

        @hookimpl
        def fedplug_round_finished(self, round_index, summary, experiment):
            assert summary is experiment.history[-1]
            events.append(("finished", round_index, summary["round"], "validation" in summary))

        @hookimpl
        def fedplug_experiment_finished(self, experiment):
            events.append(("experiment", experiment.round_index, len(experiment.history)))

    fresh_pm.register(Tracker(), name="tracker")
    exp = Experiment(
        nodes=make_nodes(),
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        training_args={"test_ratio": 0.25},
        round_limit=3,
        plugin_manager=fresh_pm,
    )
    assert events == []
    exp.run()
    assert events == [
        ("started", 0, 0),
        ("finished", 0, 0, True),
        ("started", 1, 1),
        ("finished", 1, 1, True),
        ("started", 2, 2),
        ("finished", 2, 2, True),
        ("experiment", 3, 3),
    ]
