"""Regularizers see the weights of the round's start, not a view that training moves."""

import numpy as np

from fedplug import Dataset, LogisticRegressionPlan, Optimizer, TrainingArgs


def trained_distance(regularizers) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5))
    y = (x[:, 0] > 0).astype(np.int64)
    plan = LogisticRegressionPlan({"n_features": 5})
    plan.optimizer = Optimizer(lr=0.5, regularizers=regularizers)
    start = plan.get_parameters()
    plan.train(Dataset(x, y), TrainingArgs.from_dict({"batch_size": 8, "epochs": 3, "seed": 1}))
    end = plan.get_parameters()
    return float(sum(np.linalg.norm(end[k] - start[k]) for k in start))


def test_fedprox_keeps_local_training_near_the_round_start():
    free = trained_distance([])
    proximal = trained_distance([("fedprox", {"alpha": 1.0})])
    # with a moving anchor the proximal term would vanish and both runs would travel as far
    assert proximal < 0.5 * free
