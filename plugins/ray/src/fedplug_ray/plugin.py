"""fedplug-ray's plugin module (entry point ``ray``): the ``ray`` transport, registered by import
path so that listing transports imports neither this package's transport nor Ray."""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_transports(register: Register) -> None:
    register("ray", "fedplug_ray.transport:ray_transport")
