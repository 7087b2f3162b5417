"""ACME's auxiliary-variable optimizer pair: nodes count their steps and scale their gradients
by the factor the researcher sends; the researcher sums the nodes' counts and lowers the factor
as they grow. Each side's module needs its partner on the other side."""

from __future__ import annotations

import dataclasses

from declearn.optimizer.modules import AuxVar, OptiModule


@dataclasses.dataclass
class DriftAuxVar(AuxVar):
    steps: float = 0.0
    scale: float = 1.0

    def __add__(self, other):
        return DriftAuxVar(steps=self.steps + other.steps, scale=self.scale)


class _Drift(OptiModule, register=False):
    aux_name = "acme-drift"
    auxvar_cls = DriftAuxVar

    def __init__(self, decay: float = 0.01):
        self.decay = decay
        self.steps = 0.0
        self.scale = 1.0

    def get_config(self):
        return {"decay": self.decay}

    def get_state(self):
        return {"steps": self.steps, "scale": self.scale}

    def set_state(self, state):
        self.steps, self.scale = float(state["steps"]), float(state["scale"])


class DriftClient(_Drift):
    name = "acme-drift-client"

    def run(self, gradients):
        self.steps += 1.0
        return gradients * self.scale

    def collect_aux_var(self):
        return DriftAuxVar(steps=self.steps)

    def process_aux_var(self, aux_var):
        self.scale = float(aux_var.scale)


class DriftServer(_Drift):
    name = "acme-drift-server"

    def run(self, gradients):
        return gradients

    def collect_aux_var(self):
        return DriftAuxVar(scale=self.scale)

    def process_aux_var(self, aux_var):
        self.steps = float(aux_var.steps)  # the nodes' counts, summed
        self.scale = 1.0 / (1.0 + self.decay * self.steps)
