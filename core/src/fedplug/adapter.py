"""The model-adapter contract: the view of a framework's model that a declearn optimizer steps.

Plugins return one from ``fedplug_model_adapter`` for the model types they know (a torch
``nn.Module``, a scikit-learn estimator); :class:`NumpyAdapter` serves dicts of NumPy arrays (core's
NumPy plan and the researcher's global model). declearn is imported only when an adapter is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fedplug.errors import ConfigError

if TYPE_CHECKING:
    from fedplug.plan import Params


class ModelAdapter(Protocol):
    """What ``fedplug_model_adapter`` returns: the view of a model that declearn steps."""

    def get_weights(self, trainable: bool = True) -> Any:
        """A copy of the model's trainable weights as a declearn ``Vector``."""

    def apply_updates(self, updates: Any) -> None:
        """Add a declearn ``Vector`` of updates to the weights, in place."""

    def gradients(self) -> Any:
        """The gradients of the last backward pass, as a declearn ``Vector``.

        An adapter may also offer ``sgd_step(lr)``: subtract ``lr * gradient`` from each weight
        in place, computed as declearn computes it (``lr * g``, then added negated), which
        :meth:`fedplug.Optimizer.step` uses for plain SGD."""


class NumpyAdapter:
    """Adapter over a dict of numpy arrays (core's numpy plans and the researcher's global model)."""

    def __init__(self, params: Params, grads: Params | None = None) -> None:
        self.params = params
        self.grads = grads

    def get_weights(self, trainable: bool = True) -> Any:
        from declearn.model.sklearn import NumpyVector

        # copies: regularizers such as FedProx keep the weights of the round's start as anchors
        return NumpyVector({name: value.copy() for name, value in self.params.items()})

    def apply_updates(self, updates: Any) -> None:
        for name, update in updates.coefs.items():
            self.params[name] += update

    def gradients(self) -> Any:
        from declearn.model.sklearn import NumpyVector

        if self.grads is None:
            raise ConfigError("this numpy model has no gradients yet; run a backward pass first")
        return NumpyVector(self.grads)
