"""A whole gRPC deployment on this machine: what ``fedplug demo --transport grpc``, the gRPC
tests and ``bench/transport.py`` run.

Everything is set up the way an operator would do it across sites, only on loopback: a CA and
the researcher's TLS certificate (``fedplug certs init``), one credential per node
(``fedplug certs node``), and per node a folder with its ``node.toml``, its SQLite registry with
its datasets (``fedplug node dataset add``), and a ``fedplug node start`` process whose output
goes to ``node.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedplug.errors import ConfigError
from fedplug.transport.local import THREAD_VARS
from fedplug_grpc.transport import GrpcTransport


@dataclass
class NodeSpec:
    """One node of a local deployment.

    :param datasets: ``(name, type, tags, loader options)`` per dataset, as ``fedplug node
        dataset add`` records them.
    :param node: extra keys of the config's ``[node]`` section (e.g. ``approval = False``).
    :param researcher: extra keys of its ``[researcher]`` section (e.g. ``heartbeat_s``).
    :param limits: its ``[limits]`` section.
    """

    name: str
    datasets: list[tuple[str, str, list[str], dict[str, Any]]]
    node: dict[str, Any] = field(default_factory=dict)
    researcher: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    # JSON's strings, numbers, booleans and arrays of them are valid TOML values
    lines = []
    for section, values in sections.items():
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
            lines.append("")
    return "\n".join(lines)


class Deployment:
    """Node processes serving a researcher's :class:`GrpcTransport` on this machine."""

    def __init__(
        self, workdir: Path, transport: GrpcTransport | None, certs_dir: Path | None
    ) -> None:
        self.workdir, self.transport, self.certs_dir = workdir, transport, certs_dir
        self.configs: dict[str, Path] = {}
        self.specs: dict[str, NodeSpec] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def start_all(self) -> None:
        for name in self.configs:
            self.start(name)

    def home(self, name: str) -> Path:
        return self.workdir / name

    def start(self, name: str) -> subprocess.Popen:
        """Start (or restart) node ``name``'s ``fedplug node start`` process."""
        with (self.home(name) / "node.log").open("ab") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedplug",
                    "node",
                    "start",
                    "--config",
                    str(self.configs[name]),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the researcher, which stops the nodes
                env={**os.environ, **self._threads(), "FEDPLUG_PARENT_PID": str(os.getpid())},
            )
        self.procs[name] = proc
        return proc

    def _threads(self) -> dict[str, str]:
        # Nodes that share this machine share its cores: numerical libraries that each size
        # their thread pools to every core fight over them (rounds take 30x longer on 2 cores).
        share = str(max(1, (os.cpu_count() or 1) // max(len(self.configs), 1)))
        return {var: os.environ.get(var, share) for var in THREAD_VARS}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)

    def log(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.home(name) / "node.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop every node process: SIGTERM, then SIGKILL after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class StartupReport:
    """What a local deployment does while it starts (certificates, node processes, nodes
    joining), told on ``stream`` (default: stderr) so that the seconds before the first round
    are not silent: one line per step; on a terminal the "waiting for nodes" line is rewritten
    in place as nodes connect, elsewhere (a log) a line is added each time one does."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):  # no such method, or a closed stream
            self.tty = False
        self._open = False  # a line rewritten in place is on the screen, not yet ended

    def step(self, text: str) -> None:
        self.end()
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def waiting(self, connected: list[str], needed: int) -> None:
        """``GrpcTransport.wait_for_nodes``'s ``on_change``."""
        text = f"waiting for {_count(needed, 'node')}: {len(connected)} connected"
        if connected:
            text += f" ({', '.join(connected)})"
        if not self.tty:
            self.step(text)
            return
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()
        self._open = True

    def end(self) -> None:
        """End a line left open by :meth:`waiting`."""
        if self._open:
            self._open = False
            self.stream.write("\n")
            self.stream.flush()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def make_certs(workdir: str | Path, names: list[str], node_auth: str = "token") -> Path:
    """``workdir/certs``, made anew: a CA, the researcher's certificate for localhost and
    127.0.0.1, and a credential per node name (``fedplug certs init`` / ``certs node``): a
    token, or with ``node_auth="certificate"`` a client certificate and key."""
    from fedplug_grpc import certs

    certs_dir = Path(workdir).absolute() / "certs"
    if certs_dir.exists():
        shutil.rmtree(certs_dir)
    certs.init_certs(certs_dir, hosts=("localhost", "127.0.0.1"))
    for name in names:
        if node_auth == "certificate":
            certs.add_node_certificate(certs_dir, name)
        else:
            certs.add_node(certs_dir, name)
    return certs_dir


def prepare_nodes(
    workdir: str | Path, nodes: list[NodeSpec], address: str, certs_dir: Path | None
) -> Deployment:
    """Write each node's folder under ``workdir`` (replacing what is there): its SQLite registry
    with its datasets and its ``node.toml`` pointing at the researcher's ``address``
    (``host:port``), with the CA and its token or client certificate from ``certs_dir``
    (:func:`make_certs`), or in plaintext when None (loopback only). Starts nothing: see
    :meth:`Deployment.start`."""
    from fedplug_grpc.nodestore import NodeStore

    workdir = Path(workdir).absolute()
    deployment = Deployment(workdir, None, certs_dir)
    for spec in nodes:
        home = workdir / spec.name
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        store = NodeStore(home / "node.db")
        for name, kind, tags, options in spec.datasets:
            store.add_dataset(name, kind, tags, options)
        researcher: dict[str, Any] = {"address": address}
        if certs_dir is not None:
            researcher["ca_cert"] = str(certs_dir / "ca.pem")
            stem = str(certs_dir / "nodes" / spec.name)  # names may hold dots
            if Path(f"{stem}.pem").exists():
                researcher |= {"cert_file": f"{stem}.pem", "key_file": f"{stem}.key"}
            else:
                researcher["token_file"] = f"{stem}.token"
        else:
            researcher |= {"insecure": True, "token": "-"}
        config = home / "node.toml"
        config.write_text(
            _toml(
                {
                    "node": {"name": spec.name, "database": "node.db", **spec.node},
                    "researcher": {**researcher, **spec.researcher},
                    "limits": spec.limits,
                }
            )
        )
        deployment.configs[spec.name] = config
        deployment.specs[spec.name] = spec
    return deployment


@contextlib.contextmanager
def local_deployment(
    workdir: str | Path,
    nodes: list[NodeSpec],
    *,
    tls: bool = True,
    wait_tags: list[str] | None = None,
    wait_timeout: float = 120.0,
    report: StartupReport | None = None,
    **transport_options: Any,
) -> Iterator[Deployment]:
    """Set up ``nodes`` under ``workdir`` (:func:`prepare_nodes`), start the researcher's server
    on a free loopback port and one process per node, and wait until every node with a dataset
    tagged ``wait_tags`` is connected (every node when None). Stops the processes and the server
    on exit, also on Ctrl-C or SIGTERM. ``transport_options`` go to :class:`GrpcTransport`;
    with ``node_auth="certificate"`` each node gets a client certificate instead of a token.
    ``report`` (a :class:`StartupReport`) is told each step, and each node that connects."""
    certs_dir = None
    if tls:
        node_auth = transport_options.get("node_auth", "token")
        if report is not None:
            where = _shown(Path(workdir).absolute() / "certs")
            report.step(f"creating TLS certificates and node credentials in {where}")
        certs_dir = make_certs(workdir, [spec.name for spec in nodes], node_auth)
    transport = GrpcTransport("127.0.0.1:0", tls=certs_dir, **transport_options)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    deployment = None
    try:
        deployment = prepare_nodes(workdir, nodes, f"localhost:{transport.port}", certs_dir)
        deployment.transport = transport
        if report is not None:
            logs = _shown(deployment.workdir / "NAME" / "node.log")
            report.step(f"starting {_count(len(nodes), 'node process')} (their output: {logs})")
        started = time.monotonic()
        deployment.start_all()
        expected = [
            spec.name
            for spec in nodes
            if wait_tags is None or any(set(wait_tags) <= set(d[2]) for d in spec.datasets)
        ]
        try:
            transport.wait_for_nodes(
                wait_tags or [],
                names=expected,
                timeout=wait_timeout,
                on_change=report.waiting if report is not None else None,
            )
        except ConfigError as exc:
            logs = "; ".join(f"{n}: {deployment.log(n, 3)!r}" for n in expected)
            raise ConfigError(f"{exc}. Node logs: {logs}") from None
        finally:
            if report is not None:
                report.end()
        if report is not None:
            seconds = time.monotonic() - started
            report.step(f"{_count(len(expected), 'node')} connected in {seconds:.1f} s")
        yield deployment
    finally:
        transport.close()
        if deployment is not None:
            if report is not None and deployment.procs:
                report.step(f"stopping {_count(len(deployment.procs), 'node process')}")
            deployment.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
