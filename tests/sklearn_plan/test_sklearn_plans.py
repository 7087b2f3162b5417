"""The registered scikit-learn plans: federated training, fedplug optimizers, model_args, lr."""

import math

import numpy as np
import pytest
from sklearn.linear_model import Perceptron, SGDClassifier, SGDRegressor

import fedplug
from fedplug.plan import TrainingArgs
from fedplug_sklearn import PerceptronPlan, SGDClassifierPlan, SGDRegressorPlan, SklearnAdapter

FEDPLUG_ADAM = {"type": "fedplug", "lr": 0.05, "modules": ["adam"]}


def _experiment(nodes, tags, plan, model_args, training_args=None, **kwargs):
    kwargs.setdefault("seed", 0)
    return fedplug.Experiment(
        nodes=nodes,
        tags=tags,
        training_plan=plan,
        model_args={"n_features": 6, **model_args},
        training_args=training_args or {"epochs": 1, "batch_size": 10, "test_ratio": 0.2},
        round_limit=4,
        progress=False,
        **kwargs,
    )


def _args(**values):
    return TrainingArgs.from_dict(values)


class _AdapterSpy:
    """Sees every fedplug_model_adapter call before the real plugins answer."""

    def __init__(self):
        self.models = []

    @fedplug.hookimpl(tryfirst=True)
    def fedplug_model_adapter(self, model):
        self.models.append(model)


# -- registration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plan_cls", "estimator_cls"),
    [
        ("sklearn-sgd", SGDClassifierPlan, SGDClassifier),
        ("sklearn-sgd-regressor", SGDRegressorPlan, SGDRegressor),
        ("sklearn-perceptron", PerceptronPlan, Perceptron),
    ],
)
def test_plans_are_registered_by_the_sklearn_plugin(name, plan_cls, estimator_cls):
    pm = fedplug.get_plugin_manager()

    assert pm.training_plans[name] is plan_cls
    assert pm.training_plans.owner(name) == "sklearn"
    assert type(plan_cls({"n_features": 3}).model) is estimator_cls


# -- federated training with partial_fit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "kind", "model_args"),
    [
        ("sklearn-sgd", "binary", {}),
        (
            "sklearn-sgd",
            "multiclass",
            {"classes": [0, 1, 2], "learning_rate": "constant", "eta0": 0.01},
        ),
        ("sklearn-sgd", "binary", {"loss": "hinge", "alpha": 0.001}),
        ("sklearn-perceptron", "binary", {}),
    ],
)
def test_classifiers_learn_in_an_experiment(make_nodes, tags, plan, kind, model_args):
    nodes = make_nodes(kind)
    exp = _experiment(nodes, tags, plan, model_args)

    _, before = exp.evaluate()
    history = exp.run()

    final = history[-1]["validation_global"]
    assert exp.plan_ref.name == plan
    assert final["n_samples"] == 3 * 30
    assert history[-1]["samples"] == {f"node-{i}": 120 for i in range(3)}
    assert final["accuracy"] >= 0.85
    assert final["accuracy"] > before["accuracy"] + 0.2
    for node in nodes:
        assert node._sessions[exp.id].plan.optimizer is None  # partial_fit, no fedplug.Optimizer


def test_regressor_learns_in_an_experiment(make_nodes, tags):
    exp = _experiment(make_nodes("regression"), tags, "sklearn-sgd-regressor", {"eta0": 0.05})

    _, before = exp.evaluate()
    history = exp.run()

    mse = [row["validation_global"]["mse"] for row in history]
    assert mse[-1] < 0.01 * before["mse"]
    assert mse[-1] < 0.02  # the targets' noise has variance 0.0025
    assert mse[-1] < mse[0]
    assert history[-1]["train_loss_mean"] < history[0]["train_loss_mean"]


# -- fedplug.Optimizer through the fedplug_model_adapter hook ------------------------------------


def test_model_adapter_hook_adapts_supported_estimators_only():
    pm = fedplug.get_plugin_manager()

    for plan_cls in (SGDClassifierPlan, SGDRegressorPlan, PerceptronPlan):
        estimator = plan_cls({"n_features": 3}).model
        adapter = pm.model_adapter(estimator)
        assert isinstance(adapter, SklearnAdapter)
        assert adapter.model is estimator
    with pytest.raises(fedplug.PluginError, match="LinearRegression"):
        from sklearn.linear_model import LinearRegression

        pm.model_adapter(LinearRegression())


@pytest.mark.parametrize(
    ("plan", "kind", "model_args", "metric", "bound"),
    [
        ("sklearn-sgd", "binary", {}, "accuracy", 0.9),
        ("sklearn-sgd", "multiclass", {"classes": [0, 1, 2]}, "accuracy", 0.85),
        ("sklearn-sgd-regressor", "regression", {}, "mse", 0.1),
    ],
)
def test_fedplug_adam_optimizer_steps_the_estimator_through_the_adapter_hook(
    make_nodes, tags, plan, kind, model_args, metric, bound
):
    pm = fedplug.get_plugin_manager()
    spy = _AdapterSpy()
    pm.register(spy, name="adapter-spy")
    nodes = make_nodes(kind, plugin_manager=pm)
    exp = _experiment(
        nodes, tags, plan, {**model_args, "optimizer": FEDPLUG_ADAM}, plugin_manager=pm
    )

    history = exp.run()

    final = history[-1]["validation_global"][metric]
    assert final >= bound if metric == "accuracy" else final <= bound
    estimators = []
    for node in nodes:
        session_plan = node._sessions[exp.id].plan
        assert isinstance(session_plan.optimizer, fedplug.Optimizer)
        assert session_plan.optimizer.module_names == ["adam"]
        assert isinstance(pm.model_adapter(session_plan.model), SklearnAdapter)
        estimators.append(session_plan.model)
    assert all(any(model is seen for seen in spy.models) for model in estimators)


def test_fedplug_adam_state_persists_across_rounds_on_each_node(make_nodes, tags):
    nodes = make_nodes("binary", n_nodes=2)
    exp = _experiment(
        nodes,
        tags,
        "sklearn-sgd",
        {"optimizer": FEDPLUG_ADAM},
        training_args={"num_updates": 5, "batch_size": 8},
    )

    steps = []
    for _ in range(3):
        exp.run(1)
        per_node = []
        for node in nodes:
            (name, state), *_ = node._sessions[exp.id].plan.optimizer.get_state()["modules"]
            assert name == "adam"
            per_node.append(state["steps"])
        steps.append(per_node)

    assert steps == [[5, 5], [10, 10], [15, 15]]


def test_fedplug_optimizer_lr_is_overridden_by_training_args(task):
    plan = SGDClassifierPlan({"n_features": 6, "optimizer": {"type": "fedplug", "lr": 0.05}})
    x, y = task("binary", 20, 0)
    adapter = SklearnAdapter(plan.model)
    adapter.backward(x, y)
    expected = {name: -0.5 * grad for name, grad in adapter.grads.items()}

    plan.train(fedplug.Dataset(x, y), _args(num_updates=1, batch_size=20, lr=0.5))

    assert plan.optimizer.lr == 0.5
    np.testing.assert_allclose(plan.model.coef_, expected["coef"])
    np.testing.assert_allclose(plan.model.intercept_, expected["intercept"])


def test_fedplug_optimizer_leaves_the_intercept_alone_without_fit_intercept(task):
    plan = SGDClassifierPlan(
        {"n_features": 6, "fit_intercept": False, "optimizer": {"type": "fedplug", "lr": 0.1}}
    )
    x, y = task("binary", 40, 1)
    y = np.ones_like(y)  # an intercept would help: gradient descent must still not move it

    plan.train(fedplug.Dataset(x, y), _args(epochs=2, batch_size=10))

    assert not np.allclose(plan.model.coef_, 0.0)
    np.testing.assert_array_equal(plan.model.intercept_, [0.0])


# -- learning rate given in training_args --------------------------------------------------------


@pytest.mark.parametrize("lr", [0.1, 0.02])
def test_lr_argument_gives_partial_fit_a_constant_learning_rate(lr):
    plan = SGDClassifierPlan({"n_features": 3, "alpha": 0.0})
    x = np.array([[1.0, 2.0, -1.0]])

    plan.train(fedplug.Dataset(x, np.array([1])), _args(num_updates=1, batch_size=1, lr=lr))

    assert plan.model.learning_rate == "constant"
    assert plan.model.eta0 == lr
    # log loss at a zero model has derivative -1/2 for a positive sample: one step of lr / 2
    np.testing.assert_allclose(plan.model.coef_, [0.5 * lr * x[0]])
    np.testing.assert_allclose(plan.model.intercept_, [0.5 * lr])


def test_lr_argument_keeps_the_rate_constant_over_steps():
    x, y = np.array([[1.0, -2.0, 0.5]]), np.array([3.0])
    plan = SGDRegressorPlan({"n_features": 3, "alpha": 0.0})
    lr = 0.05
    # squared error, one sample: each constant-rate step shrinks the residual by the same factor
    residual, residuals = -y[0], []
    for _ in range(5):
        residuals.append(residual)
        residual *= 1.0 - lr * (x[0] @ x[0] + 1.0)

    plan.train(fedplug.Dataset(x, y), _args(num_updates=5, batch_size=1, lr=lr))

    assert plan.model.learning_rate == "constant"
    np.testing.assert_allclose(plan.model.coef_, -lr * sum(residuals) * x[0])
    np.testing.assert_allclose(plan.model.intercept_, [-lr * sum(residuals)])


def test_lr_argument_sets_the_perceptron_rate():
    x = np.array([[1.0, 2.0, -1.0]])
    plan = PerceptronPlan({"n_features": 3})

    plan.train(fedplug.Dataset(x, np.array([1])), _args(num_updates=1, batch_size=1, lr=0.5))

    assert plan.model.eta0 == 0.5
    # a zero model misclassifies every sample: the perceptron adds lr * x
    np.testing.assert_allclose(plan.model.coef_, [0.5 * x[0]])
    np.testing.assert_allclose(plan.model.intercept_, [0.5])


def test_without_lr_argument_the_estimator_schedule_is_kept(task):
    x, y = task("binary", 30, 2)
    plan = SGDClassifierPlan({"n_features": 6, "learning_rate": "adaptive", "eta0": 0.3})

    plan.train(fedplug.Dataset(x, y), _args(epochs=1))

    assert plan.model.learning_rate == "adaptive"
    assert plan.model.eta0 == 0.3


# -- steps, parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "steps"),
    [
        ({"epochs": 1, "batch_size": 16}, math.ceil(50 / 16)),
        ({"epochs": 3, "batch_size": 16}, 3 * math.ceil(50 / 16)),
        ({"num_updates": 7, "batch_size": 16}, 7),
        ({"batch_size": 50}, 1),
    ],
)
def test_steps_follow_epochs_or_num_updates(task, values, steps):
    plan = SGDClassifierPlan({"n_features": 6})

    result = plan.train(fedplug.Dataset(*task("binary", 50, 0)), _args(**values))

    assert result.n_steps == steps
    assert result.n_samples == 50
    assert math.isfinite(result.loss)


def test_parameters_are_copies_and_round_trip(task):
    plan = SGDClassifierPlan({"n_features": 6, "classes": [0, 1, 2]})
    plan.train(fedplug.Dataset(*task("multiclass", 60, 0)), _args(epochs=1))
    params = plan.get_parameters()

    assert {name: value.shape for name, value in params.items()} == {
        "coef": (3, 6),
        "intercept": (3,),
    }
    saved = {name: value.copy() for name, value in params.items()}
    params["coef"][:] = 0.0
    np.testing.assert_array_equal(plan.model.coef_, saved["coef"])

    other = SGDClassifierPlan({"n_features": 6, "classes": [0, 1, 2]})
    other.set_parameters(saved)
    x = task("multiclass", 20, 9)[0]
    np.testing.assert_array_equal(other.model.predict(x), plan.model.predict(x))


def test_parameter_shapes_for_binary_and_regression():
    assert {
        k: v.shape for k, v in SGDClassifierPlan({"n_features": 4}).get_parameters().items()
    } == {
        "coef": (1, 4),
        "intercept": (1,),
    }
    assert {
        k: v.shape for k, v in SGDRegressorPlan({"n_features": 4}).get_parameters().items()
    } == {
        "coef": (4,),
        "intercept": (1,),
    }


# -- model_args validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan_cls", "model_args", "match"),
    [
        (SGDClassifierPlan, {"n_features": 6, "alpah": 0.1}, "'alpah'"),
        (SGDRegressorPlan, {"n_features": 6, "classes": [0, 1]}, "'classes'"),
        (PerceptronPlan, {"n_features": 6, "loss": "hinge"}, "'loss'"),
        (SGDClassifierPlan, {}, "n_features"),
        (SGDClassifierPlan, {"n_features": 0}, "n_features"),
        (SGDClassifierPlan, {"n_features": True}, "n_features"),
        (SGDClassifierPlan, {"n_features": "6"}, "n_features"),
        (SGDClassifierPlan, {"n_features": 6, "classes": [1]}, "classes"),
        (SGDClassifierPlan, {"n_features": 6, "classes": [1, 1]}, "classes"),
        (SGDClassifierPlan, {"n_features": 6, "classes": "01"}, "classes"),
        (SGDClassifierPlan, {"n_features": 6, "loss": "bogus_loss"}, "'bogus_loss'"),
        (SGDRegressorPlan, {"n_features": 6, "loss": "hinge_typo"}, "'hinge_typo'"),
        (SGDClassifierPlan, {"n_features": 6, "optimizer": {"type": "adam"}}, "optimizer"),
        (SGDClassifierPlan, {"n_features": 6, "optimizer": "adam"}, "optimizer"),
        (
            SGDClassifierPlan,
            {"n_features": 6, "optimizer": {"type": "fedplug", "lr": 0.1, "moduls": ["adam"]}},
            "'moduls'",
        ),
        (
            SGDClassifierPlan,
            {"n_features": 6, "optimizer": {"type": "fedplug", "modules": ["no-such-module"]}},
            "'no-such-module'",
        ),
    ],
)
def test_bad_model_args_are_config_errors(plan_cls, model_args, match):
    with pytest.raises(fedplug.ConfigError, match=match):
        plan_cls(model_args)


@pytest.mark.parametrize(
    ("hyper", "name"),
    [
        ({"learning_rate": "bogus_schedule"}, "learning_rate"),
        ({"alpha": -1.0}, "alpha"),
        ({"penalty": "l3"}, "penalty"),
    ],
)
def test_bad_hyper_parameter_values_are_config_errors_before_training(hyper, name):
    with pytest.raises(fedplug.ConfigError, match=name):
        SGDClassifierPlan({"n_features": 6, **hyper})


@pytest.mark.parametrize("plan_cls", [SGDClassifierPlan, SGDRegressorPlan])
def test_averaging_is_refused_up_front_or_trains(task, plan_cls):
    kind = "binary" if plan_cls is SGDClassifierPlan else "regression"
    try:
        plan = plan_cls({"n_features": 6, "average": True})
    except fedplug.ConfigError as exc:
        assert "average" in str(exc)
        return

    result = plan.train(fedplug.Dataset(*task(kind, 30, 0)), _args(epochs=1))

    assert math.isfinite(result.loss)


def test_unsupported_loss_error_lists_the_supported_ones():
    with pytest.raises(fedplug.ConfigError) as info:
        SGDClassifierPlan({"n_features": 6, "loss": "bogus_loss"})

    for loss in ("log_loss", "hinge", "modified_huber", "squared_error"):
        assert loss in str(info.value)


def test_labels_outside_classes_are_refused(task):
    x, y = task("multiclass", 40, 0)
    plan = SGDClassifierPlan({"n_features": 6, "classes": [0, 1]})
    before = plan.get_parameters()

    with pytest.raises(fedplug.ConfigError, match=r"\[2\]"):
        plan.train(fedplug.Dataset(x, y), _args(epochs=1))

    with pytest.raises(fedplug.ConfigError, match=r"\[2\]"):
        plan.evaluate(fedplug.Dataset(x, y), _args())
    for name, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, before[name])


def test_labels_outside_classes_fail_the_experiment_with_a_node_error(make_nodes, tags):
    exp = _experiment(make_nodes("multiclass", n_nodes=2), tags, "sklearn-sgd", {"classes": [0, 1]})

    with pytest.raises(fedplug.NodeError, match="not among model_args"):
        exp.run(1)


def test_wrong_feature_count_is_refused(task):
    plan = SGDRegressorPlan({"n_features": 4})

    with pytest.raises(fedplug.ConfigError, match=r"\(n, 4\)"):
        plan.train(fedplug.Dataset(*task("regression", 10, 0)), _args(epochs=1))
