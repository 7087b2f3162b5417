"""fedplug.Optimizer over declearn: specs, validation, state, researcher and node sides."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedplug import (
    ConfigError,
    Experiment,
    LogisticRegressionPlan,
    Optimizer,
    hookimpl,
)
from fedplug.numpy_plan import NumpyModel

MODEL_ARGS = {"n_features": 4}


def module_config(opt: Optimizer, name: str) -> dict:
    return dict(opt.get_config()["modules"])[name]


def module_state(opt: Optimizer, name: str) -> dict:
    return dict(opt.get_state()["modules"])[name]


def train_steps(opt: Optimizer, model: NumpyModel, fresh_pm, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.loss_and_grad(rng.normal(size=(16, 3)), rng.integers(0, 2, 16))
        opt.step(model, fresh_pm)


# -- building -----------------------------------------------------------------------------------


def test_modules_and_regularizers_from_instances_names_and_pairs():
    from declearn.optimizer.modules import AdamModule

    opt = Optimizer(
        lr=0.1,
        decay=0.01,
        modules=[AdamModule(beta_1=0.8), "momentum", ("ewma", {"beta": 0.5}), ["rmsprop", {}]],
        regularizers=["fedprox", ("ridge", {"alpha": 0.25})],
    )
    assert opt.module_names == ["adam", "momentum", "ewma", "rmsprop"]
    assert opt.regularizer_names == ["fedprox", "ridge"]
    assert module_config(opt, "adam")["beta_1"] == 0.8
    assert module_config(opt, "ewma")["beta"] == 0.5
    assert dict(opt.get_config()["regularizers"])["ridge"]["alpha"] == 0.25
    assert opt.lr == 0.1
    assert "adam" in repr(opt) and "fedprox" in repr(opt)


def test_a_single_spec_may_be_given_without_a_list():
    assert Optimizer(lr=1.0, modules="adam").module_names == ["adam"]
    opt = Optimizer(lr=1.0, modules=("momentum", {"beta": 0.5}))
    assert module_config(opt, "momentum")["beta"] == 0.5


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ConfigError, match="unknown optimizer module 'adamw'") as info:
        Optimizer(lr=0.1, modules=["adamw"])
    available = Optimizer.available_modules()
    assert {"adam", "momentum", "scaffold-client"} <= set(available)
    for name in available:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown optimizer regularizer 'l1'") as info:
        Optimizer(lr=0.1, regularizers=["l1"])
    for name in Optimizer.available_regularizers():
        assert name in str(info.value)


def test_a_misspelled_optimizer_name_gets_a_suggestion_of_its_kind():
    with pytest.raises(ConfigError, match=r"module 'adma' \(did you mean 'adam'\?\)"):
        Optimizer(lr=0.1, modules=["adma"])
    with pytest.raises(ConfigError, match=r"regularizer 'ridgee' \(did you mean 'ridge'\?\)"):
        Optimizer(lr=0.1, regularizers=["ridgee"])
    with pytest.raises(ConfigError, match=r"regularizer 'l1';") as info:
        Optimizer(lr=0.1, regularizers=["l1"])
    assert "did you mean" not in str(info.value)


def test_a_bad_config_names_the_modules_parameters():
    with pytest.raises(ConfigError, match="optimizer module 'momentum'") as info:
        Optimizer(lr=0.1, modules=[("momentum", {"betta": 0.5})])
    message = str(info.value)
    assert "betta" in message
    assert "its parameters are:" in message and "beta" in message and "nesterov" in message


@pytest.mark.parametrize("spec", [42, ("adam",), ("adam", "beta=0.9"), (1, {}), None])
def test_malformed_specs_are_refused(spec):
    with pytest.raises(ConfigError, match="a name or a \\(name, config\\) pair"):
        Optimizer(lr=0.1, modules=[spec])


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, float("nan"), float("inf"), True])
def test_learning_rate_must_be_positive_and_finite(lr):
    with pytest.raises(ConfigError, match="lr"):
        Optimizer(lr=lr)


@pytest.mark.parametrize("decay", [-0.1, float("nan"), False])
def test_decay_must_be_non_negative(decay):
    with pytest.raises(ConfigError, match="decay"):
        Optimizer(lr=0.1, decay=decay)


def test_from_dict():
    opt = Optimizer.from_dict({"lr": 0.5, "modules": [["momentum", {"beta": 0.5}]]})
    assert opt.lr == 0.5
    assert module_config(opt, "momentum")["beta"] == 0.5
    with pytest.raises(ConfigError, match="unknown optimizer setting 'momentum'"):
        Optimizer.from_dict({"lr": 0.5, "momentum": 0.9})
    with pytest.raises(ConfigError, match="must be a dict"):
        Optimizer.from_dict(["adam"])


# -- researcher side ----------------------------------------------------------------------------


def _param_pairs(min_ratio: float, max_ratio: float):
    """(global, aggregated) arrays with aggregated = global * ratio, elementwise."""
    shape = st.shared(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), key="shape")
    values = st.floats(min_value=-1e6, max_value=1e6, allow_subnormal=False)
    ratios = st.floats(min_value=min_ratio, max_value=max_ratio)
    return st.tuples(
        hnp.arrays(np.float64, shape, elements=values),
        hnp.arrays(np.float64, shape, elements=ratios),
    )


@settings(max_examples=60, deadline=None)
@given(_param_pairs(0.51, 1.99))
def test_step_global_with_lr_1_and_no_module_is_exactly_the_aggregate(pair):
    # the realistic regime: a round moves each weight by less than its own magnitude
    global_w, ratio = pair
    aggregated = {"w": global_w * ratio}
    result = Optimizer(lr=1.0).step_global({"w": global_w}, aggregated)
    np.testing.assert_array_equal(result["w"], aggregated["w"])
    assert result["w"] is not global_w


@settings(max_examples=60, deadline=None)
@given(_param_pairs(-10.0, 10.0))
def test_step_global_with_lr_1_and_no_module_is_the_aggregate_up_to_rounding(pair):
    global_w, ratio = pair
    aggregated = {"w": global_w * ratio}
    result = Optimizer(lr=1.0).step_global({"w": global_w}, aggregated)
    tolerance = 4 * np.finfo(np.float64).eps * np.maximum(abs(global_w), abs(aggregated["w"]))
    assert np.all(abs(result["w"] - aggregated["w"]) <= tolerance)


def test_step_global_follows_the_pseudo_gradient_and_keeps_the_input():
    global_params = {"w": np.array([1.0, 2.0]), "b": np.array([0.5])}
    aggregated = {"w": np.array([0.0, 4.0]), "b": np.array([0.5])}
    kept = {name: value.copy() for name, value in global_params.items()}
    result = Optimizer(lr=0.5).step_global(global_params, aggregated)
    np.testing.assert_allclose(result["w"], [0.5, 3.0])
    np.testing.assert_allclose(result["b"], [0.5])
    for name, value in kept.items():
        np.testing.assert_array_equal(global_params[name], value)


def _experiment(nodes, **kwargs) -> Experiment:
    return Experiment(
        nodes=nodes,
        training_plan=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
        training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
        round_limit=6,
        seed=0,
        **kwargs,
    )


def test_fedavgm_differs_from_fedavg_and_converges(make_nodes):
    nodes = make_nodes((80, 120, 150))
    fedavg = _experiment(nodes)
    fedavgm = _experiment(nodes, agg_optimizer=Optimizer(lr=1.0, modules=["momentum"]))
    fedavg.run_once()
    fedavgm.run_once()
    # momentum starts from zero: the first step is FedAvg's
    np.testing.assert_allclose(fedavgm.global_params["weight"], fedavg.global_params["weight"])
    fedavg.run()
    fedavgm.run()
    assert not np.allclose(fedavgm.global_params["weight"], fedavg.global_params["weight"])
    assert fedavgm.history[-1]["validation_global"]["accuracy"] >= 0.85
    velocity = module_state(fedavgm.agg_optimizer, "momentum")["velocity"]
    assert np.any(velocity.coefs["weight"] != 0)


def test_fedadam_steps_once_per_round_and_learns(make_nodes):
    nodes = make_nodes()
    fedadam = _experiment(nodes, agg_optimizer=Optimizer(lr=0.05, modules=["adam"]))
    fedadam.run()
    assert module_state(fedadam.agg_optimizer, "adam")["steps"] == 6
    losses = [row["train_loss_mean"] for row in fedadam.history]
    assert losses[-1] < losses[0]
    fedavg = _experiment(nodes)
    fedavg.run()
    assert not np.allclose(fedadam.global_params["weight"], fedavg.global_params["weight"])


# -- node side ----------------------------------------------------------------------------------


class AdamPlan(LogisticRegressionPlan):
    """The numpy plan stepping with a declearn Adam optimizer through the model-adapter hook."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.05, modules=["adam"])


class AdamPlanPlugin:
    @hookimpl
    def fedplug_register_training_plans(self, register):
        register("adam-logreg", AdamPlan)


def test_node_optimizer_state_persists_across_rounds(fresh_pm, make_nodes):
    fresh_pm.register(AdamPlanPlugin(), name="adam-plan")
    sizes = (50, 70)
    nodes = make_nodes(sizes, plugin_manager=fresh_pm)
    exp = Experiment(
        nodes=nodes,
        training_plan="adam-logreg",
        model_args=MODEL_ARGS,
        training_args={"batch_size": 16, "epochs": 1},
        round_limit=3,
        plugin_manager=fresh_pm,
    )
    plans = {}
    for round_index in range(3):
        exp.run_once()
        for node, size in zip(nodes, sizes, strict=True):
            plan = node._sessions[exp.id].plan
            plans.setdefault(node.name, plan)
            assert plan is plans[node.name]  # one session per experiment on a node
            state = module_state(plan.optimizer, "adam")
            assert state["steps"] == (round_index + 1) * math.ceil(size / 16)
            assert np.any(state["velocity"]["state"].coefs["weight"] != 0)


def test_get_state_and_set_state_round_trip(fresh_pm):
    trained, model = Optimizer(lr=0.1, modules=["adam"]), NumpyModel(3, 2)
    train_steps(trained, model, fresh_pm, steps=4)
    twin, twin_model = Optimizer(lr=0.1, modules=["adam"]), NumpyModel(3, 2)
    twin.set_state(trained.get_state())
    twin_model.params = {name: value.copy() for name, value in model.params.items()}
    assert module_state(twin, "adam")["steps"] == 4

    train_steps(trained, model, fresh_pm, steps=2, seed=9)
    train_steps(twin, twin_model, fresh_pm, steps=2, seed=9)
    for name, value in model.params.items():
        np.testing.assert_array_equal(twin_model.params[name], value)

    # a fresh Adam from the same start point steps differently: the state mattered
    fresh, fresh_model = Optimizer(lr=0.1, modules=["adam"]), NumpyModel(3, 2)
    train_steps(trained, model, fresh_pm, steps=1, seed=5)
    fresh_model.params = {name: value.copy() for name, value in twin_model.params.items()}
    train_steps(twin, twin_model, fresh_pm, steps=1, seed=5)
    train_steps(fresh, fresh_model, fresh_pm, steps=1, seed=5)
    assert not np.allclose(fresh_model.params["weight"], twin_model.params["weight"])


def test_set_state_refuses_a_state_of_other_modules(fresh_pm):
    adam = Optimizer(lr=0.1, modules=["adam"])
    train_steps(adam, NumpyModel(3, 2), fresh_pm, steps=1)
    with pytest.raises(ConfigError, match="does not match its modules"):
        Optimizer(lr=0.1, modules=["momentum"]).set_state(adam.get_state())


def test_set_lr_keeps_module_state(fresh_pm):
    opt = Optimizer(lr=0.1, modules=["adam"])
    train_steps(opt, NumpyModel(3, 2), fresh_pm, steps=3)
    before = module_state(opt, "adam")
    opt.set_lr(0.01)
    assert opt.lr == 0.01
    after = module_state(opt, "adam")
    assert after["steps"] == before["steps"] == 3
    for moment in ("momentum", "velocity"):
        for name, value in before[moment]["state"].coefs.items():
            np.testing.assert_array_equal(after[moment]["state"].coefs[name], value)
    with pytest.raises(ConfigError, match="lr"):
        opt.set_lr(0)
    assert opt.lr == 0.01


def test_a_step_uses_the_new_learning_rate(fresh_pm):
    model = NumpyModel(3, 2)
    opt = Optimizer(lr=1.0)
    opt.set_lr(0.25)
    model.loss_and_grad(np.ones((2, 3)), np.array([0, 1]))
    grads = {name: value.copy() for name, value in model.grads.items()}
    before = {name: value.copy() for name, value in model.params.items()}
    opt.step(model, fresh_pm)
    for name, grad in grads.items():
        np.testing.assert_allclose(model.params[name], before[name] - 0.25 * grad)
