"""Scaffold with a scikit-learn plan: exact gradients feed declearn's client module."""

import numpy as np

from fedplug import Dataset, Experiment, Node, Optimizer


def test_scaffold_runs_with_an_sgd_classifier_plan():
    rng = np.random.default_rng(0)
    nodes = []
    for i in range(3):
        x = rng.normal(size=(120, 6)) + i
        nodes.append(Node(f"s{i}", Dataset(x, (x[:, 0] > i).astype(np.int64), tags=["scaf-s"])))
    exp = Experiment(
        nodes=nodes,
        tags=["scaf-s"],
        training_plan="sklearn-sgd",
        model_args={
            "n_features": 6,
            "optimizer": {"type": "fedplug", "lr": 0.1, "modules": ["scaffold-client"]},
        },
        training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.25},
        agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
        round_limit=4,
        seed=0,
    )
    history = exp.run()
    assert history[-1]["validation_global"]["accuracy"] > 0.8
    client = nodes[0]._sessions[exp.id].plan.optimizer.declearn.modules[0]
    assert set(client.state.coefs) == {"coef", "intercept"}
    assert len(exp.agg_optimizer.declearn.modules[0].clients) == 3


def test_optimizer_args_are_refused_for_sklearn_plans_before_any_round():
    import pytest

    from fedplug import ConfigError

    x = np.zeros((10, 6))
    node = Node("sk-args", Dataset(x, np.zeros(10, dtype=np.int64), tags=["sk-args"]))
    with pytest.raises(ConfigError, match=r"\(\['eta0'\]\) does not apply to scikit-learn plans"):
        Experiment(
            nodes=[node],
            training_plan="sklearn-sgd",
            model_args={"n_features": 6},
            training_args={"optimizer_args": {"eta0": 0.1}},
        )
    assert not node._sessions
