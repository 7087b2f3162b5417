"""The local transport: nodes live on this machine.

Three ways to run them, measured by ``bench/workloads.py`` on the reference workloads:

- in this process, one node after the other (the default, ``workers=1``): no start-up cost, no
  copies between address spaces, and on small machines the fastest: PyTorch already spreads each
  operation over the cores;
- in this process, on ``workers`` threads: pays off only when plans spend their time in kernels
  that release the GIL on more cores than one operation uses; small models lose to GIL hand-offs;
- in worker processes (``processes=True``): true parallelism for Python-heavy plans on many cores,
  at the price of a start-up per worker (an interpreter and the framework's import). Each worker
  gets its share of the cores; requests and replies cross as message bytes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

from fedplug.errors import ConfigError, NodeError
from fedplug.node import Node
from fedplug.plan import interrupting


def local_transport(
    *,
    nodes: Sequence[Node] | Node | None,
    tags: list[str],
    min_nodes: int,
    workers: int | None = None,
    processes: bool = False,
) -> LocalTransport:
    """The ``local`` transport's factory (``Experiment(nodes=[...], transport="local",
    transport_options={"workers": 2, "processes": True})``)."""
    if nodes is None:
        raise ConfigError(
            "the local transport serves in-process nodes: pass nodes=[Node(...), ...] (or a "
            "LocalTransport of them), or choose a transport whose nodes connect on their own, "
            "e.g. transport='grpc'"
        )
    if isinstance(nodes, Node):
        nodes = [nodes]
    if not isinstance(nodes, (list, tuple)):
        raise ConfigError(f"nodes must be a list of Node objects or a transport, got {nodes!r}")
    return LocalTransport(nodes, workers, processes)


class LocalTransport:
    """Delivers requests to :class:`Node` objects on this machine: an explicit local federation,
    which an experiment is given as ``nodes`` (several experiments may share one; its maker
    closes it).

    Nodes train in parallel, but replies are yielded in the order of the ``nodes`` argument, so
    that aggregation sums in the same order every run: the same seed gives the same model, bit
    for bit, whatever the number of workers.

    :param nodes: the federation; names must be unique.
    :param workers: nodes served at once: threads of this process (default 1: nodes take turns)
        or, with ``processes``, worker processes (default: the number of CPU cores).
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
        default = (os.cpu_count() or 1) if processes else 1
        self.workers = min(workers or default, max(len(self.nodes), 1))
        self.processes = processes
        if processes:  # plugins registered in this process only must reach the workers
            for node in self.nodes.values():
                node.pm.portable()
        self._pool: ThreadPoolExecutor | None = None
        self._procs: list[_WorkerProcess] = []

    def node_tags(self) -> dict[str, list[list[str]]]:
        return {name: node.tags() for name, node in self.nodes.items()}

    streams_replies = False

    def dispatch(
        self, payload: bytes | list[Any], nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        if not isinstance(payload, bytes):  # a message's parts (messages.encode_parts)
            payload = b"".join(payload)
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
        except GeneratorExit:  # stopped early (a failed round): the rest is not needed
            for _, future in futures:
                future.cancel()
            raise
        except BaseException:  # interrupted (Ctrl-C): training in flight stops at its next batch
            with interrupting():
                for _, future in futures:
                    future.cancel()
                wait_futures([future for _, future in futures], timeout=INTERRUPT_WAIT_S)
            raise

    def _dispatch_processes(
        self, payload: bytes, nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        if not self._procs:
            self._start_processes()
        owner = {name: proc for proc in self._procs for name in proc.nodes}
        # One request in flight per worker: a worker then always reads what the parent writes,
        # so two large messages can never block each other in the pipe.
        queues: dict[Connection, list[str]] = {}
        for name in nodes:
            queues.setdefault(owner[name].conn, []).append(name)
        arrived: dict[str, bytes | BaseException] = {}
        in_flight: dict[Connection, str] = {}

        def send_next(conn: Connection) -> None:
            while queues[conn]:
                name = queues[conn].pop(0)
                try:
                    conn.send_bytes(_frame(name, payload))
                except (OSError, ValueError) as exc:
                    arrived[name] = NodeError(name, f"worker process died: {exc!r}")
                    continue
                in_flight[conn] = name
                return

        for conn in queues:
            send_next(conn)
        try:
            for name in nodes:
                while name not in arrived:
                    for conn in wait_connections(list(in_flight)):
                        expected = in_flight.pop(conn)
                        try:
                            done, reply = _unframe(conn.recv_bytes())
                        except (EOFError, OSError) as exc:
                            for lost in [expected, *queues[conn]]:
                                arrived[lost] = NodeError(lost, f"worker process died: {exc!r}")
                            queues[conn].clear()
                            continue
                        arrived[done] = reply
                        send_next(conn)
                yield name, arrived.pop(name)
        except GeneratorExit:
            # Stopped early (a failed round): leave no reply in a pipe for the next round to
            # read. Queued requests were never sent; in-flight ones are awaited and dropped.
            for conn in list(in_flight):
                with contextlib.suppress(EOFError, OSError):
                    conn.recv_bytes()
            raise
        except BaseException:  # interrupted (Ctrl-C): no waiting for the workers' training
            if in_flight:
                self._stop_processes(at_once=True)
            raise

    def _start_processes(self) -> None:
        ctx = mp.get_context("spawn")
        names = list(self.nodes)
        threads = str(max(1, (os.cpu_count() or 1) // self.workers))
        # Each worker gets its share of the cores before anything is imported in it: numerical
        # libraries size their thread pools at import (the user's ``__main__`` may import torch).
        saved = {var: os.environ.get(var) for var in THREAD_VARS}
        for var in THREAD_VARS:
            os.environ.setdefault(var, threads)
        try:
            for index in range(self.workers):
                share = [self.nodes[name] for name in names[index :: self.workers]]
                parent, child = ctx.Pipe()
                process = ctx.Process(
                    target=_worker_main,
                    args=(child, share),
                    daemon=True,
                    name=f"fedplug-node-worker-{index}",
                )
                process.start()
                child.close()
                self._procs.append(_WorkerProcess(process, parent, [n.name for n in share]))
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and worker processes (the nodes themselves stay usable)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._stop_processes()

    def _stop_processes(self, at_once: bool = False) -> None:
        """Stop the worker processes: asked to finish (``at_once``: killed, their nodes'
        sessions lost; the next dispatch starts new workers)."""
        for proc in self._procs:
            if at_once:
                proc.process.kill()
            else:
                with contextlib.suppress(OSError, ValueError):  # already gone
                    proc.conn.send_bytes(b"")
            proc.process.join(timeout=5)
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(timeout=5)
            proc.conn.close()
        self._procs = []


#: seconds an interrupted run waits for its node threads to reach their next batch
INTERRUPT_WAIT_S = 10.0

#: what numerical libraries size their thread pools by, read when they are imported
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _WorkerProcess:
    def __init__(self, process: mp.process.BaseProcess, conn: Connection, nodes: list[str]):
        self.process, self.conn, self.nodes = process, conn, nodes


def _frame(name: str, payload: bytes) -> bytes:
    encoded = name.encode()
    return struct.pack("<I", len(encoded)) + encoded + payload


def _unframe(data: bytes) -> tuple[str, bytes]:
    (size,) = struct.unpack_from("<I", data)
    return data[4 : 4 + size].decode(), data[4 + size :]


def _worker_main(conn: Connection, nodes: list[Node]) -> None:
    """A worker process: serve requests for its nodes until an empty frame or a closed pipe.
    Ctrl-C in a terminal reaches every process of the group: the researcher decides, so a
    worker ignores it (an interrupted researcher kills its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    by_name = {node.name: node for node in nodes}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        name, payload = _unframe(data)
        conn.send_bytes(_frame(name, b"".join(by_name[name].serve(payload))))


def _serve(node: Node, payload: bytes) -> bytes | BaseException:
    try:
        return b"".join(node.serve(payload))
    except Exception as exc:  # the node broke (it never raises on bad input); Ctrl-C goes up
        return exc
