"""A dependency-free training plan: multinomial logistic regression in NumPy.

Useful on its own (``pip install fedplug`` runs experiments with it) and as core's test vehicle.
It steps with plain SGD at ``lr``, or with a ``fedplug.Optimizer`` set as ``self.optimizer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.optimizer import Optimizer
from fedplug.plan import Params, TrainingArgs, TrainingPlan, TrainResult, batch_indices


class NumpyModel:
    """Weights ``weight`` (features x classes) and ``bias``, with the gradients of the last batch."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        self.params: Params = {
            "weight": np.zeros((n_features, n_classes), dtype=np.float64),
            "bias": np.zeros(n_classes, dtype=np.float64),
        }
        self.grads: Params = {name: np.zeros_like(value) for name, value in self.params.items()}

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.params["weight"] + self.params["bias"]

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of the batch; fills ``self.grads``."""
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        n = len(y)
        loss = -float(np.mean(np.log(p[np.arange(n), y] + 1e-12)))
        p[np.arange(n), y] -= 1.0
        p /= n
        self.grads["weight"] = x.T @ p
        self.grads["bias"] = p.sum(axis=0)
        return loss


class LogisticRegressionPlan(TrainingPlan):
    """Softmax regression. ``model_args``: ``n_features`` (required), ``n_classes`` (default 2)."""

    framework = "numpy"

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        super().__init__(model_args)
        n_features = self.model_args.get("n_features")
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features <= 0:
            raise ConfigError(
                f"model_args['n_features'] must be a positive int, got {n_features!r}"
            )
        n_classes = self.model_args.get("n_classes", 2)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ConfigError(f"model_args['n_classes'] must be an int >= 2, got {n_classes!r}")
        self.model = NumpyModel(n_features, n_classes)
        self.n_classes = n_classes
        #: Learning rate of the built-in SGD when no fedplug.Optimizer is set.
        self.lr = float(self.model_args.get("lr", 0.1))

    def get_parameters(self) -> Params:
        return {name: value.copy() for name, value in self.model.params.items()}

    def parameter_views(self) -> Params:
        return dict(self.model.params)

    def parameter_buffers(self) -> Params:
        return dict(self.model.params)  # trained and loaded in place

    def set_parameters(self, params: Params) -> None:
        for name, value in params.items():
            self.model.params[name][...] = value

    def _xy(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        x, y = dataset.arrays(type(self).__name__)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= self.n_classes:
            raise ConfigError(
                f"LogisticRegressionPlan needs integer labels in [0, {self.n_classes}), "
                f"got values from {y.min()} to {y.max()} ({y.dtype})"
            )
        return x, y

    def train(self, dataset: Dataset, args: TrainingArgs) -> TrainResult:
        x, y = self._xy(dataset)
        rng = np.random.default_rng(args.seed)
        optimizer = self.optimizer
        if isinstance(optimizer, Optimizer):
            if args.lr is not None:
                optimizer.set_lr(args.lr)
            optimizer.start_round()
        lr = args.lr or self.lr
        losses = []
        for index in batch_indices(len(x), args, rng):
            losses.append(self.model.loss_and_grad(x[index], y[index]))
            if isinstance(optimizer, Optimizer):
                optimizer.step(self.model)
            else:
                for name, grad in self.model.grads.items():
                    self.model.params[name] -= lr * grad
        return TrainResult(n_samples=len(x), n_steps=len(losses), loss=float(np.mean(losses)))

    def evaluate(self, dataset: Dataset, args: TrainingArgs) -> dict[str, float]:
        x, y = self._xy(dataset)
        z = self.model.logits(x)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return {
            "accuracy": float(np.mean(z.argmax(axis=1) == y)),
            "loss": float(-np.mean(logp[np.arange(len(y)), y])),
        }
