"""The local transport: nodes live in this process and train in parallel on a thread pool.

Threads, not processes: node start-up then costs nothing (no interpreter, no second import of
torch), requests and replies are handed over without copies between address spaces, and PyTorch
and NumPy release the GIL in their kernels. ``bench/workloads.py`` measures workers=1 against the
default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from fedplug.errors import ConfigError
from fedplug.node import Node


class LocalTransport:
    """Delivers requests to in-process :class:`Node` objects.

    :param nodes: the federation; names must be unique.
    :param workers: nodes served at once (default: the number of CPU cores, at most one per node).
    """

    def __init__(self, nodes: Iterable[Node], workers: int | None = None) -> None:
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise ConfigError(f"LocalTransport takes fedplug Node objects, got {node!r}")
            if node.name in self.nodes:
                raise ConfigError(f"two nodes are named {node.name!r}; node names must be unique")
            self.nodes[node.name] = node
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ConfigError(f"workers must be a positive int, got {workers!r}")
        self.workers = min(workers or os.cpu_count() or 1, max(len(self.nodes), 1))
        self._pool: ThreadPoolExecutor | None = None

    def node_tags(self) -> dict[str, list[list[str]]]:
        return {name: node.tags() for name, node in self.nodes.items()}

    def dispatch(
        self, payload: bytes, nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        unknown = [name for name in nodes if name not in self.nodes]
        if unknown:
            raise ConfigError(
                f"unknown node(s) {unknown}; this federation has {sorted(self.nodes)}"
            )
        if self.workers == 1 or len(nodes) == 1:
            for name in nodes:
                yield name, _serve(self.nodes[name], payload)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedplug-node")
        pending: dict[Future, str] = {
            self._pool.submit(_serve, self.nodes[name], payload): name for name in nodes
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _serve(node: Node, payload: bytes) -> bytes | BaseException:
    try:
        return node.handle(payload)
    except BaseException as exc:  # the node vanished (it never raises on bad input)
        return exc
