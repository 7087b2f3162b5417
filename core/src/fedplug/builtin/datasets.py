"""Core's node-side dataset types: ``numpy`` (arrays or an ``.npz`` file) and ``csv``."""

from __future__ import annotations

from fedplug.hookspecs import Register, hookimpl


@hookimpl
def fedplug_register_dataset_types(register: Register) -> None:
    register("numpy", "fedplug.datasets:load_numpy")
    register("csv", "fedplug.datasets:load_csv")
