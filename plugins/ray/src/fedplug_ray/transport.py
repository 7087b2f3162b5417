"""The ``ray`` transport: many simulated clients on a pool of Ray actors.

A federation of thousands of clients does not need thousands of processes: a pool of actors,
spread by Ray over the cluster's machines, each holds many clients (their :class:`~fedplug.Node`
objects: data, plan sessions, optimizer states) and serves their requests one after the other.
Each actor reserves the resources of one client at a time (``num_cpus_per_client``,
``num_gpus_per_client``), so the pool is as large as the cluster holds such slots, and no larger
than the number of clients.

What moves where, per round: the request (the global model and the round's settings) is put in
Ray's object store once, and every actor reads it from there (on another machine, Ray copies it
once to that machine); each actor streams back one reply per client (``num_returns="streaming"``)
and the researcher fetches them one at a time, in the order it asked for the clients, folding
each into the aggregate before it fetches the next: its memory holds one reply, not the round's.

Where clients come from: the experiment's in-process nodes (``nodes=[Node(...), ...]``: each
actor receives its share once, through the object store), or a *client factory* run in the
actors (``transport_options={"clients": "package.module:function", "num_clients": 10_000}``:
``function(client_id)`` returns the client's :class:`~fedplug.Node`, e.g. a partition of a
dataset by client id), so that client data never passes through the researcher.

An actor that dies (its process killed, its machine lost) fails its clients' requests of that
round (the experiment's ``on_node_failure`` policy applies); Ray starts it again, and it builds
its clients again, which rejoin from the next round.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedplug.errors import ConfigError, NodeError
from fedplug.node import Node

#: how long the pool's actors may take to start and build their clients
START_TIMEOUT_S = 120.0
#: how long the cluster's address may take to accept a connection
CONNECT_TIMEOUT_S = 10.0


def import_ray() -> Any:
    """``ray``, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"the ray transport needs Ray ({exc}); install it: pip install fedplug-ray"
        ) from None
    return ray


def ray_transport(
    *,
    nodes: Sequence[Node] | None,
    tags: list[str],
    min_nodes: int,
    address: str | None = None,
    clients: str | Callable[[int], Node] | None = None,
    num_clients: int | None = None,
    actors: int | None = None,
    num_cpus_per_client: float = 1.0,
    num_gpus_per_client: float = 0.0,
    init_options: dict[str, Any] | None = None,
) -> RayTransport:
    """The ``ray`` transport's factory (``Experiment(transport="ray", transport_options={...})``).

    :param address: the Ray cluster: ``"auto"`` (the one this machine belongs to), ``"HOST:PORT"``
        (its head's GCS address), ``"ray://HOST:PORT"`` (through Ray Client), or None (the
        default: a Ray instance of this machine, started for the experiment and stopped with it,
        unless this process is already connected to one).
    :param clients: a client factory, ``"module:function"`` (imported in the actors) or a
        picklable callable: ``function(client_id) -> Node``, run for ids ``0 .. num_clients-1``
        in the actors; instead of the experiment's ``nodes``.
    :param num_clients: how many clients the factory makes.
    :param actors: the pool's size (default: the cluster's CPUs divided by
        ``num_cpus_per_client``, GPUs likewise, at most one actor per client).
    :param num_cpus_per_client: CPUs an actor reserves (it serves one client at a time).
    :param num_gpus_per_client: GPUs an actor reserves (a fraction shares a GPU: 0.25 puts four
        actors on each GPU).
    :param init_options: more keyword arguments of ``ray.init`` (e.g. ``{"num_cpus": 8}`` for
        a local instance, ``{"runtime_env": {...}}``).
    """
    if (nodes is None) == (clients is None):
        raise ConfigError(
            "the ray transport simulates clients from either the experiment's nodes "
            "(nodes=[Node(...), ...]) or a client factory (transport_options={'clients': "
            "'module:function', 'num_clients': N}); give exactly one of them"
        )
    if clients is not None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigError(
                f"a client factory needs num_clients, a positive integer; got {num_clients!r}"
            )
        if isinstance(clients, str):
            _split_path(clients)  # the form is checked here, the import happens in the actors
        elif not callable(clients):
            raise ConfigError(f"clients must be 'module:function' or a callable, got {clients!r}")
    else:
        if isinstance(nodes, Node):
            nodes = [nodes]
        if not isinstance(nodes, (list, tuple)) or not all(isinstance(n, Node) for n in nodes):
            raise ConfigError(f"nodes must be a list of Node objects, got {nodes!r}")
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise ConfigError("two nodes have the same name; node names must be unique")
        num_clients = len(nodes)
    for key, value in (("num_cpus_per_client", num_cpus_per_client),
                       ("num_gpus_per_client", num_gpus_per_client)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
    if num_cpus_per_client == 0 and num_gpus_per_client == 0:
        raise ConfigError("num_cpus_per_client and num_gpus_per_client cannot both be 0")
    if actors is not None and (
        isinstance(actors, bool) or not isinstance(actors, int) or actors < 1
    ):
        raise ConfigError(f"actors must be a positive integer, got {actors!r}")
    return RayTransport(
        nodes=list(nodes) if nodes is not None else None,
        clients=clients,
        num_clients=num_clients,
        address=address,
        actors=actors,
        num_cpus_per_client=float(num_cpus_per_client),
        num_gpus_per_client=float(num_gpus_per_client),
        init_options=dict(init_options or {}),
    )


def _split_path(path: str) -> tuple[str, str]:
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ConfigError(f"a client factory path is 'package.module:function', got {path!r}")
    return module, attribute


def _factory(clients: str | Callable[[int], Node]) -> Callable[[int], Node]:
    if not isinstance(clients, str):
        return clients
    module, attribute = _split_path(clients)
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"client factory {clients!r} cannot be imported on this Ray worker ({exc}); it must "
            "be importable on every machine of the cluster"
        ) from None


class ClientPool:
    """A Ray actor's share of the federation: the clients it holds, served one at a time."""

    def __init__(self, source: Any, ids: list[int]) -> None:
        if isinstance(source, list):  # the experiment's nodes: this actor's share
            built = source
        else:
            make = _factory(source)
            built = []
            for client_id in ids:
                node = make(client_id)
                if not isinstance(node, Node):
                    raise ConfigError(
                        f"client factory returned {type(node).__name__} for client {client_id}, "
                        "not a fedplug Node"
                    )
                built.append(node)
        self.nodes = {node.name: node for node in built}

    def describe(self) -> dict[str, Any]:
        """Where this actor runs, and its clients' names and dataset tags."""
        import ray

        context = ray.get_runtime_context()
        return {
            "ray_node": context.get_node_id(),
            "pid": os.getpid(),
            "gpus": [str(gpu) for gpu in ray.get_gpu_ids()],  # this actor's GPU(s), if any
            "clients": {name: node.tags() for name, node in self.nodes.items()},
        }

    def serve(self, payload: bytes, names: list[str]) -> Iterator[tuple[str, bytes | str]]:
        """Serve ``payload`` to each of ``names`` in turn; one ``(name, reply)`` per client, or
        ``(name, "why")`` when the node broke."""
        for name in names:
            node = self.nodes.get(name)
            if node is None:
                yield name, f"this actor holds no client {name!r}"
                continue
            try:
                yield name, b"".join(node.serve(payload))
            except Exception as exc:  # a Node never raises on bad input: this is a bug
                yield name, f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class RayTransport:
    """Serves requests to clients held by a pool of Ray actors (see the module's docstring)."""

    streams_replies = False

    def __init__(
        self,
        *,
        nodes: list[Node] | None,
        clients: str | Callable[[int], Node] | None,
        num_clients: int,
        address: str | None,
        actors: int | None,
        num_cpus_per_client: float,
        num_gpus_per_client: float,
        init_options: dict[str, Any],
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            _check_reachable(address)
            options = dict(init_options)
            if address is None:  # a Ray instance of this machine, for this experiment only
                options.setdefault("include_dashboard", False)
            if not (address or "").startswith("ray://"):
                options.setdefault("log_to_driver", False)  # node output stays in Ray's logs
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {address!r}: {exc}") from None
            self._started = address is None
        self.num_cpus_per_client = num_cpus_per_client
        self.num_gpus_per_client = num_gpus_per_client
        size = self._pool_size(actors, num_clients)
        # client i goes to actor i % size: a round's clients spread evenly over the pool
        shares = [list(range(k, num_clients, size)) for k in range(size)]
        actor_class = ray.remote(
            num_cpus=num_cpus_per_client,
            num_gpus=num_gpus_per_client,
            max_restarts=-1,  # a dead actor comes back, and builds its clients again
            max_task_retries=0,  # a round's request is not served twice
        )(ClientPool)
        self.actors = []
        for share in shares:
            source = [nodes[i] for i in share] if nodes is not None else clients
            self.actors.append(
                actor_class.options(scheduling_strategy="SPREAD").remote(source, share)
            )
        self.placement: dict[str, int] = {}  # client name -> actor index
        self._tags: dict[str, list[list[str]]] = {}
        try:
            described = ray.get(
                [actor.describe.remote() for actor in self.actors], timeout=START_TIMEOUT_S
            )
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError(
                f"the pool's {size} Ray actors did not all start within {START_TIMEOUT_S:.0f} s: "
                f"the cluster ({_resources(ray)}) may lack room for them "
                f"({num_cpus_per_client} CPUs, {num_gpus_per_client} GPUs each)"
            ) from None
        except Exception as exc:
            self.close()
            raise ConfigError(
                f"the Ray actors could not build their clients: {_why(exc)}"
            ) from None
        held = [list(info["clients"].items()) for info in described]
        self.where = _places(described)
        # the federation in client order (client i is the (i // size)-th of actor i % size), so
        # that an experiment asks, and aggregates, in the order of its nodes or client ids
        for client in range(num_clients):
            index = client % size
            name, tags = held[index][client // size]
            if name in self.placement:
                self.close()
                raise ConfigError(f"two clients are named {name!r}; names must be unique")
            self.placement[name] = index
            self._tags[name] = tags

    def describe(self) -> list[dict[str, Any]]:
        """Where each actor runs now (``ray_node``, ``pid``), asked of the actors."""
        self.where = _places(self._ray.get([actor.describe.remote() for actor in self.actors]))
        return self.where

    def _pool_size(self, actors: int | None, num_clients: int) -> int:
        resources = self._ray.cluster_resources()
        slots = []
        if self.num_cpus_per_client:
            slots.append(int(resources.get("CPU", 1) // self.num_cpus_per_client))
        if self.num_gpus_per_client:
            slots.append(int(resources.get("GPU", 0) // self.num_gpus_per_client))
        size = min(slots) if slots else 1
        if size < 1:
            raise ConfigError(
                f"the Ray cluster has {resources.get('CPU', 0)} CPUs and "
                f"{resources.get('GPU', 0)} GPUs: not enough for one client "
                f"({self.num_cpus_per_client} CPUs, {self.num_gpus_per_client} GPUs)"
            )
        if actors is not None:
            if actors > size:
                raise ConfigError(
                    f"actors={actors}, but the Ray cluster ({_resources(self._ray)}) holds "
                    f"{size} actors of {self.num_cpus_per_client} CPUs and "
                    f"{self.num_gpus_per_client} GPUs; the others would wait forever"
                )
            size = actors
        return max(1, min(size, num_clients))

    def node_tags(self) -> dict[str, list[list[str]]]:
        return dict(self._tags)

    def dispatch(
        self, payload: bytes | list[Any], nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        ray = self._ray
        if not isinstance(payload, bytes):
            payload = b"".join(payload)
        unknown = [name for name in nodes if name not in self.placement]
        if unknown:
            raise ConfigError(
                f"unknown client(s) {unknown[:5]}; this federation has {len(self.placement)}"
            )
        request = ray.put(payload)  # once per round, whatever the number of clients
        by_actor: dict[int, list[str]] = {}
        for name in nodes:
            by_actor.setdefault(self.placement[name], []).append(name)
        streams = {
            index: self.actors[index].serve.options(num_returns="streaming").remote(request, names)
            for index, names in by_actor.items()
        }
        dead: dict[int, str] = {}
        try:
            for name in nodes:
                index = self.placement[name]
                if index in dead:
                    yield name, NodeError(name, dead[index])
                    continue
                try:
                    got_name, reply = ray.get(next(streams[index]))
                except StopIteration:
                    dead[index] = "its Ray actor stopped before serving it"
                    yield name, NodeError(name, dead[index])
                    continue
                except Exception as exc:  # the actor died: the rest of its share fails too
                    dead[index] = f"its Ray actor failed ({_why(exc)})"
                    yield name, NodeError(name, dead[index])
                    continue
                if got_name != name:  # cannot happen: an actor serves its names in order
                    yield name, NodeError(name, f"its Ray actor answered for {got_name!r}")
                elif isinstance(reply, str):
                    yield name, NodeError(name, reply)
                else:
                    yield name, reply
        finally:
            del request, streams

    def close(self) -> None:
        ray = self._ray
        for actor in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False


def _check_reachable(address: str | None) -> None:
    """A :class:`ConfigError` when nothing listens at the cluster's address: the one given, or
    the one Ray would pick (``RAY_ADDRESS``, or the record of this machine's last ``ray
    start``); ``ray.init`` would retry it for minutes."""
    environment = os.environ.get("RAY_ADDRESS") or None
    given = address if address not in (None, "auto") else environment  # named by the user
    if given is not None and given.startswith("ray://"):  # Ray Client's server
        target = given.removeprefix("ray://")
    else:
        try:  # Ray's own resolution (private, hence guarded: Ray then speaks for itself)
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address)
        except Exception:
            return
        if target is None:
            return  # no cluster: a Ray instance of this machine is started
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        if address not in (None, "auto"):
            found = ""
        elif environment is not None:
            found = " (RAY_ADDRESS)"
        else:
            found = (
                " (recorded by this machine's last `ray start`; `ray stop --force` clears a "
                "stale record)"
            )
        start = (
            "`ray start --head` there (its Ray Client server listens on port 10001)"
            if given is not None and given.startswith("ray://")
            else f"`ray start --head --port={port}` there"
        )
        raise ConfigError(
            f"no Ray cluster answers at {given or target!r}{found} "
            f"({exc.strerror or type(exc).__name__}): start its head with {start}, or give the "
            "address that `ray start` printed (the address option, or RAY_ADDRESS)"
        ) from None


def _places(described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where each actor runs (``ray_node``, ``pid``, ``gpus``: the ids of the GPUs Ray gave it,
    which it sees as ``CUDA_VISIBLE_DEVICES``), from their ``describe()`` answers."""
    return [{"ray_node": d["ray_node"], "pid": d["pid"], "gpus": d["gpus"]} for d in described]


def _resources(ray: Any) -> str:
    resources = ray.cluster_resources()
    return f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
