"""SklearnAdapter computes the exact gradient of the estimator's objective.

Two independent checks: central finite differences of ``loss + penalty`` (the objective as
scikit-learn defines it), and one step of scikit-learn's own ``partial_fit`` at a constant
learning rate, which must equal one gradient-descent step with the adapter's gradient.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedplug
from fedplug_sklearn import PerceptronPlan, SGDClassifierPlan, SGDRegressorPlan, SklearnAdapter

ALPHA = 0.05
L1_RATIO = 0.3
EPSILON = 0.3

CLASSIFIER_LOSSES = [
    "log_loss",
    "hinge",
    "squared_hinge",
    "modified_huber",
    "squared_error",
    "huber",
    "epsilon_insensitive",
    "squared_epsilon_insensitive",
]
REGRESSOR_LOSSES = ["squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"]
PENALTIES = [None, "l2", "l1", "elasticnet"]

# Where each loss is not differentiable (or changes formula), as a function of the margin
# z = t * f (classification losses) or of the absolute residual |f - t| (regression losses).
MARGIN_KINKS = {
    "log_loss": (),
    "hinge": (1.0,),
    "perceptron": (0.0,),
    "squared_hinge": (1.0,),
    "modified_huber": (-1.0, 1.0),
}
RESIDUAL_KINKS = {
    "squared_error": (),
    "huber": (EPSILON,),
    "epsilon_insensitive": (EPSILON,),
    "squared_epsilon_insensitive": (EPSILON,),
}

CASES = (
    [("binary", loss, penalty) for loss in CLASSIFIER_LOSSES for penalty in PENALTIES]
    + [("multiclass", loss, penalty) for loss in CLASSIFIER_LOSSES for penalty in PENALTIES]
    + [("regression", loss, penalty) for loss in REGRESSOR_LOSSES for penalty in PENALTIES]
    + [("perceptron", "perceptron", penalty) for penalty in PENALTIES]
)


def _plan(kind, loss, penalty, n_features):
    hyper = {"n_features": n_features, "penalty": penalty, "alpha": ALPHA, "l1_ratio": L1_RATIO}
    if kind == "perceptron":
        return PerceptronPlan(hyper)
    hyper.update(loss=loss, epsilon=EPSILON)
    if kind == "regression":
        return SGDRegressorPlan(hyper)
    return SGDClassifierPlan({**hyper, "classes": [0, 1, 2] if kind == "multiclass" else [3, 7]})


def _penalty(coef, penalty):
    """scikit-learn's regularization term R(w), times alpha."""
    l2 = 0.5 * np.sum(coef**2)
    l1 = np.sum(np.abs(coef))
    return (
        ALPHA
        * {
            None: 0.0,
            "l2": l2,
            "l1": l1,
            "elasticnet": L1_RATIO * l1 + (1.0 - L1_RATIO) * l2,
        }[penalty]
    )


def _away_from_kinks(adapter, loss, x, y, margin=0.02):
    """Keep the samples whose every decision value is at least ``margin`` from a kink."""
    f = np.asarray(adapter.decision(x), dtype=np.float64)
    t = adapter.targets(y)
    f = f.reshape(t.shape)
    if loss in MARGIN_KINKS:
        distance = [np.abs(t * f - k) for k in MARGIN_KINKS[loss]]
    else:
        distance = [np.abs(np.abs(f - t) - k) for k in RESIDUAL_KINKS[loss]]
    if not distance:
        return x, y
    keep = np.min(distance, axis=0)
    keep = keep.min(axis=1) if keep.ndim == 2 else keep
    return x[keep > margin], y[keep > margin]


def _random_problem(kind, loss, penalty, seed):
    rng = np.random.default_rng(seed)
    n_features = 4
    plan = _plan(kind, loss, penalty, n_features)
    model = plan.model
    coef = rng.normal(size=model.coef_.shape)
    if penalty in ("l1", "elasticnet"):  # |w| is not differentiable at 0
        coef = np.sign(coef) * (np.abs(coef) + 0.1)
    model.coef_ = coef
    model.intercept_ = rng.normal(size=model.intercept_.shape)
    x = rng.normal(size=(40, n_features))
    y = rng.normal(scale=2.0, size=40) if kind == "regression" else rng.choice(plan.classes, 40)
    adapter = SklearnAdapter(model)
    x, y = _away_from_kinks(adapter, loss, x, y)
    return adapter, x, y


def _objective(adapter, x, y, penalty):
    return adapter.loss(x, y) + _penalty(adapter.model.coef_, penalty)


def _finite_difference(adapter, x, y, penalty, h=1e-6):
    grads = {}
    for name in ("coef", "intercept"):
        array = getattr(adapter.model, f"{name}_")
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved + h
            up = _objective(adapter, x, y, penalty)
            array[index] = saved - h
            down = _objective(adapter, x, y, penalty)
            array[index] = saved
            grad[index] = (up - down) / (2 * h)
        grads[name] = grad
    return grads


@pytest.mark.parametrize(("kind", "loss", "penalty"), CASES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_gradient_matches_finite_differences(kind, loss, penalty, seed):
    adapter, x, y = _random_problem(kind, loss, penalty, seed)
    assert len(x) >= 10

    mean_loss = adapter.backward(x, y)
    expected = _finite_difference(adapter, x, y, penalty)

    assert mean_loss == pytest.approx(adapter.loss(x, y), rel=1e-12)
    assert adapter.grads["coef"].shape == adapter.model.coef_.shape
    assert adapter.grads["intercept"].shape == adapter.model.intercept_.shape
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(adapter.grads[name], expected[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("kind", "loss", "penalty"),
    [case for case in CASES if case[2] in (None, "l2")],
)
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_gradient_step_equals_one_partial_fit_step(kind, loss, penalty, seed):
    adapter, x, y = _random_problem(kind, loss, penalty, seed)
    model = adapter.model
    xb, yb = x[:1], y[:1]
    eta = 0.05
    adapter.backward(xb, yb)
    expected_coef = model.coef_ - eta * adapter.grads["coef"]
    expected_intercept = model.intercept_ - eta * adapter.grads["intercept"]

    settings_ = (
        {"eta0": eta} if kind == "perceptron" else {"learning_rate": "constant", "eta0": eta}
    )
    model.set_params(**settings_)
    if kind == "regression":
        model.partial_fit(xb, yb)
    else:
        model.partial_fit(xb, yb, classes=model.classes_)

    np.testing.assert_allclose(model.coef_, expected_coef, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, expected_intercept, rtol=1e-10, atol=1e-12)


def test_binary_targets_map_the_second_class_to_plus_one():
    adapter = SklearnAdapter(SGDClassifierPlan({"n_features": 2, "classes": [3, 7]}).model)

    np.testing.assert_array_equal(adapter.targets(np.array([3, 7, 7])), [[-1.0], [1.0], [1.0]])


def test_multiclass_targets_are_one_vs_rest():
    adapter = SklearnAdapter(SGDClassifierPlan({"n_features": 2, "classes": [0, 1, 2]}).model)

    np.testing.assert_array_equal(
        adapter.targets(np.array([2, 0])), [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]
    )


def test_log_loss_at_a_zero_model_is_log_two():
    adapter = SklearnAdapter(SGDClassifierPlan({"n_features": 3, "classes": [0, 1, 2]}).model)
    x = np.ones((5, 3))

    # one-vs-rest: three binary log losses of log(2) each
    assert adapter.loss(x, np.array([0, 1, 2, 0, 1])) == pytest.approx(3 * np.log(2.0))


def test_adapter_gradients_before_backward_is_a_config_error():
    adapter = SklearnAdapter(SGDRegressorPlan({"n_features": 2}).model)

    with pytest.raises(fedplug.ConfigError, match="backward"):
        adapter.gradients()


def test_adapter_applies_updates_in_place():
    plan = SGDRegressorPlan({"n_features": 3})
    adapter = SklearnAdapter(plan.model)
    coef = plan.model.coef_
    adapter.backward(np.eye(3), np.array([1.0, 2.0, 3.0]))

    adapter.apply_updates(adapter.gradients() * -1.0)

    assert plan.model.coef_ is coef
    np.testing.assert_allclose(plan.model.coef_, [1.0 / 3, 2.0 / 3, 1.0])
    np.testing.assert_allclose(plan.model.intercept_, [2.0])
    weights = adapter.get_weights()
    np.testing.assert_array_equal(weights.coefs["coef"], plan.model.coef_)
