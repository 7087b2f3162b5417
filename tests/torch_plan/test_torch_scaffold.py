"""Scaffold with a torch plan: declearn's client module steps an nn.Module through the adapter."""

import numpy as np

from fedplug import Dataset, Experiment, Node, Optimizer


def test_scaffold_runs_with_a_torch_plan_and_keeps_client_state():
    rng = np.random.default_rng(0)
    nodes = []
    for i in range(3):
        x = rng.normal(size=(120, 6)).astype(np.float32) + i
        nodes.append(Node(f"t{i}", Dataset(x, (x[:, 0] > i).astype(np.int64), tags=["scaf-t"])))
    exp = Experiment(
        nodes=nodes,
        tags=["scaf-t"],
        training_plan="torch-mlp",
        model_args={
            "layers": [6, 2],
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
    assert type(client.state).__name__ == "TorchVector"  # built from the model's gradients
    assert len(exp.agg_optimizer.declearn.modules[0].clients) == 3


def test_scaffold_with_a_native_torch_optimizer_is_refused_before_any_round():
    import pytest

    from fedplug import ConfigError

    x = np.zeros((10, 6), dtype=np.float32)
    node = Node("native", Dataset(x, np.zeros(10, dtype=np.int64), tags=["native"]))
    with pytest.raises(ConfigError, match=r"torch\.optim\.sgd\.SGD, which declearn modules"):
        Experiment(
            nodes=[node],
            training_plan="torch-mlp",
            model_args={"layers": [6, 2], "optimizer": {"type": "sgd", "lr": 0.1}},
            agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
        )
    assert not node._sessions
