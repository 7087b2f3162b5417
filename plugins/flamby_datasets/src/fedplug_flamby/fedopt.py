"""FedAdam and FedYogi as FLamby's own strategies compute them, as declearn modules.

FLamby's ``FedAdam``/``FedYogi`` (``flamby.strategies.fed_opt``) update the global model with
``lr * m / (sqrt(v) + tau)`` from the sample-weighted average update ``Δ``: ``m`` and ``v`` are the
first and second moments of ``Δ`` **without bias correction** (and Yogi's ``v`` follows
``v - (1 - β2) Δ² sign(v - Δ²)``), with ``tau = 1e-3`` by default. declearn's ``adam``/``yogi``
modules correct the bias, so FLamby's first server step is ``(1-β1) / sqrt(1-β2)`` times theirs
at the same rate: 3.2x with FLamby's betas, the gap closing over the rounds. ``Optimizer(lr=server_lr,
modules=[("flamby-adam", {"eps": tau})])`` reproduces FLamby's server step exactly; on the nodes,
FLamby's FedOpt trains with plain SGD.

Importing this module imports declearn (seconds): the plugin registers it by import path.
"""

from __future__ import annotations

from typing import Any, ClassVar

from declearn.model.api import Vector
from declearn.optimizer.modules import EWMAModule, OptiModule, YogiMomentumModule


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
