"""Core's aggregators: sample-weighted FedAverage and the coordinate-wise median."""

from __future__ import annotations

from fedplug.hookspecs import Register, hookimpl


@hookimpl
def fedplug_register_aggregators(register: Register) -> None:
    register("fedavg", "fedplug.aggregators:FedAverage")
    register("median", "fedplug.aggregators:Median")
