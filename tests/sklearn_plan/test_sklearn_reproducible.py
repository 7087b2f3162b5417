"""A seeded experiment with an estimator's own partial_fit gives the same model every run."""

import numpy as np

from fedplug import Dataset, Experiment, Node


def run(tag: str) -> dict:
    rng = np.random.default_rng(4)
    nodes = []
    for i in range(3):
        x = rng.normal(size=(80, 5))
        nodes.append(Node(f"{tag}-{i}", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=[tag])))
    exp = Experiment(
        nodes=nodes,
        tags=[tag],
        training_plan="sklearn-sgd",
        model_args={"n_features": 5, "learning_rate": "constant", "eta0": 0.05},
        training_args={"batch_size": 8, "epochs": 2},
        round_limit=3,
        seed=1,
    )
    exp.run()
    return exp.global_params


def test_partial_fit_plans_are_reproducible_for_a_seed():
    first, second = run("repro-a"), run("repro-b")
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value)
