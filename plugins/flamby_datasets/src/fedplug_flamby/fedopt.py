"""FedAdam, FedYogi and Scaffold as FLamby's own strategies compute them, as declearn plug-ins.

FLamby's ``FedAdam``/``FedYogi`` (``flamby.strategies.fed_opt``) update the global model with
``lr * m / (sqrt(v) + tau)`` from the sample-weighted average update ``Δ``: ``m`` and ``v`` are the
first and second moments of ``Δ`` **without bias correction** (and Yogi's ``v`` follows
``v - (1 - β2) Δ² sign(v - Δ²)``), with ``tau = 1e-3`` by default. declearn's ``adam``/``yogi``
modules correct the bias, so FLamby's first server step is ``(1-β1) / sqrt(1-β2)`` times theirs
at the same rate: 3.2x with FLamby's betas, the gap closing over the rounds. ``Optimizer(lr=server_lr,
modules=[("flamby-adam", {"eps": tau})])`` reproduces FLamby's server step exactly; on the nodes,
FLamby's FedOpt trains with plain SGD. :class:`FlambyScaffoldRegularizer` is FLamby's Scaffold
(a sample-weighted global control variate, computed on the clients).

Importing this module imports declearn (seconds): the plugin registers it by import path.
"""

from __future__ import annotations

from typing import Any, ClassVar

from declearn.model.api import Vector
from declearn.optimizer.modules import EWMAModule, OptiModule, YogiMomentumModule
from declearn.optimizer.regularizers import Regularizer


class FlambyAdamModule(OptiModule):
    """FLamby's FedAdam server step: ``m / (sqrt(v) + eps)`` with ``m``, ``v`` the exponential
    moving averages of the pseudo-gradient and of its square, not bias-corrected."""

    name: ClassVar[str] = "flamby-adam"

    def __init__(self, beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-3) -> None:
        for key, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
                raise ValueError(f"{key} must be a number in [0, 1), got {beta!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        self.ewma_1 = EWMAModule(beta=float(beta_1))
        self.ewma_2 = self._second_moment(float(beta_2))

    def _second_moment(self, beta: float) -> OptiModule:
        return EWMAModule(beta=beta)

    def get_config(self) -> dict[str, Any]:
        return {"beta_1": self.ewma_1.beta, "beta_2": self.ewma_2.beta, "eps": self.eps}

    def run(self, gradients: Vector) -> Vector:
        first = self.ewma_1.run(gradients)
        second = self.ewma_2.run(gradients**2)
        return first / ((second**0.5) + self.eps)

    def get_state(self) -> dict[str, Any]:
        return {"momentum": self.ewma_1.get_state(), "velocity": self.ewma_2.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("momentum", "velocity"):
            if key not in state:
                raise KeyError(f"missing state variable {key!r} of {self.name}")
        self.ewma_1.set_state(state["momentum"])
        self.ewma_2.set_state(state["velocity"])


class FlambyYogiModule(FlambyAdamModule):
    """FLamby's FedYogi server step: FedAdam's with Yogi's additive second moment
    ``v - (1 - β2) g² sign(v - g²)``, not bias-corrected."""

    name: ClassVar[str] = "flamby-yogi"

    def _second_moment(self, beta: float) -> OptiModule:
        return YogiMomentumModule(beta=beta)


class FlambyScaffoldRegularizer(Regularizer):
    """FLamby's Scaffold (``flamby.strategies.Scaffold``) on a client, as a declearn regularizer
    of a plain-SGD client optimizer (FLamby's Scaffold requires SGD): every gradient minus the
    client's correction, which grows at the start of each round by ``(x - y) / (server_lr * lr *
    K)``, ``x`` the round's global model, ``y`` the client's state after its previous round
    (``server_lr * trained + (1 - server_lr) * x_previous``) and ``K`` its steps then.

    This is SCAFFOLD whose global control variate is the clients' *sample-weighted* mean (with
    FLamby's FedAvg weights); declearn's ``scaffold-client``/``scaffold-server`` pair uses their
    unweighted mean and exchanges it as auxiliary variables. FLamby's form exchanges nothing (the
    correction follows from the global models the client receives), and supposes, as FLamby's
    loop does, that every client trains in every round. ``lr`` must be the client optimizer's
    learning rate (the trained state is rebuilt from the round's last step), ``server_lr``
    FLamby's ``server_learning_rate``: the researcher applies the average update at that rate.
    """

    name: ClassVar[str] = "flamby-scaffold"

    def __init__(self, lr: float, server_lr: float = 1.0) -> None:
        for key, value in (("lr", lr), ("server_lr", server_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        super().__init__(alpha=1.0)
        self.lr = float(lr)
        self.server_lr = float(server_lr)
        self.correction: Vector | float = 0.0
        self.previous: Vector | None = None  # the client's state after its last round
        self.previous_steps = 0
        self._start: Vector | None = None  # this round's global model
        self._last: tuple[Vector, Vector] | None = None  # (weights, corrected gradients)
        self._steps = 0

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "server_lr": self.server_lr}

    def on_round_start(self) -> None:
        if self._start is not None and self._last is not None:
            weights, gradients = self._last
            trained = weights + (-self.lr * gradients)  # the round's last SGD step
            self.previous = self.server_lr * trained + (1 - self.server_lr) * self._start
            self.previous_steps = self._steps
        self._start, self._last, self._steps = None, None, 0

    def run(self, gradients: Vector, weights: Vector) -> Vector:
        if self._start is None:  # the round's first step: ``weights`` is the global model
            self._start = weights
            if self.previous is not None:
                scale = self.server_lr * self.lr * self.previous_steps
                self.correction = self.correction + (weights - self.previous) / scale
        corrected = gradients - self.correction
        self._last = (weights, corrected)
        self._steps += 1
        return corrected
