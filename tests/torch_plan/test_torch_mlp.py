"""The registered ``torch-mlp`` plan, node-side optimizer state across rounds, and determinism."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import fedplug
from fedplug.plan import TrainingArgs
from fedplug_torch import TorchAdapter, TorchMLPPlan, TorchTrainingPlan

FEDPLUG_ADAM = {"type": "fedplug", "lr": 0.01, "modules": ["adam"]}


class TorchAdamSourcePlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        self.add_dependency(["import torch", "from torch import nn"])


def _experiment(nodes, tags, plan="torch-mlp", model_args=None, training_args=None, **kwargs):
    kwargs.setdefault("seed", 0)
    return fedplug.Experiment(
        nodes=nodes,
        tags=tags,
        training_plan=plan,
        model_args=model_args,
        training_args=training_args or {"epochs": 1, "batch_size": 16, "test_ratio": 0.2},
        round_limit=3,
        progress=False,
        **kwargs,
    )


def _adam_steps(node, exp):
    (name, state), *_ = node._sessions[exp.id].plan.optimizer.get_state()["modules"]
    assert name == "adam"
    return state["steps"]


# -- registration and model_args -----------------------------------------------------------------


def test_torch_mlp_is_registered_by_the_torch_plugin():
    pm = fedplug.get_plugin_manager()

    assert pm.training_plans["torch-mlp"] is TorchMLPPlan
    assert pm.training_plans.owner("torch-mlp") == "torch"


@pytest.mark.parametrize(
    ("layers", "activation", "expected"),
    [
        ([8, 2], "relu", [nn.Linear]),
        ([8, 16, 2], "tanh", [nn.Linear, nn.Tanh, nn.Linear]),
        ([8, 16, 4, 2], "gelu", [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]),
    ],
)
def test_torch_mlp_builds_the_layers_it_is_given(layers, activation, expected):
    plan = TorchMLPPlan({"layers": layers, "activation": activation})

    assert [type(module) for module in plan.model] == expected
    linears = [module for module in plan.model if isinstance(module, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(itertools.pairwise(layers))


def test_torch_mlp_optimizer_specs_build_the_right_optimizers():
    assert TorchMLPPlan({"layers": [8, 2]}).optimizer is None
    sgd = TorchMLPPlan({"layers": [8, 2], "optimizer": {"type": "sgd", "lr": 0.3, "momentum": 0.5}})
    assert isinstance(sgd.optimizer, torch.optim.SGD)
    assert sgd.optimizer.param_groups[0]["lr"] == 0.3
    assert sgd.optimizer.param_groups[0]["momentum"] == 0.5
    adam = TorchMLPPlan({"layers": [8, 2], "optimizer": {"type": "adam", "lr": 0.002}})
    assert isinstance(adam.optimizer, torch.optim.Adam)
    assert adam.optimizer.param_groups[0]["lr"] == 0.002
    declearn = TorchMLPPlan(
        {
            "layers": [8, 2],
            "optimizer": {"type": "fedplug", "lr": 0.02, "modules": [["momentum", {"beta": 0.8}]]},
        }
    )
    assert isinstance(declearn.optimizer, fedplug.Optimizer)
    assert declearn.optimizer.lr == 0.02
    assert declearn.optimizer.module_names == ["momentum"]


@pytest.mark.parametrize(
    ("model_args", "match"),
    [
        ({}, "layers"),
        ({"layers": [8]}, "layers"),
        ({"layers": [8, 0]}, "layers"),
        ({"layers": [8, True]}, "layers"),
        ({"layers": [8, 2.0]}, "layers"),
        ({"layers": "8,2"}, "layers"),
        ({"layers": [8, 2], "activation": "swish"}, "'swish'"),
        ({"layers": [8, 2], "loss": "hinge"}, "'hinge'"),
        ({"layers": [8, 2], "optimizer": "adam"}, "optimizer"),
        ({"layers": [8, 2], "optimizer": {"lr": 0.1}}, "type"),
        ({"layers": [8, 2], "optimizer": {"type": "rmsprop"}}, "'rmsprop'"),
        (
            {"layers": [8, 2], "optimizer": {"type": "sgd", "lr": 0.1, "nesterov_typo": True}},
            "nesterov_typo",
        ),
        (
            {"layers": [8, 2], "optimizer": {"type": "fedplug", "modules": ["no-such-module"]}},
            "'no-such-module'",
        ),
        ({"layers": [8, 2], "optimizer": {"type": "fedplug", "lr": -1.0}}, "lr"),
    ],
)
def test_torch_mlp_refuses_bad_model_args_with_a_config_error(model_args, match):
    with pytest.raises(fedplug.ConfigError, match=match):
        TorchMLPPlan(model_args)


def test_torch_mlp_refuses_a_negative_native_learning_rate_with_a_config_error():
    with pytest.raises(fedplug.ConfigError, match="-1"):
        TorchMLPPlan({"layers": [8, 2], "optimizer": {"type": "sgd", "lr": -1.0}})


def test_torch_mlp_refuses_unknown_fedplug_optimizer_settings():
    with pytest.raises(fedplug.ConfigError, match="'moduls'"):
        TorchMLPPlan(
            {"layers": [8, 2], "optimizer": {"type": "fedplug", "lr": 0.1, "moduls": ["adam"]}}
        )


def test_torch_mlp_refuses_unknown_model_args_keys():
    with pytest.raises(fedplug.ConfigError, match="'activaton'"):
        TorchMLPPlan({"layers": [8, 2], "activaton": "tanh"})


def test_bad_model_args_fail_the_experiment_before_any_round(make_nodes, tags):
    with pytest.raises(fedplug.ConfigError, match="layers"):
        _experiment(make_nodes(2), tags, model_args={"layers": [8]})


# -- training ------------------------------------------------------------------------------------


def test_torch_mlp_with_a_fedplug_adam_optimizer_learns(make_nodes, tags):
    nodes = make_nodes(3)
    exp = _experiment(nodes, tags, model_args={"layers": [8, 16, 2], "optimizer": FEDPLUG_ADAM})

    _, before = exp.evaluate()
    history = exp.run()

    assert exp.plan_ref.name == "torch-mlp"
    assert exp.plan_ref.source is None
    assert history[-1]["validation_global"]["accuracy"] >= 0.88
    assert history[-1]["validation_global"]["accuracy"] > before["accuracy"] + 0.15
    for node in nodes:
        plan = node._sessions[exp.id].plan
        assert type(plan) is TorchMLPPlan
        assert isinstance(plan.optimizer, fedplug.Optimizer)
        assert isinstance(plan.optimizer.adapter(plan.model, node.pm), TorchAdapter)
        assert _adam_steps(node, exp) == 3 * 10  # 3 rounds x ceil(160 / 16)


@pytest.mark.parametrize("lr", [None, 0.02])
def test_fedplug_adam_state_persists_across_rounds_on_each_node(make_nodes, tags, lr):
    nodes = make_nodes(2, n_samples=100)
    exp = _experiment(
        nodes,
        tags,
        model_args={"layers": [8, 2], "optimizer": FEDPLUG_ADAM},
        training_args={"num_updates": 4, "lr": lr},
    )

    steps = []
    for _ in range(3):
        exp.run(1)
        steps.append([_adam_steps(node, exp) for node in nodes])

    assert steps == [[4, 4], [8, 8], [12, 12]]
    for node in nodes:
        assert node._sessions[exp.id].plan.optimizer.lr == (lr or FEDPLUG_ADAM["lr"])


def test_torch_adam_state_persists_across_rounds_on_each_node(make_nodes, tags):
    nodes = make_nodes(2, n_samples=100)
    exp = _experiment(nodes, tags, plan=TorchAdamSourcePlan, training_args={"num_updates": 5})

    steps = []
    for _ in range(3):
        exp.run(1)
        optimizer = nodes[0]._sessions[exp.id].plan.optimizer
        steps.append({int(state["step"]) for state in optimizer.state.values()})

    assert steps == [{5}, {10}, {15}]


def test_training_args_lr_reaches_the_node_optimizers(make_nodes, tags):
    nodes = make_nodes(2, n_samples=100)
    exp = _experiment(
        nodes, tags, plan=TorchAdamSourcePlan, training_args={"num_updates": 1, "lr": 0.123}
    )

    exp.run(1)

    for node in nodes:
        groups = node._sessions[exp.id].plan.optimizer.param_groups
        assert [group["lr"] for group in groups] == [0.123]


def test_unknown_optimizer_args_key_is_reported_by_every_node(make_nodes, tags):
    exp = _experiment(
        make_nodes(2),
        tags,
        plan=TorchAdamSourcePlan,
        training_args={"num_updates": 1, "optimizer_args": {"mommentum": 0.9}},
        on_node_failure="skip",
    )

    with pytest.raises(fedplug.NodeError) as info:
        exp.run(1)

    assert "ConfigError" in str(info.value)
    assert "'mommentum'" in str(info.value)


def test_torch_mlp_trains_directly_with_a_fedplug_optimizer(task):
    plan = TorchMLPPlan({"layers": [8, 2], "optimizer": FEDPLUG_ADAM})
    data = fedplug.Dataset(*task(128, 3))
    args = TrainingArgs.from_dict({"epochs": 2, "batch_size": 16, "seed": 0})

    first = plan.train(data, args)
    second = plan.train(data, args)

    assert first.n_steps == second.n_steps == 16
    assert second.loss < first.loss


# -- determinism ---------------------------------------------------------------------------------


def _final_params(make_nodes, tags, seed):
    exp = _experiment(
        make_nodes(3, n_samples=120),
        tags,
        model_args={"layers": [8, 16, 2], "optimizer": FEDPLUG_ADAM},
        training_args={"epochs": 1, "batch_size": 16, "test_ratio": 0.2},
        seed=seed,
    )
    exp.run(2)
    return exp.global_params


def test_same_seed_gives_identical_final_parameters(make_nodes, tags):
    first = _final_params(make_nodes, tags, seed=11)
    second = _final_params(make_nodes, tags, seed=11)
    other = _final_params(make_nodes, tags, seed=12)

    assert set(first) == set(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert any(not np.array_equal(first[name], other[name]) for name in first)
