"""A TorchTrainingPlan's metrics: declared by the plan (``metrics``), or the dataset's own
(``Dataset.metrics``), computed once on a whole split's predictions; otherwise ``testing_step``
averaged over batches."""

import numpy as np
import pytest
import torch
from torch import nn

from fedplug import Dataset
from fedplug.errors import ConfigError, PlanError
from fedplug.plan import TrainingArgs
from fedplug_torch import TorchTrainingPlan


def pairs_in_order(y_true, y_pred):
    """A metric that is not an average over samples: the share of consecutive pairs whose
    predictions are ordered as their targets (a batch's value differs from the split's)."""
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float(np.mean(np.sign(np.diff(t)) == np.sign(np.diff(p))))


class Regression(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.loss = nn.MSELoss()


class Declared(Regression):
    metrics = {"ordered": pairs_in_order}  # in the class body: a plain function, not a method


def data(n=40, metrics=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]
    return Dataset(x, y, ["t"], "d", metrics=metrics or {})


def expected(plan, dataset):
    with torch.no_grad():
        pred = plan.model(torch.as_tensor(dataset.x)).numpy()
    return pairs_in_order(dataset.y, pred), float(np.mean((pred - dataset.y) ** 2))


@pytest.mark.parametrize("batch_size", [1, 64, 2048])
def test_a_declared_metric_is_computed_once_on_the_whole_split(batch_size):
    # arrays are evaluated in chunks of at least 1024 rows: 2500 rows make several
    plan, dataset = Declared(), data(2500)
    metrics = plan.evaluate(dataset, TrainingArgs.from_dict({"batch_size": batch_size}))
    ordered, mse = expected(plan, dataset)
    assert set(metrics) == {"ordered", "loss"}
    assert metrics["ordered"] == pytest.approx(ordered, abs=1e-12)
    assert metrics["loss"] == pytest.approx(mse, rel=1e-5)
    assert plan.model.training  # left as it was


def test_a_metric_set_in_init_works_as_well():
    plan = Regression()
    plan.metrics = {"ordered": pairs_in_order}
    dataset = data()
    assert plan.evaluate(dataset, TrainingArgs())["ordered"] == pytest.approx(
        expected(plan, dataset)[0]
    )


def test_without_its_own_a_plan_uses_the_dataset_metrics_and_its_own_win():
    def everything(y_true, y_pred):
        return 1.0

    args = TrainingArgs()
    dataset = data(metrics={"ordered": pairs_in_order})
    plain = Regression()
    assert set(plain.evaluate(dataset, args)) == {"ordered", "loss"}
    assert plain.evaluate(dataset, args)["ordered"] == pytest.approx(expected(plain, dataset)[0])
    # the dataset's metric travels with its splits
    assert set(plain.evaluate(dataset.subset(np.arange(10), ":s"), args)) == {"ordered", "loss"}
    # the plan's own metrics replace the dataset's
    plan = Regression()
    plan.metrics = {"always": everything}
    result = plan.evaluate(dataset, args)
    assert set(result) == {"always", "loss"} and result["always"] == 1.0
    # neither: testing_step's loss, averaged over batches (what the seed's plan got)
    assert set(Regression().evaluate(data(), args)) == {"loss"}


def test_a_failing_metric_is_a_plan_error_naming_it_and_the_dataset():
    def broken(y_true, y_pred):
        raise ValueError("only one class present")

    plan = Regression()
    plan.metrics = {"auc": broken}
    with pytest.raises(PlanError, match=r"metric 'auc' \(.*broken\) failed on 'd' \(40 samples\)"):
        plan.evaluate(data(), TrainingArgs())
    assert plan.model.training


def test_dataset_metrics_must_be_named_functions():
    with pytest.raises(ConfigError, match="metrics must map names to functions"):
        data(metrics={"auc": 0.5})


def test_adding_to_a_plans_metrics_changes_no_other_plan():
    plan = Regression()
    plan.metrics["ordered"] = pairs_in_order
    assert TorchTrainingPlan.metrics == {} and Regression().metrics == {}
    assert Declared().metrics == {"ordered": pairs_in_order}
    Declared().metrics.clear()
    assert Declared.metrics == {"ordered": pairs_in_order}
