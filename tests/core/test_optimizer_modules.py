"""Optimizer modules come from plugins (``fedplug_register_optimizer_modules``): names resolve
through the plugin manager on the researcher, on nodes and in ``fedplug optimizers``; a plugin's
modules exist only where it is registered."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from declearn import optimizer as declearn_optimizer
from declearn.optimizer.modules import AuxVar, OptiModule

from fedplug import (
    ConfigError,
    Experiment,
    LogisticRegressionPlan,
    Optimizer,
    PluginError,
    hookimpl,
)
from fedplug.builtin.optimizers import DECLEARN_PLUGINS
from fedplug.cli import main
from fedplug.plugins import active, get_plugin_manager

MODEL_ARGS = {"n_features": 4}


# A third party's auxiliary-variable pair: the client counts its steps, the server sums them.
@dataclasses.dataclass
class StepCountAuxVar(AuxVar):
    steps: float = 0.0

    def __add__(self, other):
        return StepCountAuxVar(steps=self.steps + other.steps)


class _StepCounting(OptiModule, register=False):
    aux_name = "opt-modules-test-step-count"
    auxvar_cls = StepCountAuxVar

    def __init__(self):
        self.steps = 0.0
        self.received: list[float] = []

    def run(self, gradients):
        self.steps += 1.0
        return gradients

    def collect_aux_var(self):
        return StepCountAuxVar(steps=self.steps)

    def process_aux_var(self, aux_var):
        self.received.append(aux_var.steps)


class StepCountClient(_StepCounting):
    name = "opt-modules-test-client"


class StepCountServer(_StepCounting):
    name = "opt-modules-test-server"


class StepCountPlugin:
    @hookimpl
    def fedplug_register_optimizer_modules(self, register):
        register("opt-modules-test-client", StepCountClient)
        register("opt-modules-test-server", f"{__name__}:StepCountServer")


class StepCountPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.1, modules=["opt-modules-test-client"])
        self.add_dependency("from fedplug import Optimizer")


def plugin_manager():
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(StepCountPlugin(), name="step-count")
    return pm


def test_hook_fedplug_register_optimizer_modules(make_nodes):
    pm = plugin_manager()
    assert pm.optimizer_modules["opt-modules-test-server"] is StepCountServer
    assert pm.optimizer_modules.owner("opt-modules-test-client") == "step-count"
    # the pair works by name on every side: the plan's optimizer is built on each node with
    # the node's plugins, the researcher's with the experiment's
    nodes = make_nodes(plugin_manager=pm)
    server = Optimizer(lr=1.0, modules=["opt-modules-test-server"], plugin_manager=pm)
    exp = Experiment(
        nodes=nodes,
        training_plan=StepCountPlan,
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20, "epochs": 1},
        agg_optimizer=server,
        round_limit=2,
        plugin_manager=pm,
    )
    exp.run()
    module = server.declearn.modules[0]
    # each round: the steps of the three nodes (60, 80 and 100 samples at 20 a batch), summed;
    # the client keeps counting across rounds (its state persists on the node)
    assert module.received == [3 + 4 + 5, 2 * (3 + 4 + 5)]


def test_a_name_only_a_plugin_provides_is_unknown_without_it(make_nodes):
    with pytest.raises(ConfigError, match="unknown optimizer module 'opt-modules-test-client'"):
        Optimizer(lr=0.1, modules=["opt-modules-test-client"])
    # declearn itself knows the class (defined above, registered on import): not enough
    pm = get_plugin_manager(load_entry_points=False)
    with pytest.raises(ConfigError, match="fedplug optimizers"):
        Optimizer(lr=1.0, modules=["opt-modules-test-server"], plugin_manager=pm)
    # and a node without the plugin refuses the plan that needs it, naming the module
    nodes = make_nodes((40,))
    pm = plugin_manager()
    exp = Experiment(
        nodes=nodes,
        training_plan=StepCountPlan,
        model_args=MODEL_ARGS,
        agg_optimizer=Optimizer(lr=1.0, modules=["opt-modules-test-server"], plugin_manager=pm),
        plugin_manager=pm,
    )
    with pytest.raises(Exception, match="unknown optimizer module 'opt-modules-test-client'"):
        exp.run_once()


def test_the_active_plugin_manager_resolves_names_for_code_that_gets_none():
    pm = plugin_manager()
    with active(pm):
        optimizer = Optimizer(lr=0.1, modules=["opt-modules-test-client"])
    assert optimizer.plugin_manager is pm
    assert optimizer.module_names == ["opt-modules-test-client"]
    assert Optimizer.from_dict(optimizer.to_dict(), plugin_manager=pm).module_names == [
        "opt-modules-test-client"
    ]


def test_a_name_of_another_kind_says_where_it_goes():
    with pytest.raises(
        ConfigError, match=r"regularizer 'fedprox' was given as a module.*regularizers="
    ):
        Optimizer(lr=0.1, modules=["fedprox"])
    with pytest.raises(ConfigError, match=r"module 'adam' was given as a regularizer.*modules="):
        Optimizer(lr=0.1, regularizers=["adam"])


@pytest.mark.parametrize(
    ("registered", "problem"),
    [
        ("not-a-class", "a declearn OptiModule"),
        (StepCountClient, "its declearn name 'opt-modules-test-client'"),  # under another name
    ],
)
def test_a_bad_registration_is_refused_naming_the_plugin(registered, problem):
    class Bad:
        @hookimpl
        def fedplug_register_optimizer_modules(self, register):
            register("renamed", f"{__name__}:StepCountClient")
            register("odd", registered if registered != "not-a-class" else f"{__name__}:MODEL_ARGS")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Bad(), name="bad-plugin")
    name = "odd" if registered == "not-a-class" else "renamed"
    with pytest.raises(PluginError, match="bad-plugin") as info:
        pm.optimizer_modules[name]
    assert problem in str(info.value)


def test_core_registers_declearns_own_names_lazily():
    """The built-in list is declearn's registry (a declearn upgrade that adds or renames one
    fails here), given as import paths, so that listing them imports nothing."""
    installed = {
        **declearn_optimizer.list_optim_modules(),
        **declearn_optimizer.list_optim_regularizers(),
        **declearn_optimizer.list_rate_schedulers(),
    }
    # declearn's own, less those a framework's model package adds when it is imported
    # (declearn.model.torch registers "torch-optim"): which ones depends on the tests run before
    ours = {
        name: cls
        for name, cls in installed.items()
        if cls.__module__.startswith("declearn.")
        and not cls.__module__.startswith("declearn.model.")
    }
    assert set(DECLEARN_PLUGINS) == set(ours)
    pm = get_plugin_manager(load_entry_points=False)
    for name, cls in ours.items():
        assert pm.optimizer_modules[name] is cls
    assert all(isinstance(path, str) for path in DECLEARN_PLUGINS.values())


def test_fedplug_optimizers_lists_every_plugins_names_by_kind(capsys):
    assert main(["optimizers", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"modules", "regularizers", "schedulers"} == set(listing)
    assert {"adam", "scaffold-client", "scaffold-server"} <= set(listing["modules"])
    assert "fedprox" in listing["regularizers"] and "warmup" in listing["schedulers"]
    assert not set(listing["modules"]) & set(listing["regularizers"])


def test_optimizer_state_and_numpy_steps_are_unchanged_by_the_registry():
    pm = plugin_manager()
    optimizer = Optimizer(lr=0.5, modules=["adam"], plugin_manager=pm)
    params = {"w": np.ones(3)}
    stepped = optimizer.step_global(params, {"w": np.zeros(3)})
    reference = Optimizer(lr=0.5, modules=["adam"]).step_global(params, {"w": np.zeros(3)})
    assert np.array_equal(stepped["w"], reference["w"])
