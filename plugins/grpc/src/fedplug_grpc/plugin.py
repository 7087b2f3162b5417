"""fedplug-grpc's plugin module (entry point ``grpc``): the ``grpc`` transport and the
``fedplug node`` and ``fedplug certs`` commands.

Importing this module is cheap: grpc and cryptography are imported when they are used.
"""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_transports(register: Register) -> None:
    register("grpc", "fedplug_grpc.transport:grpc_transport")


@hookimpl
def fedplug_register_commands(register: Register) -> None:
    register("node", "fedplug_grpc.node_cli:node_command")
    register("certs", "fedplug_grpc.certs:certs_command")
