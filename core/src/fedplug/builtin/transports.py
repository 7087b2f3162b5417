"""Core's transport: ``local``, nodes in this process or in worker processes on this machine."""

from __future__ import annotations

from fedplug.hookspecs import Register, hookimpl


@hookimpl
def fedplug_register_transports(register: Register) -> None:
    register("local", "fedplug.transport.local:local_transport")
