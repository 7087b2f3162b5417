"""fedplug's network deployment: the gRPC transport, node processes, certificates and registries.

``Experiment(transport="grpc", transport_options={"server": "0.0.0.0:50051", "tls": "certs"})``
serves node processes started with ``fedplug node start`` (``docs/deployment.md``).

Modules: :mod:`fedplug_grpc.transport` (the researcher's server and the node's client),
:mod:`fedplug_grpc.certs` (``fedplug certs``), :mod:`fedplug_grpc.nodeconfig` (``node.toml``),
:mod:`fedplug_grpc.nodestore` (a node's SQLite registry), :mod:`fedplug_grpc.node_cli`
(``fedplug node``), :mod:`fedplug_grpc.deploy` (a whole deployment on this machine).
"""

from typing import Any

__all__ = ["GrpcTransport", "NodeClient", "grpc_transport", "tune_malloc"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the entry point does) must not import grpc.
    if name in __all__:
        from fedplug_grpc import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'fedplug_grpc' has no attribute {name!r}")
