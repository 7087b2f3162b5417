"""What the gRPC tests share: real ``fedplug node start`` processes on loopback, over TLS.

The test modules and conftest.py load this module by path (pytest runs with
``--import-mode=importlib``), as tests/e2e loads its guide_support module.

A :class:`Cluster` is a researcher's :class:`GrpcTransport` built here and node processes, each
started as ``fedplug node start --config node.toml`` with its SQLite registry and credential.
The session's cluster (conftest.py) has the nodes of :data:`NODES`, with replies limited to
:data:`REPLY_LIMIT`:

- ``alpha``, ``beta``: approval off, a dataset tagged :data:`TAGS`;
- ``slow``: the same, with a dataset also tagged ``slow`` (where :class:`SlowPlan` waits);
- ``limited``: approval off, ``[limits] max_message_mb = 1``, a dataset tagged ``limited``;
- ``strict``: approval on (the default), a dataset tagged ``approval``;

and credentials for the in-process fake nodes and raw clients of :data:`CLIENTS`. Tests that
stop or kill a node leave the repair to :meth:`Cluster.ensure`, which the ``cluster`` fixture
runs before each test: dead nodes are started again, stopped ones continued.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug_grpc.deploy import Deployment, NodeSpec, make_certs, prepare_nodes

TAGS = ["grpc-test"]
REPLY_LIMIT = 256 << 10  # the session cluster's max_reply_bytes
N_FEATURES = 4
NODES = {  # name -> (samples, dataset tags, [node] settings, [limits])
    "alpha": (60, TAGS, {"approval": False}, {}),
    "beta": (80, TAGS, {"approval": False}, {}),
    "slow": (70, [*TAGS, "slow"], {"approval": False}, {}),
    "limited": (50, ["limited"], {"approval": False}, {"max_message_mb": 1}),
    "strict": (50, ["approval"], {}, {}),
}
CLIENTS = (
    "fake-garbage",
    "fake-big",
    "fake-shape",
    "raw-client",
    "fuzz-client",
    "fake-a",
    "fake-b",
    "fake-nan",
    "hangup",
    "staller",
)
STARTUP_S = 120.0  # node processes import torch & co.; the machine may be busy


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def in_thread(function: Callable[[], Any]) -> Future:
    """Run ``function`` on a daemon thread (a hung call never blocks the interpreter's exit)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="test-round").start()
    return future


def run_round(experiment: Any, timeout: float = 120.0) -> dict[str, Any]:
    """``experiment.run_once()``, which must return within ``timeout`` seconds."""
    return in_thread(experiment.run_once).result(timeout=timeout)


def round_error(experiment: Any, timeout: float = 120.0) -> BaseException:
    """The exception ``experiment.run_once()`` raises within ``timeout`` seconds."""
    future = in_thread(experiment.run_once)
    error = future.exception(timeout=timeout)
    assert error is not None, f"the round succeeded: {future.result()}"
    return error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = (x @ np.array([1.5, -2.0, 0.5, 1.0]) > 0).astype(np.int64)
    return x, y


def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``T``: stopped), or "" when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def stop_processes(deployment: Deployment) -> None:
    """Stop every node process of ``deployment``, also stopped (SIGSTOP) ones."""
    for proc in deployment.procs.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
    deployment.stop()


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a fedplug subprocess: installed plugins enabled, no display."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FEDPLUG_DISABLE_PLUGINS", "FEDPLUG_STRICT_PLUGINS")
    }
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env


def fedplug_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``python -m fedplug ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "fedplug", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=python_env(),
        stdin=subprocess.DEVNULL,
    )


class SlowPlan(LogisticRegressionPlan):
    """Trains like its base, except on a dataset tagged "slow": there it first creates the file
    ``started`` in the folder ``model_args["control"]``, then waits (at most 120 s) until a file
    ``release`` appears there."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency(["import time", "from pathlib import Path"])

    def train(self, dataset, args):
        if "slow" in dataset.tags:
            control = Path(self.model_args["control"])
            (control / "started").touch()
            deadline = time.monotonic() + 120
            while not (control / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().train(dataset, args)


class Cluster:
    """A researcher transport and node processes (see the module docstring).

    :param nodes: name -> (samples, dataset tags, ``[node]`` settings, ``[limits]``).
    :param clients: more names to issue credentials for (fake nodes, raw clients).
    :param transport_options: for :class:`GrpcTransport`.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: dict[str, tuple] = NODES,
        clients: tuple[str, ...] = CLIENTS,
        **transport_options: Any,
    ) -> None:
        from fedplug_grpc.transport import GrpcTransport

        self.workdir = workdir
        self.nodes = nodes
        self.certs = make_certs(workdir, [*nodes, *clients])
        self.ca = (self.certs / "ca.pem").read_bytes()
        self.transport = GrpcTransport("127.0.0.1:0", tls=self.certs, **transport_options)
        self.address = f"localhost:{self.transport.port}"
        try:
            self.deployment = prepare_nodes(
                workdir / "nodes", self._specs(), self.address, self.certs
            )
        except BaseException:
            self.transport.close()
            raise
        self.deployment.transport = self.transport

    def _specs(self) -> list[NodeSpec]:
        specs = []
        for seed, (name, (size, tags, node, limits)) in enumerate(self.nodes.items()):
            path = self.workdir / "data" / f"{name}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            x, y = separable(size, seed)
            np.savez(path, x=x, y=y)
            specs.append(
                NodeSpec(
                    name,
                    [(f"data-{name}", "numpy", tags, {"path": str(path)})],
                    node=node,
                    researcher={"reconnect_s": 0.2, "max_reconnect_s": 1.0},
                    limits=limits,
                )
            )
        return specs

    def token(self, name: str) -> str:
        return (self.certs / "nodes" / f"{name}.token").read_text().strip()

    def pid(self, name: str) -> int:
        return self.deployment.procs[name].pid

    def log(self, name: str) -> str:
        return (self.deployment.home(name) / "node.log").read_text(errors="replace")

    def ensure(self) -> None:
        """Every node process running, not stopped, and connected."""
        if self.transport._closing:  # waiting for nodes would only time out
            raise AssertionError(
                "the cluster's transport was closed by an earlier test (an Experiment whose "
                "set-up fails closes the transport it was given)"
            )
        for name in self.nodes:
            proc = self.deployment.procs.get(name)
            if proc is None or proc.poll() is not None:
                self.deployment.start(name)
            elif process_state(proc.pid) in ("T", "t"):
                os.kill(proc.pid, signal.SIGCONT)
        try:
            self.transport.wait_for_nodes([], names=list(self.nodes), timeout=STARTUP_S)
        except Exception as exc:
            logs = {name: self.deployment.log(name, 5) for name in self.nodes}
            raise AssertionError(
                f"the cluster's nodes did not connect: {exc}; logs: {logs}"
            ) from None

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            stop_processes(self.deployment)


class FakeNode:
    """What :class:`NodeClient` serves: a name, dataset tags and ``serve``, here a ``handle``
    function of the request's whole bytes."""

    def __init__(self, name: str, handle: Callable[[Any], bytes], tags: list[str]) -> None:
        self.name = name
        self._handle = handle
        self._tags = tags
        self.requests = 0

    def tags(self) -> list[list[str]]:
        return [list(self._tags)]

    def serve(self, chunks: Any, size: int) -> list[bytes]:
        self.requests += 1
        payload = b"".join(bytes(chunk) for chunk in chunks)
        return [self._handle(payload)]


@contextlib.contextmanager
def fake_node(
    cluster: Cluster,
    name: str,
    handle: Callable[[Any], bytes],
    tags: list[str] = TAGS,
    **client_options: Any,
) -> Iterator[FakeNode]:
    """An in-process node ``name`` (a credential of :data:`CLIENTS`) whose replies are
    ``handle(request bytes)``, connected to the cluster over TLS with a real NodeClient
    (``client_options``: more NodeClient settings)."""
    from fedplug_grpc.transport import NodeClient

    fake = FakeNode(name, handle, tags)
    client = NodeClient(
        fake,
        cluster.address,
        cluster.token(name),
        ca_cert=cluster.ca,
        reconnect_s=0.2,
        **client_options,
    )
    fake.client = client
    thread = threading.Thread(target=client.run, daemon=True, name=f"test-{name}")
    thread.start()
    try:
        cluster.transport.wait_for_nodes(tags, names=[name], timeout=60)
        yield fake
    finally:
        client.stop()
        thread.join(30)
        assert not thread.is_alive(), f"NodeClient {name!r} did not stop"
        wait_until(
            lambda: name not in cluster.transport.node_tags(), 30, f"{name} to be disconnected"
        )


def raw_stream(
    cluster: Cluster,
    name: str,
    frames: list[bytes],
    timeout: float = 30.0,
    keep_open: bool = True,
    max_frames: int | None = None,
) -> tuple[list[bytes], Any]:
    """Open the Connect stream with ``name``'s credential, send ``frames`` and keep the stream
    open until the researcher ends it (at most ``timeout`` s; with ``keep_open=False``, close
    this side once the frames are sent; with ``max_frames``, hang up once that many frames have
    arrived). Returns the frames received and the :class:`grpc.RpcError` that ended the call
    (None if the researcher ended it cleanly or this side hung up)."""
    import grpc

    from fedplug_grpc.transport import METHOD

    finished = threading.Event()

    def requests() -> Iterator[bytes]:
        yield from frames
        if keep_open:
            finished.wait(timeout)

    received: list[bytes] = []
    error = None
    credentials = grpc.ssl_channel_credentials(root_certificates=cluster.ca)
    with grpc.secure_channel(cluster.address, credentials) as channel:
        call = channel.stream_stream(METHOD)(
            requests(),
            metadata=(("authorization", f"Bearer {cluster.token(name)}"),),
            timeout=timeout,
        )
        try:
            for frame in call:
                received.append(frame)
                if max_frames is not None and len(received) >= max_frames:
                    call.cancel()
                    break
        except grpc.RpcError as exc:
            error = exc
        finally:
            finished.set()
    return received, error
