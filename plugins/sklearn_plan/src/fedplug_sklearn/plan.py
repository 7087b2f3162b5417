"""Linear scikit-learn estimators as fedplug training plans, and their declearn adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import Perceptron, SGDClassifier, SGDRegressor

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.optimizer import Optimizer
from fedplug.plan import Params, TrainingArgs, TrainingPlan, TrainResult, batch_indices

SUPPORTED_ESTIMATORS = (SGDClassifier, SGDRegressor, Perceptron)

# loss name -> function of (decision values f, targets t) returning (per-sample loss, dloss/df).
# Classifiers see t in {-1, +1} per class column (one-vs-rest); regressors see real targets.
LossFn = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


def _log_loss(f, t, eps):
    z = t * f
    return np.logaddexp(0.0, -z), -t / (1.0 + np.exp(np.clip(z, -500, 500)))


def _hinge(f, t, eps):
    z = t * f
    return np.maximum(0.0, 1.0 - z), np.where(z < 1.0, -t, 0.0)


def _perceptron(f, t, eps):
    z = t * f
    return np.maximum(0.0, -z), np.where(z <= 0.0, -t, 0.0)


def _squared_hinge(f, t, eps):
    margin = np.maximum(0.0, 1.0 - t * f)
    return margin**2, -2.0 * t * margin


def _modified_huber(f, t, eps):
    z = t * f
    quad = z >= -1.0
    margin = np.maximum(0.0, 1.0 - z)
    return np.where(quad, margin**2, -4.0 * z), np.where(quad, -2.0 * t * margin, -4.0 * t)


def _squared_error(f, t, eps):
    r = f - t
    return 0.5 * r**2, r


def _huber(f, t, eps):
    r = f - t
    small = np.abs(r) <= eps
    return np.where(small, 0.5 * r**2, eps * np.abs(r) - 0.5 * eps**2), np.where(
        small, r, eps * np.sign(r)
    )


def _epsilon_insensitive(f, t, eps):
    r = f - t
    return np.maximum(0.0, np.abs(r) - eps), np.where(np.abs(r) > eps, np.sign(r), 0.0)


def _squared_epsilon_insensitive(f, t, eps):
    r = f - t
    excess = np.maximum(0.0, np.abs(r) - eps)
    return excess**2, 2.0 * np.sign(r) * excess


LOSSES: dict[str, LossFn] = {
    "log_loss": _log_loss,
    "hinge": _hinge,
    "perceptron": _perceptron,
    "squared_hinge": _squared_hinge,
    "modified_huber": _modified_huber,
    "squared_error": _squared_error,
    "huber": _huber,
    "epsilon_insensitive": _epsilon_insensitive,
    "squared_epsilon_insensitive": _squared_epsilon_insensitive,
}


def _loss_name(estimator: Any) -> str:
    return "perceptron" if isinstance(estimator, Perceptron) else estimator.loss


class SklearnAdapter:
    """Exact gradients of a linear SGD estimator's objective (loss + penalty) for declearn.

    The objective is sklearn's: mean loss over the batch plus ``alpha`` times the penalty
    (``l2``: half the squared norm; ``l1``; ``elasticnet``), on ``coef_`` only.
    """

    def __init__(self, estimator: Any) -> None:
        self.model = estimator
        name = _loss_name(estimator)
        if name not in LOSSES:
            raise ConfigError(
                f"loss {name!r} is not supported by fedplug-sklearn; use one of {sorted(LOSSES)}"
            )
        if getattr(estimator, "class_weight", None) is not None:
            raise ConfigError(
                "class_weight is not supported with a fedplug.Optimizer; weight the samples in "
                "the data, or train with the estimator's own learning rate"
            )
        self.loss_fn = LOSSES[name]
        self.grads: Params | None = None

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Targets in the shape of the decision values (+-1 per class column for classifiers)."""
        if isinstance(self.model, SGDRegressor):
            return y.astype(np.float64)
        classes = self.model.classes_
        if len(classes) == 2:
            return np.where(y == classes[1], 1.0, -1.0)[:, None]
        return np.where(y[:, None] == classes[None, :], 1.0, -1.0)

    def decision(self, x: np.ndarray) -> np.ndarray:
        coef = self.model.coef_
        if coef.ndim == 1:
            return x @ coef + self.model.intercept_[0]
        return x @ coef.T + self.model.intercept_

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        per_sample, _ = self.loss_fn(self.decision(x), self.targets(y), self.model.epsilon)
        return (
            float(per_sample.sum(axis=-1).mean())
            if per_sample.ndim == 2
            else float(per_sample.mean())
        )

    def backward(self, x: np.ndarray, y: np.ndarray) -> float:
        """Compute the batch's gradients (kept for :meth:`gradients`); return its mean loss."""
        per_sample, dloss = self.loss_fn(self.decision(x), self.targets(y), self.model.epsilon)
        n = len(x)
        coef = self.model.coef_
        grad_coef = (dloss.T @ x) / n if coef.ndim == 2 else (dloss @ x) / n
        grad_intercept = dloss.mean(axis=0) if coef.ndim == 2 else np.array([dloss.mean()])
        if not self.model.fit_intercept:
            grad_intercept = np.zeros_like(grad_intercept)
        grad_coef = grad_coef + self._penalty_grad(coef)
        self.grads = {"coef": grad_coef, "intercept": grad_intercept}
        return (
            float(per_sample.sum(axis=-1).mean())
            if per_sample.ndim == 2
            else float(per_sample.mean())
        )

    def _penalty_grad(self, coef: np.ndarray) -> np.ndarray | float:
        penalty, alpha = self.model.penalty, self.model.alpha
        if penalty is None or penalty == "none":
            return 0.0
        if penalty == "l2":
            return alpha * coef
        if penalty == "l1":
            return alpha * np.sign(coef)
        ratio = self.model.l1_ratio
        return alpha * (ratio * np.sign(coef) + (1.0 - ratio) * coef)

    def get_weights(self, trainable: bool = True) -> Any:
        from declearn.model.sklearn import NumpyVector

        # copies: regularizers such as FedProx keep the weights of the round's start as anchors
        return NumpyVector(
            {"coef": self.model.coef_.copy(), "intercept": self.model.intercept_.copy()}
        )

    def apply_updates(self, updates: Any) -> None:
        self.model.coef_ += updates.coefs["coef"]
        self.model.intercept_ += updates.coefs["intercept"]

    def gradients(self) -> Any:
        from declearn.model.sklearn import NumpyVector

        if self.grads is None:
            raise ConfigError("no gradients yet: call backward(x, y) on a batch first")
        return NumpyVector(self.grads)


class SklearnTrainingPlan(TrainingPlan):
    """A plan over a linear scikit-learn SGD estimator.

    ``model_args``: ``n_features`` (required); for classifiers ``classes`` (default ``[0, 1]``);
    any hyper-parameter of the estimator (``loss``, ``alpha``, ``eta0``, ...); and ``optimizer``
    (``{"type": "fedplug", "lr": ..., "modules": [...]}``) to train with a ``fedplug.Optimizer``
    instead of ``partial_fit``. A subclass may also set ``self.optimizer`` in its ``__init__``.
    """

    framework = "sklearn"
    estimator_class: ClassVar[type] = SGDClassifier
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        super().__init__(model_args)
        args = dict(self.model_args)
        n_features = args.pop("n_features", None)
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features <= 0:
            raise ConfigError(
                f"model_args['n_features'] must be a positive int, got {n_features!r}"
            )
        optimizer = args.pop("optimizer", None)
        self.classes = None
        if self.is_classifier:
            classes = args.pop("classes", [0, 1])
            if (
                not isinstance(classes, list)
                or len(classes) < 2
                or len(set(classes)) != len(classes)
            ):
                raise ConfigError(
                    f"model_args['classes'] must list >= 2 distinct labels, got {classes!r}"
                )
            self.classes = np.array(classes)
        # fedplug draws the batches (seeded); the estimator must not reshuffle them with numpy's
        # global generator, or a seeded experiment would not be reproducible
        hyper = {"shuffle": False, **self.defaults, **args}
        valid = self.estimator_class().get_params()
        unknown = sorted(set(hyper) - set(valid))
        if unknown:
            raise ConfigError(
                f"model_args key {unknown[0]!r} is not a parameter of {self.estimator_class.__name__} "
                "nor one of n_features, classes, optimizer"
            )
        if hyper.get("average"):
            raise ConfigError(
                "model_args['average'] is not supported: averaged SGD weights are not the "
                "parameters that fedplug aggregates; leave it False"
            )
        self.model = self.estimator_class(**hyper)
        try:
            self.model._validate_params()  # sklearn's own checks of every hyper-parameter value
        except ValueError as exc:
            raise ConfigError(f"invalid {self.estimator_class.__name__} settings: {exc}") from exc
        if _loss_name(self.model) not in LOSSES:
            raise ConfigError(
                f"loss {_loss_name(self.model)!r} is not supported by fedplug-sklearn; "
                f"use one of {sorted(LOSSES)}"
            )
        rows = 1 if not self.is_classifier or len(self.classes) == 2 else len(self.classes)
        if self.is_classifier:
            self.model.classes_ = self.classes
            self.model.coef_ = np.zeros((rows, n_features))
        else:
            self.model.coef_ = np.zeros(n_features)
        self.model.intercept_ = np.zeros(rows)
        self.model.t_ = 1.0
        self.n_features = n_features
        if optimizer is not None:
            self.optimizer = _build_optimizer(optimizer)

    @property
    def is_classifier(self) -> bool:
        return self.estimator_class is not SGDRegressor

    def get_parameters(self) -> Params:
        return {"coef": self.model.coef_.copy(), "intercept": self.model.intercept_.copy()}

    def set_parameters(self, params: Params) -> None:
        self.model.coef_ = np.array(params["coef"], dtype=np.float64)
        self.model.intercept_ = np.array(params["intercept"], dtype=np.float64)

    def _xy(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        x, y = dataset.arrays(type(self).__name__)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ConfigError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        y = np.asarray(y)
        if self.is_classifier:
            unknown = np.setdiff1d(np.unique(y), self.classes)
            if unknown.size:
                raise ConfigError(
                    f"labels {unknown.tolist()} are not among model_args['classes'] {self.classes.tolist()}"
                )
        return x, y

    def train(self, dataset: Dataset, args: TrainingArgs) -> TrainResult:
        x, y = self._xy(self.training_data(dataset, args))
        rng = np.random.default_rng(args.seed)
        optimizer = self.optimizer
        adapter = SklearnAdapter(self.model)
        if isinstance(optimizer, Optimizer):
            if args.lr is not None:
                optimizer.set_lr(args.lr)
            optimizer.start_round()
            adapter = optimizer.adapter(self.model)
        elif args.lr is not None:
            constant = {} if isinstance(self.model, Perceptron) else {"learning_rate": "constant"}
            self.model.set_params(eta0=args.lr, **constant)
        fit_kwargs = {"classes": self.classes} if self.is_classifier else {}
        losses = []
        for index in batch_indices(len(x), args, rng):
            xb, yb = x[index], y[index]
            if isinstance(optimizer, Optimizer):
                losses.append(adapter.backward(xb, yb))
                optimizer.step(self.model)
            else:
                losses.append(adapter.loss(xb, yb))
                self.model.partial_fit(xb, yb, **fit_kwargs)
        return TrainResult(n_samples=len(x), n_steps=len(losses), loss=float(np.mean(losses)))

    def evaluate(self, dataset: Dataset, args: TrainingArgs) -> dict[str, float]:
        x, y = self._xy(dataset)
        metrics = {"loss": SklearnAdapter(self.model).loss(x, y)}
        prediction = self.model.predict(x)
        if self.is_classifier:
            metrics["accuracy"] = float(np.mean(prediction == y))
        else:
            metrics["mse"] = float(np.mean((prediction - y) ** 2))
        return metrics


def _build_optimizer(spec: Any) -> Optimizer:
    if not isinstance(spec, dict) or spec.get("type") != "fedplug":
        raise ConfigError(
            "model_args['optimizer'] must be {'type': 'fedplug', 'lr': ..., 'modules': [...]}, "
            f"got {spec!r}"
        )
    return Optimizer.from_dict({key: value for key, value in spec.items() if key != "type"})


class SGDClassifierPlan(SklearnTrainingPlan):
    """``sklearn.linear_model.SGDClassifier`` (default loss ``log_loss``)."""

    estimator_class = SGDClassifier
    defaults = {"loss": "log_loss"}


class SGDRegressorPlan(SklearnTrainingPlan):
    """``sklearn.linear_model.SGDRegressor``."""

    estimator_class = SGDRegressor


class PerceptronPlan(SklearnTrainingPlan):
    """``sklearn.linear_model.Perceptron``."""

    estimator_class = Perceptron
