"""Node-side declearn modules, regularizers, schedulers and chains, trained through fedplug."""

import numpy as np
import pytest

from fedplug import Dataset, Experiment, LogisticRegressionPlan, Node, Optimizer, TrainingArgs


def separable(seed: int, n: int = 120) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    return Dataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64))


def train_locally(optimizer: Optimizer, epochs: int = 3) -> LogisticRegressionPlan:
    plan = LogisticRegressionPlan({"n_features": 6})
    plan.optimizer = optimizer
    plan.train(
        separable(0), TrainingArgs.from_dict({"batch_size": 10, "epochs": epochs, "seed": 0})
    )
    return plan


def accuracy(plan: LogisticRegressionPlan) -> float:
    return plan.evaluate(separable(1), TrainingArgs())["accuracy"]


SGD = train_locally(Optimizer(lr=0.1))


@pytest.mark.parametrize(
    ("modules", "lr"),
    [
        (["adam"], 0.05),
        (["rmsprop"], 0.05),
        (["adagrad"], 0.3),
        ([("momentum", {"beta": 0.9})], 0.05),
        (["yogi"], 0.05),
    ],
    ids=["adam", "rmsprop", "adagrad", "momentum", "yogi"],
)
def test_node_side_modules_train_and_change_the_update_rule(modules, lr):
    plan = train_locally(Optimizer(lr=lr, modules=modules))
    assert accuracy(plan) > 0.9
    moved = plan.get_parameters()["weight"]
    assert not np.allclose(moved, SGD.get_parameters()["weight"])
    assert plan.optimizer.get_state()["modules"][0][0] == plan.optimizer.module_names[0]


def test_ridge_and_lasso_shrink_the_weights():
    free = train_locally(Optimizer(lr=0.1), epochs=10).get_parameters()["weight"]
    ridge = train_locally(Optimizer(lr=0.1, regularizers=[("ridge", {"alpha": 0.1})]), epochs=10)
    lasso = train_locally(Optimizer(lr=0.1, regularizers=[("lasso", {"alpha": 0.05})]), epochs=10)
    assert np.linalg.norm(ridge.get_parameters()["weight"]) < 0.8 * np.linalg.norm(free)
    assert np.abs(lasso.get_parameters()["weight"]).sum() < 0.8 * np.abs(free).sum()


def test_schedulers_set_the_learning_rate_through_training():
    decay = Optimizer(lr=("exponential-decay", {"base": 0.1, "rate": 0.9}))
    train_locally(decay, epochs=1)  # 12 steps
    assert decay.lr == pytest.approx(0.1 * 0.9**12)
    warm = train_locally(Optimizer(lr=("warmup", {"base": 0.1, "warmup": 1000})), epochs=1)
    const = train_locally(Optimizer(lr=0.1), epochs=1)
    moved_warm = np.linalg.norm(warm.get_parameters()["weight"])
    assert moved_warm < 0.1 * np.linalg.norm(const.get_parameters()["weight"])


class ChainPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.01, modules=["scaffold-client", "adam"])
        self.add_dependency("from fedplug import Optimizer")


def test_a_chain_of_aux_var_and_adaptive_modules_trains_federated():
    nodes = [Node(f"chain-{i}", separable(i)) for i in range(3)]
    for node in nodes:
        node.datasets[0].tags.append("chain")
    exp = Experiment(
        nodes=nodes,
        tags=["chain"],
        training_plan=ChainPlan,
        model_args={"n_features": 6},
        training_args={"batch_size": 10, "epochs": 1, "test_ratio": 0.25},
        agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
        round_limit=4,
        seed=0,
    )
    history = exp.run()
    assert history[-1]["validation_global"]["accuracy"] > 0.9
    optimizer = nodes[0]._sessions[exp.id].plan.optimizer
    assert optimizer.module_names == ["scaffold-client", "adam"]
    adam_state = optimizer.get_state()["modules"][1][1]
    assert adam_state["steps"] == 4 * 9  # Adam's step count kept across the 4 rounds


def test_training_args_lr_overrides_a_fedplug_optimizer_and_keeps_module_settings():
    optimizer = Optimizer(lr=0.1, modules=[("momentum", {"beta": 0.5})])
    plan = LogisticRegressionPlan({"n_features": 6})
    plan.optimizer = optimizer
    plan.train(separable(0), TrainingArgs.from_dict({"batch_size": 10, "lr": 0.02, "seed": 0}))
    assert optimizer.lr == 0.02
    assert optimizer.declearn.modules[0].beta == 0.5


def test_optimizer_specs_accept_a_single_name_and_fedprox_without_settings_is_implicit():
    assert Optimizer.from_dict({"modules": "adam"}).module_names == ["adam"]
    assert Optimizer(lr=0.1, regularizers=[("fedprox", {})]).implicit_regularizers == ["fedprox"]
    scheduled = Optimizer(lr=("exponential-decay", {"base": 0.1, "rate": 0.9}))
    assert "exponential-decay" in repr(scheduled)


def test_round_level_schedules_apply_each_rounds_value_from_its_first_step():
    optimizer = Optimizer(lr=("exponential-decay", {"base": 1.0, "rate": 0.5, "step_level": False}))
    params = {"w": np.zeros(1)}
    rates = []
    for _ in range(3):  # one researcher step per round
        optimizer.start_round()
        rates.append(optimizer.lr)
        params = optimizer.step_global(params, {"w": params["w"] - 1.0})
    assert rates == [1.0, 0.5, 0.25]
    np.testing.assert_allclose(params["w"], [-1.75])  # each round moves by its lr
    warm = Optimizer(lr=("warmup-rounds", {"base": 1.0, "warmup": 4}))
    warm.start_round()
    assert warm.lr > 0  # the first round moves the model


def test_step_level_schedules_are_unchanged_by_round_starts():
    optimizer = Optimizer(lr=("exponential-decay", {"base": 1.0, "rate": 0.5}))
    params = {"w": np.zeros(1)}
    rates = []
    for _ in range(2):
        optimizer.start_round()
        for _ in range(2):
            rates.append(optimizer.lr)
            params = optimizer.step_global(params, {"w": params["w"]})
    assert rates == [1.0, 0.5, 0.25, 0.125]
