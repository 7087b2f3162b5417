"""The local transport: nodes live on this machine and train in parallel.

Two ways to run them:

- threads (default): nodes live in this process. Start-up costs nothing (no interpreter, no second
  import of torch), requests and replies are handed over without copies between address spaces,
  and PyTorch and NumPy release the GIL in their kernels.
- processes (``processes=True``): nodes are spread over worker processes (spawned, each with its
  share of the CPU cores), which sidesteps the GIL for Python-heavy plans at the price of a
  start-up per worker. Requests and replies cross as message bytes.

``bench/workloads.py`` measures both against sequential execution.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import struct
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections

from fedplug.errors import ConfigError, NodeError
from fedplug.node import Node


class LocalTransport:
    """Delivers requests to :class:`Node` objects on this machine.

    Nodes train in parallel, but replies are yielded in the order of the ``nodes`` argument, so
    that aggregation sums in the same order every run: the same seed gives the same model, bit
    for bit, whatever the number of workers.

    :param nodes: the federation; names must be unique.
    :param workers: nodes served at once (default: the number of CPU cores, at most one per node).
    :param processes: serve nodes from worker processes instead of threads of this process.
    """

    def __init__(
        self, nodes: Iterable[Node], workers: int | None = None, processes: bool = False
    ) -> None:
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
        self.processes = processes
        self._pool: ThreadPoolExecutor | None = None
        self._procs: list[_WorkerProcess] = []

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
        if self.processes:
            yield from self._dispatch_processes(payload, nodes)
        elif self.workers == 1 or len(nodes) == 1:
            for name in nodes:
                yield name, _serve(self.nodes[name], payload)
        else:
            yield from self._dispatch_threads(payload, nodes)

    def _dispatch_threads(
        self, payload: bytes, nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedplug-node")
        futures = [(name, self._pool.submit(_serve, self.nodes[name], payload)) for name in nodes]
        try:
            for name, future in futures:
                yield name, future.result()
        finally:
            for _, future in futures:
                future.cancel()

    def _dispatch_processes(
        self, payload: bytes, nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        if not self._procs:
            self._start_processes()
        owner = {name: proc for proc in self._procs for name in proc.nodes}
        waiting: dict[Connection, list[str]] = {}
        arrived: dict[str, bytes | BaseException] = {}
        for name in nodes:
            proc = owner[name]
            try:
                proc.conn.send_bytes(_frame(name, payload))
                waiting.setdefault(proc.conn, []).append(name)
            except (OSError, ValueError) as exc:
                arrived[name] = NodeError(name, f"worker process died: {exc!r}")
        for name in nodes:
            while name not in arrived:
                for conn in wait_connections(list(waiting)):
                    try:
                        done, reply = _unframe(conn.recv_bytes())
                    except (EOFError, OSError) as exc:
                        for lost in waiting.pop(conn):
                            arrived[lost] = NodeError(lost, f"worker process died: {exc!r}")
                        continue
                    waiting[conn].remove(done)
                    if not waiting[conn]:
                        del waiting[conn]
                    arrived[done] = reply
            yield name, arrived.pop(name)

    def _start_processes(self) -> None:
        ctx = mp.get_context("spawn")
        names = list(self.nodes)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        for index in range(self.workers):
            share = [self.nodes[name] for name in names[index :: self.workers]]
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_worker_main,
                args=(child, share, threads),
                daemon=True,
                name=f"fedplug-node-worker-{index}",
            )
            process.start()
            child.close()
            self._procs.append(_WorkerProcess(process, parent, [n.name for n in share]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for proc in self._procs:
            with contextlib.suppress(OSError, ValueError):  # already gone
                proc.conn.send_bytes(b"")
            proc.process.join(timeout=5)
            if proc.process.is_alive():
                proc.process.kill()
            proc.conn.close()
        self._procs = []


class _WorkerProcess:
    def __init__(self, process: mp.process.BaseProcess, conn: Connection, nodes: list[str]):
        self.process, self.conn, self.nodes = process, conn, nodes


def _frame(name: str, payload: bytes) -> bytes:
    encoded = name.encode()
    return struct.pack("<I", len(encoded)) + encoded + payload


def _unframe(data: bytes) -> tuple[str, bytes]:
    (size,) = struct.unpack_from("<I", data)
    return data[4 : 4 + size].decode(), data[4 + size :]


def _worker_main(conn: Connection, nodes: list[Node], threads: int) -> None:
    """A worker process: serve requests for its nodes until an empty frame or a closed pipe."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    by_name = {node.name: node for node in nodes}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        name, payload = _unframe(data)
        conn.send_bytes(_frame(name, by_name[name].handle(payload)))


def _serve(node: Node, payload: bytes) -> bytes | BaseException:
    try:
        return node.handle(payload)
    except BaseException as exc:  # the node vanished (it never raises on bad input)
        return exc
