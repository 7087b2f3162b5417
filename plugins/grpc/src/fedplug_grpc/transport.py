"""The gRPC transport: the researcher runs a server, hospital nodes connect out to it.

Hospital networks allow outbound connections only, so each node opens one long-lived
bidirectional stream (``/fedplug.v1.Federation/Connect``) and the researcher sends tasks down
it. The stream carries *frames*, raw bytes without protobuf::

    u8 kind | body

Control frames (HELLO, WELCOME, TASK, READY, GRANT, CANCEL, REFUSED, HEARTBEAT) carry a small
msgpack map. DATA frames carry ``u64 task | u64 offset | bytes``. A message (the bytes of
:mod:`fedplug.messages`) crosses as an announcement of its size, then DATA frames of at most
``chunk_bytes`` covering it in order. A node decodes a request while its frames arrive
(:class:`Inbound`, :meth:`fedplug.node.Node.serve`): the parameters go straight into its
plan, and its reply is sent from the plan's parameters. The researcher folds a streamed reply
into the aggregator while it arrives, or copies a reply into one buffer allocated at the
announced size and decodes it from there. No message limit applies but the receiver's own
(``max_reply_bytes``, a node's ``max_message_mb``).

- Researcher to node: ``TASK {task, size}`` then DATA. The payload is sent from the global
  model's own memory (:func:`fedplug.messages.encode_parts`), to every node, without a copy.
- Node to researcher: ``READY {task, size}`` when the reply is ready; the researcher answers
  ``GRANT`` when it has room for it, then the node sends DATA. Replies are handed to the
  aggregator in the order of the request's node list (the same sum, bit for bit, every run) and
  one at a time; replies that arrive early are held while they fit in ``early_reply_bytes``,
  otherwise they wait on their node. Researcher memory is thus O(model), whatever the number of
  nodes. With ``dispatch(..., streams=True)`` the reply whose turn it is is not even assembled:
  the caller gets a :class:`ReplyStream` of its DATA frames as they arrive (a few frames are
  buffered; beyond that the node waits) and folds them in, and can ask for the reply again
  (:meth:`ReplyStream.replay`): a node keeps its reply until the researcher ends the round with
  CANCEL.
- Liveness: both sides send HEARTBEAT frames every ``heartbeat_s`` (the researcher sets it for
  all); a node silent for ``heartbeat_timeout`` is dropped and its task fails, and gRPC keepalive
  pings detect dead connections underneath. ``request_timeout`` bounds each request.
- Trust: TLS with the researcher's certificate, which nodes verify against the CA they were given
  (``fedplug certs``); each node presents its own token, and an unknown token is refused before
  anything else is read.

A misbehaving node (garbage frames, data it was not granted, more bytes than announced) is
disconnected with a status that names the problem; its task fails and the experiment's
``on_node_failure`` policy decides the round. Nodes reconnect with back-off, so a researcher that
restarts (from a checkpoint) finds them again.
"""

from __future__ import annotations

import atexit
import inspect
import ipaddress
import itertools
import logging
import os
import queue
import signal
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fedplug import messages as msg
from fedplug.errors import ConfigError, FedplugError, MessageError, NodeError
from fedplug.text import inert, unsafe_characters

log = logging.getLogger("fedplug.grpc")

METHOD = "/fedplug.v1.Federation/Connect"
CHUNK_BYTES = 1 << 20  # DATA frames this side sends (4 MiB: same speed, more memory in flight)
MAX_CHUNK_BYTES = 64 << 20  # the largest DATA frame either side accepts
_FRAME_SLACK = 64 << 10  # room for a frame's header above its chunk
HELLO, WELCOME, TASK, DATA, READY, GRANT, CANCEL, REFUSED, HEARTBEAT = range(1, 10)
_KIND_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    TASK: "TASK",
    DATA: "DATA",
    READY: "READY",
    GRANT: "GRANT",
    CANCEL: "CANCEL",
    REFUSED: "REFUSED",
    HEARTBEAT: "HEARTBEAT",
}
_DATA_HEAD = struct.Struct("<BQQ")
STREAM_FRAMES = 4  # DATA frames of a streamed reply held before its node has to wait
STREAMS_PER_NODE = 2  # a reconnecting node's new stream may overlap its old one
PENDING_STREAMS = 8  # streams waiting to say HELLO at once
CONTROL_BYTES = 256 << 10  # HELLO (a node's dataset tags), READY, REFUSED (an error text), ...
CONTROL_CONTAINERS = 4096  # lists and maps in one control frame
_TOKEN_HEADER = "authorization"


class ProtocolError(FedplugError):
    """A peer sent frames that break the transport's protocol."""


def control(kind: int, body: dict[str, Any]) -> bytes:
    return bytes([kind]) + msgpack.packb(body, use_bin_type=True)


def parse_control(frame: bytes, kind: int, fields: dict[str, type]) -> dict[str, Any]:
    """The msgpack body of a control frame, checked against ``fields`` (name -> type). Control
    frames are small: a larger one, or one of too many lists and maps, is refused unparsed."""
    if len(frame) > CONTROL_BYTES:
        raise ProtocolError(
            f"{_KIND_NAMES[kind]} frame of {len(frame)} bytes; control frames have at most "
            f"{CONTROL_BYTES}"
        )
    try:
        body = msg.unpack_limited(frame[1:], CONTROL_CONTAINERS)
    except MessageError as exc:
        raise ProtocolError(f"malformed {_KIND_NAMES[kind]} frame: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"malformed {_KIND_NAMES[kind]} frame: not a map")
    for name, typ in fields.items():
        value = body.get(name)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ProtocolError(
                f"{_KIND_NAMES[kind]} frame: field {name!r} must be {typ.__name__}, got {value!r:.60}"
            )
    return body


def frame_kind(frame: Any) -> int:
    if not isinstance(frame, bytes) or not frame:
        raise ProtocolError("empty or non-bytes frame")
    kind = frame[0]
    if kind not in _KIND_NAMES:
        raise ProtocolError(f"unknown frame kind {kind}")
    return kind


def data_frames(
    task: int, parts: Iterable[Any], chunk: int, cancelled: Any = None
) -> Iterator[bytes]:
    """DATA frames covering ``parts`` in order; stops early once ``cancelled()`` is true."""
    offset = 0
    for part in parts:
        view = memoryview(part).cast("B") if not isinstance(part, bytes) else memoryview(part)
        for start in range(0, len(view), chunk):
            if cancelled is not None and cancelled():
                return
            piece = view[start : start + chunk]
            yield b"".join((_DATA_HEAD.pack(DATA, task, offset), piece))
            offset += len(piece)


def continued(frame: bytes, task: int, received: int, size: int) -> int:
    """The payload length of DATA ``frame``, which must continue ``task``'s message of ``size``
    bytes after its first ``received``."""
    if len(frame) < _DATA_HEAD.size:
        raise ProtocolError(f"DATA frame of {len(frame)} bytes is shorter than its header")
    _, task_id, offset = _DATA_HEAD.unpack_from(frame)
    n = len(frame) - _DATA_HEAD.size
    if task_id != task or offset != received or received + n > size:
        raise ProtocolError(
            f"DATA frame for task {task_id} at offset {offset} (+{n} bytes) does not continue "
            f"task {task} ({received} of {size} bytes received)"
        )
    return n


class Receiver:
    """One message arriving in DATA frames, copied into a buffer allocated at its full size."""

    def __init__(self, task: int, size: int) -> None:
        self.task, self.size, self.received = task, size, 0
        self.buffer = np.empty(size, dtype=np.uint8)

    def add(self, frame: bytes) -> bool:
        """Copy one DATA frame in; True when the message is complete."""
        n = continued(frame, self.task, self.received, self.size)
        offset = self.received
        self.buffer[offset : offset + n] = np.frombuffer(frame, np.uint8, n, _DATA_HEAD.size)
        self.received += n
        return self.received == self.size

    def message(self) -> memoryview:
        return memoryview(self.buffer)


class Inbound:
    """One message arriving in DATA frames, read by another thread while it arrives: iterating
    it yields the payload of each frame (a view of the frame, no copy), in order, until the
    whole message has been yielded.

    Once its reader has started, :meth:`add` waits while ``ahead`` frames are waiting to be
    read, so that a reader slower than the network holds back the sender (gRPC's flow control)
    rather than lets frames pile up in memory; before that (e.g. while the node finishes the
    previous request) frames are kept. ``on_wait()`` is called every half second of such a
    wait (the connection is not silent, only not read). Frames that arrive once the reader
    stopped reading (it closed the iterator, e.g. after refusing the message) are checked and
    dropped."""

    def __init__(self, task: int, size: int, ahead: int = 8, on_wait: Any = None) -> None:
        self.task, self.size, self.received, self.ahead = task, size, 0, ahead
        self.on_wait = on_wait
        self.reading = self.closed = False
        self._items: deque[Any] = deque()
        self._cv = threading.Condition()

    def add(self, frame: bytes) -> bool:
        """Pass one DATA frame on; True when the message is complete."""
        n = continued(frame, self.task, self.received, self.size)
        self.received += n
        if n:
            with self._cv:
                while self.reading and not self.closed and len(self._items) >= self.ahead:
                    if not self._cv.wait(0.5) and self.on_wait is not None:
                        self.on_wait()
                if not self.closed:
                    self._items.append(memoryview(frame)[_DATA_HEAD.size :])
                    self._cv.notify_all()
        return self.received == self.size

    def abort(self, reason: str) -> None:
        """The message will not be completed: the reader gets a MessageError naming ``reason``."""
        error = MessageError(f"{reason} after {self.received} of {self.size} bytes")
        with self._cv:
            self._items.append(error)
            self._cv.notify_all()

    def __iter__(self) -> Iterator[memoryview]:
        with self._cv:
            self.reading = True
        try:
            taken = 0
            while taken < self.size:
                with self._cv:
                    while not self._items:
                        self._cv.wait()
                    item = self._items.popleft()
                    self._cv.notify_all()
                if isinstance(item, BaseException):
                    raise item
                taken += len(item)
                yield item
        finally:
            with self._cv:  # what arrived but was not read, and what will
                self.closed = True
                self._items.clear()
                self._cv.notify_all()


def channel_options() -> list[tuple[str, int]]:
    # Receive limits do not depend on this side's chunk size: peers may chunk differently.
    limit = MAX_CHUNK_BYTES + _FRAME_SLACK
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 < chunk <= MAX_CHUNK_BYTES:
        raise ConfigError(f"chunk_bytes must be an int from 1 to {MAX_CHUNK_BYTES}, got {chunk!r}")
    return chunk


def tune_malloc() -> None:
    """Keep the memory of gRPC frames in this process (the researcher's, a node's) for the
    next frames, with glibc's malloc. A no-op elsewhere than glibc.

    It changes how the whole process allocates, so no library constructor calls it: the node
    daemon's main (:func:`serve_node`) does, and a researcher's script that moves large models
    over gRPC may (``fedplug_grpc.tune_malloc()``, before building its experiment).

    - One arena for every thread. gRPC's threads (one per node stream) allocate the frames;
      with glibc's default of up to 8 arenas per core, the frames freed by one thread stayed
      cached in its own arena and the researcher's memory grew with the number of nodes.
    - Blocks up to 4 MiB (frames) always come from the heap, and the heap goes back to the
      system only when 64 MiB lie free at its top. With glibc's own thresholds the memory of
      frames was returned and mapped again round after round, and the kernel zeroed up to half
      a model's worth of pages per round on a node (up to 175,000 page faults per 512 MiB round;
      a few thousand with these). Large arrays are still mapped and unmapped on their own.
      (Mapping every frame anew instead, the other way to bound memory, halved the throughput:
      bench/transport.py.)
    """
    global _MALLOPT_DONE
    if _MALLOPT_DONE or not sys.platform.startswith("linux"):
        return
    _MALLOPT_DONE = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_MALLOPT_DONE = False


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- researcher side ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Task:
    id: int
    node: str
    conn: _Conn | None
    started: float = field(default_factory=time.monotonic)
    state: str = "sending"  # sending -> running -> ready -> receiving -> done | failed
    size: int = 0
    receiver: Receiver | None = None  # a reply granted early: assembled in a buffer
    frames: deque | None = None  # a streamed reply: DATA frames not yet taken
    received: int = 0  # bytes of a streamed reply that have arrived
    granted: float = 0.0  # when its reply was granted (monotonic)
    progress: float = 0.0  # when its reply last moved: granted, or a DATA frame arrived
    error: str = ""

    def fail(self, reason: str) -> None:
        if self.state not in ("done", "failed"):
            self.state, self.error, self.receiver, self.frames = "failed", reason, None, None


@dataclass(eq=False)
class _Conn:
    name: str
    tags: list[list[str]]
    peer: str
    credential: str | None = None  # the digest or pin it authenticated with
    outbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    last_seen: float = field(default_factory=time.monotonic)
    connected: float = field(default_factory=time.time)
    alive: bool = True
    task: _Task | None = None
    cancelled: set[int] = field(default_factory=set)


class GrpcTransport:
    """The researcher's gRPC server, and the transport an :class:`~fedplug.Experiment` uses.

    :param address: where to listen, ``host:port``; port 0 picks a free port (see :attr:`port`).
    :param tls: a certs directory made by ``fedplug certs init`` (``server.pem``/``server.key``;
        its ``credentials.json`` lists the nodes), or a ``(cert, key)`` pair of PEM file paths
        the operator provides. None serves plaintext, allowed on loopback addresses only.
    :param credentials: node name -> SHA-256 of its token (with ``node_auth="certificate"``:
        of its client certificate), or a certs directory or ``credentials.json`` path; by
        default the ``tls`` directory's. With neither TLS nor credentials (loopback only), any
        node may connect.
    :param node_auth: how a node proves who it is: ``"token"`` (sent inside the TLS channel)
        or ``"certificate"`` (mutual TLS: each node presents a client certificate signed by
        ``client_ca`` and pinned in the credentials, ``fedplug certs node NAME --cert``; a node
        without one fails the handshake).
    :param client_ca: the CA (PEM path) that signs node certificates; by default the ``tls``
        directory's ``ca.pem``.
    :param heartbeat_s: how often both sides send a heartbeat; a node silent for
        ``heartbeat_timeout`` (default ``3 * heartbeat_s + 2``) is dropped.
    :param request_timeout: seconds a node may take to answer one request, and then to send its
        whole reply once the researcher grants it (None: no limit; a dropped node is still
        detected by heartbeats).
    :param hello_timeout: seconds a new stream has to say HELLO before it is closed (a stream
        holds a server thread; at most 8 may wait at once, and a node has at most 2 streams).
    :param stall_timeout: seconds a granted reply may go without a DATA frame while the
        researcher waits for one (default ``heartbeat_timeout``): a node that keeps its
        connection alive but stops sending its reply fails, whatever ``request_timeout``.
    :param max_reply_bytes: largest reply accepted (default: twice the request, at least 64 MiB).
    :param early_reply_bytes: memory for replies that arrive before their turn to be aggregated.
    :param max_nodes: connections served at once.
    :param chunk_bytes: size of the DATA frames this side sends.
    """

    def __init__(
        self,
        address: str = "0.0.0.0:50051",
        *,
        tls: str | Path | tuple[str | Path, str | Path] | None = None,
        credentials: dict[str, str] | str | Path | None = None,
        node_auth: str = "token",
        client_ca: str | Path | None = None,
        heartbeat_s: float = 5.0,
        heartbeat_timeout: float | None = None,
        request_timeout: float | None = None,
        stall_timeout: float | None = None,
        hello_timeout: float = 10.0,
        max_reply_bytes: int | None = None,
        early_reply_bytes: int = 64 << 20,
        max_nodes: int = 64,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        import grpc

        from fedplug_grpc import certs

        bounds = (
            ("heartbeat_s", heartbeat_s),
            ("request_timeout", request_timeout),
            ("stall_timeout", stall_timeout),
            ("hello_timeout", hello_timeout),
        )
        for what, value in bounds:
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
        self.heartbeat_s = float(heartbeat_s)
        self.heartbeat_timeout = heartbeat_timeout or 3 * self.heartbeat_s + 2
        self.stall_timeout = stall_timeout or self.heartbeat_timeout
        self.request_timeout = request_timeout
        self.max_reply_bytes = max_reply_bytes
        self.early_reply_bytes = early_reply_bytes
        self.chunk_bytes = _check_chunk(chunk_bytes)
        client_ca_pem = self._check_node_auth(node_auth, tls, client_ca)
        load = certs.load_certificate_pins if client_ca_pem else certs.load_credentials
        source = credentials if isinstance(credentials, (str, Path)) else None
        if credentials is None and isinstance(tls, (str, Path)):
            source = tls
        #: the credentials file, read again when it changes: a revocation applies at once
        self._credentials_file = certs.credentials_file(source) if source is not None else None
        self._credentials_stamp = self._stamp()
        self._load_credentials = load
        if source is not None:
            credentials = load(source)
        if credentials is None and not is_loopback(address):
            raise ConfigError(
                f"serving {address} without node credentials would let anyone join; give tls= "
                "a certs directory (fedplug certs init / fedplug certs node NAME) or credentials="
            )
        self.credentials, self.node_auth = credentials, node_auth
        self._cv = threading.Condition()
        self._conns: dict[str, _Conn] = {}
        self.refused: list[str] = []  # recent refused connection attempts, for error messages
        self.hello_timeout = float(hello_timeout)
        self._streams: dict[str | None, int] = {}  # streams open per credential (None: none)
        self._pending_hello = 0
        self._task_ids = itertools.count(1)
        self._reply_limit = max_reply_bytes or 64 << 20
        self._closing = False

        self._server = grpc.server(
            ThreadPoolExecutor(max_nodes + 4, thread_name_prefix="fedplug-grpc"),
            options=[
                *channel_options(),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
            maximum_concurrent_rpcs=max_nodes,
        )
        handler = grpc.stream_stream_rpc_method_handler(self._connect)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fedplug.v1.Federation", {"Connect": handler}),)
        )
        try:
            if tls is None:
                if not is_loopback(address):
                    raise ConfigError(
                        f"plaintext gRPC on {address} would expose models and tokens; give "
                        "tls= a certs directory (fedplug certs init) or (cert, key) files"
                    )
                self.port = self._server.add_insecure_port(address)
            else:
                if isinstance(tls, tuple):
                    cert, key = certs.server_tls(cert=tls[0], key=tls[1])
                else:
                    cert, key = certs.server_tls(tls)
                self.port = self._server.add_secure_port(
                    address,
                    grpc.ssl_server_credentials(
                        [(key, cert)],
                        root_certificates=client_ca_pem,
                        require_client_auth=client_ca_pem is not None,
                    ),
                )
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        if not self.port:
            raise ConfigError(f"cannot listen on {address} (is the port in use?)")
        self.address = address
        self.tls = tls is not None
        self._server.start()
        # A program that ends without close() must still end: the server's threads would keep
        # it alive. threading's own exit hooks run before non-daemon threads are joined.
        ref = weakref.ref(self)
        getattr(threading, "_register_atexit", atexit.register)(
            lambda: (transport := ref()) is not None and transport.close()
        )
        self._janitor = threading.Thread(target=self._watch, daemon=True, name="fedplug-janitor")
        self._janitor.start()

    @staticmethod
    def _check_node_auth(node_auth: str, tls: Any, client_ca: str | Path | None) -> bytes | None:
        """The PEM of the CA that signs node certificates (None: nodes send tokens)."""
        from fedplug_grpc import certs

        if node_auth not in ("token", "certificate"):
            raise ConfigError(f"node_auth must be 'token' or 'certificate', got {node_auth!r}")
        if node_auth == "token":
            if client_ca is not None:
                raise ConfigError('client_ca is used only with node_auth="certificate"')
            return None
        if tls is None:
            raise ConfigError(
                'node_auth="certificate" is mutual TLS: give tls= a certs directory '
                "(fedplug certs init) or (cert, key) files"
            )
        if client_ca is None:
            if not isinstance(tls, (str, Path)):
                raise ConfigError(
                    'node_auth="certificate" with (cert, key) files needs client_ca=, the CA '
                    "that signs the nodes' certificates"
                )
            client_ca = Path(tls) / "ca.pem"
        return certs.read_pem(client_ca)

    # -- connections ----------------------------------------------------------------------------
    def _claim(self, context: Any) -> str | None:
        """The node the connection's credential names (None: any node may connect); aborts the
        call when the credential is unknown."""
        import grpc

        from fedplug_grpc.certs import check_certificate, check_token

        if self.credentials is None:
            return None
        if self.node_auth == "certificate":
            # the TLS layer has verified the chain to client_ca; the pin makes it this node's
            pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
            claimed = check_certificate(self.credentials, pem)
            what = "certificate"
            hint = "`fedplug certs node NAME --cert` (or --csr) and the node reads cert_file"
        else:
            token = dict(context.invocation_metadata()).get(_TOKEN_HEADER, "")
            token = token[len("Bearer ") :] if token.startswith("Bearer ") else token
            claimed = check_token(self.credentials, token)
            what, hint = "credential", "`fedplug certs node NAME` and the node reads token_file"
            if not token:
                self._refuse(f"{context.peer()}: no node token")
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no node token: this researcher knows nodes by their tokens (fedplug certs "
                    "node NAME, token_file in node.toml); a node with a client certificate needs "
                    'a researcher serving with node_auth="certificate"',
                )
        if claimed is None:
            self._refuse(f"{context.peer()}: unknown node {what}")
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"unknown node {what}; the researcher's operator issues one with {hint}",
            )
        return claimed

    def _connect(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        """One node's stream: authenticate, read HELLO, then serve its outbox."""
        import grpc

        peer = context.peer()
        claimed = self._claim(context)
        with self._cv:
            crowded = self._admit(claimed)
        if crowded:
            self._refuse(f"{peer}: {crowded}")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, crowded)
        try:
            yield from self._serve_stream(requests, context, peer, claimed)
        finally:
            with self._cv:
                self._streams[claimed] -= 1
                if not self._streams[claimed]:
                    del self._streams[claimed]

    def _admit(self, claimed: str | None) -> str:
        """Why a new stream with credential ``claimed`` is refused ("" when it is not): a node
        has at most STREAMS_PER_NODE streams (its reconnection may overlap the old one), and at
        most PENDING_STREAMS streams may be waiting to say HELLO at once."""
        if claimed is not None and self._streams.get(claimed, 0) >= STREAMS_PER_NODE:
            return (
                f"node {claimed!r} already has {STREAMS_PER_NODE} connections; close one (the "
                "researcher keeps the newest after HELLO)"
            )
        if self._pending_hello >= PENDING_STREAMS:
            return f"{PENDING_STREAMS} connections are already waiting to say HELLO; retry later"
        self._streams[claimed] = self._streams.get(claimed, 0) + 1
        return ""

    def _serve_stream(
        self, requests: Iterator[bytes], context: Any, peer: str, claimed: str | None
    ) -> Iterator[bytes]:
        import grpc

        # a stream that does not say HELLO in time holds a server thread for nothing
        with self._cv:
            self._pending_hello += 1
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            context.cancel()

        timer = threading.Timer(self.hello_timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            first = next(requests)
            if frame_kind(first) != HELLO:
                raise ProtocolError(f"the first frame must be a HELLO, got {_KIND_NAMES[first[0]]}")
            hello = parse_control(first, HELLO, {"name": str, "tags": list, "wire": int})
            if hello["wire"] != msg.VERSION:
                raise ProtocolError(
                    f"node speaks message format {hello['wire']}, this researcher speaks "
                    f"{msg.VERSION}; install the same fedplug version on both sides"
                )
            tags = hello["tags"]
            if not all(isinstance(t, list) and all(isinstance(x, str) for x in t) for t in tags):
                raise ProtocolError("HELLO frame: tags must be a list of lists of strings")
            if not 0 < len(hello["name"]) <= 64:
                raise ProtocolError(f"HELLO frame: invalid node name {inert(hello['name'])!r:.80}")
            hidden = unsafe_characters(hello["name"] + "".join(x for t in tags for x in t), "")
            if hidden:  # names and tags end up in the researcher's terminal and logs
                raise ProtocolError(
                    f"HELLO frame: control or formatting characters ({', '.join(hidden[:5])}) in "
                    "the node's name or dataset tags"
                )
        except (grpc.RpcError, ProtocolError, StopIteration) as exc:
            if timed_out.is_set():
                self._refuse(f"{peer}: no HELLO within hello_timeout={self.hello_timeout:g} s")
                return
            if isinstance(exc, grpc.RpcError):
                return  # the node went away before saying who it is
            reason = str(exc) or "closed before HELLO"
            self._refuse(f"{peer}: bad HELLO: {reason}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad HELLO: {reason}")
        finally:
            timer.cancel()
            with self._cv:
                self._pending_hello -= 1
        if timed_out.is_set():  # cancelled by the timer right after its HELLO
            return
        name = hello["name"]
        if claimed is not None and claimed != name:
            self._refuse(f"{peer}: credential of {claimed!r} used by a node named {name!r}")
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this credential belongs to node {claimed!r}, not {name!r}",
            )
        credential = self.credentials.get(name) if self.credentials is not None else None
        conn = _Conn(name, tags, peer, credential)
        with self._cv:
            old = self._conns.get(name)
            if old is not None:
                self._drop(old, "replaced by a new connection from the same node")
            self._conns[name] = conn
            self._cv.notify_all()
        log.info("node %r connected from %s with datasets %s", name, peer, tags)
        context.add_callback(lambda: self._lost(conn, "connection closed"))
        threading.Thread(
            target=self._read, args=(conn, requests), daemon=True, name=f"fedplug-read-{name}"
        ).start()
        yield control(WELCOME, {"heartbeat_s": self.heartbeat_s, "wire": msg.VERSION})
        while True:
            try:
                item = conn.outbox.get(timeout=self.heartbeat_s)
            except queue.Empty:
                item = control(HEARTBEAT, {})
            if item is None:
                return
            if isinstance(item, tuple):  # (status, details): end the stream with that status
                context.abort(getattr(grpc.StatusCode, item[0]), item[1])
            if isinstance(item, bytes):
                yield item
            else:
                yield from item

    def _refuse(self, reason: str) -> None:
        log.warning("refused a connection: %s", reason)
        with self._cv:
            self.refused = [*self.refused[-9:], reason]

    def _read(self, conn: _Conn, requests: Iterator[bytes]) -> None:
        import grpc

        try:
            for frame in requests:
                conn.last_seen = time.monotonic()
                with self._cv:
                    if not conn.alive:
                        return
                    self._on_frame(conn, frame)
            self._lost(conn, "the node closed its connection")
        except ProtocolError as exc:
            with self._cv:
                self._drop(conn, f"protocol error: {exc}", status="INVALID_ARGUMENT")
        except grpc.RpcError as exc:
            self._lost(conn, f"connection lost ({_status(exc)})")
        except Exception as exc:  # never let a reader thread die silently
            self._lost(conn, f"connection failed: {type(exc).__name__}: {exc}")

    def _on_frame(self, conn: _Conn, frame: bytes) -> None:
        """Handle one frame from ``conn`` (called with the lock held)."""
        kind = frame_kind(frame)
        task = conn.task
        if kind == HEARTBEAT:
            return
        if kind == DATA:
            if task is not None and task.state == "receiving" and task.frames is not None:
                self._stream_frame(conn, task, frame)
                return
            if task is not None and task.state == "receiving" and task.receiver is not None:
                task.progress = time.monotonic()
                if task.receiver.add(frame):
                    task.state = "done"
                    self._cv.notify_all()
                return
            (task_id,) = struct.unpack_from("<Q", frame, 1) if len(frame) >= 9 else (None,)
            if task_id in conn.cancelled:
                return  # data in flight when the task was cancelled
            raise ProtocolError("DATA frame for no granted task")
        if kind in (READY, REFUSED):
            body = parse_control(frame, kind, {"task": int})
            if task is None or body["task"] != task.id:
                if body["task"] in conn.cancelled:
                    return
                raise ProtocolError(f"{_KIND_NAMES[kind]} for unknown task {body['task']}")
            if kind == REFUSED:
                task.fail(inert(body.get("message", "refused the request")))
            elif task.state not in ("sending", "running"):
                raise ProtocolError(f"READY for task {task.id} in state {task.state}")
            else:
                size = body.get("size")
                limit = self._reply_limit
                if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= limit:
                    self._cancel(conn, task)
                    task.fail(
                        f"announced a reply of {size!r} bytes; replies must be 1 to {limit} "
                        "bytes here (max_reply_bytes)"
                    )
                else:
                    task.state, task.size = "ready", size
            self._cv.notify_all()
            return
        raise ProtocolError(f"unexpected {_KIND_NAMES[kind]} frame from a node")

    def _stream_frame(self, conn: _Conn, task: _Task, frame: bytes) -> None:
        """Queue a DATA frame of the streamed reply (lock held); wait while the queue is full,
        so that gRPC's flow control makes the node wait rather than memory grow."""
        n = continued(frame, task.id, task.received, task.size)
        while task.frames is not None and len(task.frames) >= STREAM_FRAMES and conn.alive:
            self._cv.wait(0.5)
            conn.last_seen = time.monotonic()  # the reader waits on the researcher, not the node
        if task.frames is None or not conn.alive:
            return  # the task ended meanwhile
        task.frames.append(frame)
        task.received += n
        task.progress = time.monotonic()
        if task.received == task.size:
            task.state = "done"
        self._cv.notify_all()

    def _next_frame(self, task: _Task) -> bytes | None:
        """The next DATA frame of a streamed reply; None once all have been taken."""
        with self._cv:
            while True:
                if task.frames:
                    frame = task.frames.popleft()
                    self._cv.notify_all()
                    return frame
                if task.state == "done":
                    return None
                if task.state == "failed":
                    raise NodeError(task.node, task.error)
                self._cv.wait(0.5)

    def _regrant(self, task: _Task) -> None:
        """Ask ``task``'s node for its reply again (it keeps it until the round ends)."""
        with self._cv:
            conn = task.conn
            if conn is None or not conn.alive or self._conns.get(conn.name) is not conn:
                raise NodeError(task.node, "disconnected before its reply could be sent again")
            if task.state != "done" or conn.task not in (None, task):
                raise ProtocolError(f"task {task.id} cannot be replayed in state {task.state}")
            task.state, task.error, task.received = "receiving", "", 0
            task.frames, task.receiver = deque(), None
            task.granted = task.progress = time.monotonic()
            conn.task = task
            conn.outbox.put(control(GRANT, {"task": task.id}))

    def _cancel(self, conn: _Conn, task: _Task) -> None:
        conn.cancelled.add(task.id)
        if conn.alive:
            conn.outbox.put(control(CANCEL, {"task": task.id}))

    def _drop(self, conn: _Conn, reason: str, status: str = "UNAVAILABLE") -> None:
        """Disconnect ``conn`` (lock held): its task fails with ``reason``."""
        if conn.alive:
            conn.alive = False
            conn.outbox.put((status, reason))
            log.warning("node %r disconnected: %s", conn.name, reason)
        if conn.task is not None:
            conn.task.fail(f"disconnected: {reason}")
        if self._conns.get(conn.name) is conn:
            del self._conns[conn.name]
        self._cv.notify_all()

    def _lost(self, conn: _Conn, reason: str) -> None:
        with self._cv:
            self._drop(conn, reason)

    def _watch(self) -> None:
        """Drop nodes that stopped sending heartbeats; fail replies that stopped arriving."""
        while not self._closing:
            time.sleep(min(1.0, self.heartbeat_s / 2))
            now = time.monotonic()
            self._reload_credentials()
            with self._cv:
                for conn in list(self._conns.values()):
                    silent = now - conn.last_seen
                    if silent > self.heartbeat_timeout:
                        self._drop(conn, f"no heartbeat for {silent:.1f} s", "DEADLINE_EXCEEDED")
                    elif conn.task is not None and conn.task.state == "receiving":
                        self._check_reply(conn, conn.task, now)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = self._credentials_file.stat() if self._credentials_file else None
        except OSError:
            return None
        return None if info is None else (info.st_mtime_ns, info.st_size)

    def _reload_credentials(self) -> None:
        """Read the credentials file again if it changed (``fedplug certs node/remove``), and
        drop the connections whose credential it no longer holds."""
        stamp = self._stamp()
        if self._credentials_file is None or stamp is None or stamp == self._credentials_stamp:
            return
        try:
            credentials = self._load_credentials(self._credentials_file)
        except FedplugError as exc:  # mid-write or broken: keep the last good credentials
            log.warning("credentials file %s not reloaded: %s", self._credentials_file, exc)
            return
        self._credentials_stamp = stamp
        with self._cv:
            self.credentials = credentials
            for conn in list(self._conns.values()):
                if credentials.get(conn.name) != conn.credential:
                    self._drop(
                        conn,
                        f"its credential was revoked or replaced in {self._credentials_file}",
                        "PERMISSION_DENIED",
                    )
        log.info("credentials reloaded from %s", self._credentials_file)

    def _check_reply(self, conn: _Conn, task: _Task, now: float) -> None:
        """Fail a granted reply (lock held) that stalls while the researcher waits for its next
        frame, or that takes longer than ``request_timeout`` to arrive whole."""
        waiting = task.frames is None or len(task.frames) < STREAM_FRAMES  # else: our turn
        reason = ""
        if waiting and now - task.progress > self.stall_timeout:
            reason = (
                f"stalled: no reply data for {now - task.progress:.1f} s after its reply was "
                f"granted ({task.received if task.frames is not None else 'part'} of "
                f"{task.size} bytes arrived; stall_timeout={self.stall_timeout:g} s)"
            )
        elif self.request_timeout is not None and now - task.granted > self.request_timeout:
            reason = (
                f"its reply did not arrive whole within request_timeout="
                f"{self.request_timeout:g} s of being granted"
            )
        if reason:
            self._cancel(conn, task)
            task.fail(reason)
            self._cv.notify_all()

    # -- the Transport protocol -----------------------------------------------------------------
    def node_tags(self) -> dict[str, list[list[str]]]:
        with self._cv:
            return {name: conn.tags for name, conn in sorted(self._conns.items())}

    def connected(self) -> list[dict[str, Any]]:
        """The connected nodes: name, peer address, dataset tags, seconds connected."""
        with self._cv:
            return [
                {
                    "name": c.name,
                    "peer": c.peer,
                    "tags": c.tags,
                    "connected_s": round(time.time() - c.connected, 1),
                }
                for c in sorted(self._conns.values(), key=lambda c: c.name)
            ]

    def wait_for_nodes(
        self,
        tags: list[str],
        count: int | None = None,
        names: Iterable[str] | None = None,
        timeout: float = 120.0,
        on_change: Callable[[list[str], int], None] | None = None,
    ) -> list[str]:
        """Block until ``count`` nodes (or all of ``names``) with a dataset carrying ``tags``
        are connected; return their names. A :class:`ConfigError` after ``timeout`` seconds
        lists the connected nodes with their tags and the refused attempts.

        ``on_change(connected, needed)`` is called (outside the transport's lock) at once and
        whenever the nodes that count change: ``connected`` are their names, ``needed`` how
        many are awaited (e.g. to print "waiting for 3 nodes: 1 connected")."""
        wanted = set(names or ())
        count = count if count is not None else max(len(wanted), 1)
        needed = len(wanted) if wanted else count
        deadline = time.monotonic() + timeout
        reported: list[str] | None = None
        while True:
            with self._cv:
                matching = [
                    name
                    for name, conn in sorted(self._conns.items())
                    if any(set(tags) <= set(t) for t in conn.tags)
                ]
                ready = wanted <= set(matching) if wanted else len(matching) >= count
                counted = [name for name in matching if name in wanted] if wanted else matching
                left = deadline - time.monotonic()
                if counted == reported or on_change is None:
                    if ready:
                        return sorted(wanted) if wanted else matching
                    if left <= 0:
                        break
                    self._cv.wait(min(left, 1.0))
                    continue
            reported = counted
            on_change(counted, needed)  # then look again: the answer may have changed meanwhile
        with self._cv:
            listing = {name: conn.tags for name, conn in sorted(self._conns.items())} or "none"
            refused = f"; refused connections: {self.refused}" if self.refused else ""
        need = f"nodes {sorted(wanted)}" if wanted else f"{count} node(s)"
        raise ConfigError(
            f"waited {timeout:g} s for {need} with a dataset tagged {tags} on "
            f"{self.address} (port {self.port}); connected nodes and their dataset tags: "
            f"{listing}{refused}"
        )

    streams_replies = True  # dispatch(..., streams=True) yields ReplyStreams

    def dispatch(
        self, payload: bytes | list[Any], nodes: list[str], streams: bool = False
    ) -> Iterator[tuple[str, bytes | memoryview | ReplyStream | BaseException]]:
        """Send ``payload`` to ``nodes``; yield each reply in ``nodes`` order, one at a time:
        the reply's buffer is released when the caller asks for the next one.

        With ``streams``, each reply is a :class:`ReplyStream` to read while it arrives; it can
        be replayed until the dispatch ends."""
        parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        size = sum(memoryview(p).nbytes for p in parts)
        self._reply_limit = self.max_reply_bytes or max(64 << 20, 2 * size + (1 << 20))
        tasks: list[_Task] = []
        with self._cv:
            for name in nodes:
                conn = self._conns.get(name)
                task = _Task(next(self._task_ids), name, conn)
                tasks.append(task)
                if conn is None:
                    task.fail("not connected")
                    continue
                if conn.task is not None:  # a previous dispatch left early: forget its task
                    self._cancel(conn, conn.task)
                    conn.task.fail("superseded")
                conn.task = task
                conn.outbox.put(control(TASK, {"task": task.id, "size": size}))
                conn.outbox.put(self._sending(task, parts))
        try:
            for position, task in enumerate(tasks):
                self._await(task, tasks[position + 1 :], streams)
                if task.state == "failed":
                    reply: Any = NodeError(task.node, task.error)
                elif streams:
                    buffered = task.receiver.message() if task.receiver is not None else None
                    reply = ReplyStream(self, task, buffered)
                else:
                    reply = task.receiver.message()
                task.receiver = None
                if task.frames is None:
                    self._release(task)
                yield task.node, reply
                del reply
        finally:
            with self._cv:
                for task in tasks:
                    if task.conn is not None and task.state != "failed":
                        self._cancel(task.conn, task)  # the node lets go of its reply
                    task.fail("the round stopped before this reply was needed")
                    self._release(task)

    def _sending(self, task: _Task, parts: list[Any]) -> Iterator[bytes]:
        # A node that answers before its request is complete refused it (from its header): the
        # rest would be dropped on arrival, so it is not sent; nor once the task failed.
        yield from data_frames(task.id, parts, self.chunk_bytes, lambda: task.state != "sending")
        with self._cv:
            if task.state == "sending":
                task.state, task.started = "running", time.monotonic()

    def _release(self, task: _Task) -> None:
        conn = task.conn
        if conn is not None and conn.task is task:
            conn.task = None

    def _await(self, task: _Task, later: list[_Task], streams: bool = False) -> None:
        """Wait for ``task`` to finish (with ``streams``: to start sending its reply), granting
        replies: ``task``'s at once, later ones while they fit in ``early_reply_bytes``."""
        with self._cv:
            while task.state not in ("done", "failed"):
                if task.state == "ready":
                    self._grant(task, streams)
                    if streams:
                        return
                held = sum(t.size for t in later if t.state in ("receiving", "done"))
                for other in later:
                    if other.state == "ready" and held + other.size <= self.early_reply_bytes:
                        self._grant(other)
                        held += other.size
                if self.request_timeout is not None and task.state in ("running", "ready"):
                    waited = time.monotonic() - task.started
                    if waited > self.request_timeout:
                        if task.conn is not None:
                            self._cancel(task.conn, task)
                        task.fail(f"no reply within request_timeout={self.request_timeout:g} s")
                        break
                self._cv.wait(0.5)

    def _grant(self, task: _Task, streams: bool = False) -> None:
        task.state = "receiving"
        task.granted = task.progress = time.monotonic()
        if streams:
            task.frames, task.received = deque(), 0
        else:
            task.receiver = Receiver(task.id, task.size)
        task.conn.outbox.put(control(GRANT, {"task": task.id}))

    def close(self) -> None:
        """Stop serving; connected nodes see the stream end and keep trying to reconnect."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            for conn in list(self._conns.values()):
                conn.alive = False
                conn.outbox.put(None)
            self._conns.clear()
        self._server.stop(grace=2).wait()

    def __enter__(self) -> GrpcTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GrpcTransport({self.address!r}, port={self.port}, tls={self.tls}, "
            f"nodes={sorted(self._conns)})"
        )


class ReplyStream:
    """A node's reply while it arrives (``GrpcTransport.dispatch(..., streams=True)``): iterate
    to get its bytes in order, in pieces (DATA frames, ``size`` bytes in all); iteration raises
    :class:`NodeError` if the node fails meanwhile. A piece is valid until the next is taken."""

    def __init__(self, transport: GrpcTransport, task: _Task, buffered: Any = None) -> None:
        self.node, self.size = task.node, task.size
        self._transport, self._task, self._buffered = transport, task, buffered
        self._used = False

    def __iter__(self) -> Iterator[memoryview]:
        if self._used:
            raise ProtocolError("a ReplyStream is read once; replay() reads the reply again")
        self._used = True
        buffered, self._buffered = self._buffered, None
        if buffered is not None:  # granted early, already assembled
            yield buffered
            return
        transport, task = self._transport, self._task
        complete = False
        try:
            while (frame := transport._next_frame(task)) is not None:
                yield memoryview(frame)[_DATA_HEAD.size :]
                del frame
            complete = True
        finally:
            with transport._cv:
                if not complete and task.state not in ("done", "failed"):
                    if task.conn is not None:  # abandoned: no more of its frames
                        transport._cancel(task.conn, task)
                    task.fail("its reply was refused while it arrived")
                    transport._cv.notify_all()
                task.frames = None
                transport._release(task)

    def replay(self) -> ReplyStream:
        """The same reply again, sent anew by its node (within the same dispatch)."""
        self._buffered = None
        self._transport._regrant(self._task)
        return ReplyStream(self._transport, self._task)

    def __repr__(self) -> str:
        return f"ReplyStream(node={self.node!r}, size={self.size})"


def _status(exc: Any) -> str:
    code = getattr(exc, "code", lambda: None)()
    details = getattr(exc, "details", lambda: None)()
    return f"{getattr(code, 'name', code)}: {details}" if details else str(code)


# -- node side ----------------------------------------------------------------------------------


class _Fatal(Exception):
    """The researcher refused this node for good (credential, version): do not retry."""


class NodeClient:
    """Connects a :class:`~fedplug.Node` to a researcher's :class:`GrpcTransport` and serves its
    requests until stopped, reconnecting with back-off whenever the connection ends.

    :param node: the node that handles requests.
    :param address: the researcher's ``host:port``.
    :param token: this node's credential ("" for none: a node known by its certificate).
    :param ca_cert: PEM bytes of the CA that signed the researcher's certificate; None connects
        in plaintext (loopback only).
    :param client_cert: (certificate chain PEM, key PEM) this node presents in the TLS
        handshake, for a researcher with ``node_auth="certificate"``
        (:func:`fedplug_grpc.certs.node_tls` reads and checks them).
    :param max_message_bytes: largest request this node accepts.
    """

    def __init__(
        self,
        node: Any,
        address: str,
        token: str = "",
        *,
        ca_cert: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        heartbeat_s: float = 5.0,
        reconnect_s: float = 2.0,
        max_reconnect_s: float = 30.0,
        max_message_bytes: int = 8 << 30,
        chunk_bytes: int = CHUNK_BYTES,
        server_name: str | None = None,
    ) -> None:
        if ca_cert is None and not is_loopback(address):
            raise ConfigError(
                f"a plaintext connection to {address} would expose models and the node's token; "
                "give the researcher's CA certificate (ca_cert in node.toml)"
            )
        if client_cert is not None and ca_cert is None:
            raise ConfigError("a client certificate needs TLS: give ca_cert as well")
        self.node, self.address, self.token = node, address, token
        self.ca_cert, self.client_cert = ca_cert, client_cert
        self.heartbeat_s = heartbeat_s
        self.reconnect_s, self.max_reconnect_s = reconnect_s, max_reconnect_s
        self.max_message_bytes = max_message_bytes
        self.chunk_bytes = _check_chunk(chunk_bytes)
        self.server_name = server_name
        self.stop_event = threading.Event()
        self._call: Any = None
        self.sessions = 0  # connections made, for tests and logs

    def stop(self) -> None:
        self.stop_event.set()
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> int:
        """Serve until :meth:`stop`; 0 when stopped, 3 when the researcher refused this node."""
        delay = self.reconnect_s
        while not self.stop_event.is_set():
            start = time.monotonic()
            try:
                reason = self._session()
            except _Fatal as exc:
                log.error(
                    "node %r refused by the researcher at %s: %s",
                    self.node.name,
                    self.address,
                    inert(exc),
                )
                return 3
            if self.stop_event.is_set():
                break
            if time.monotonic() - start > 10:
                delay = self.reconnect_s
            log.warning(
                "connection to %s ended (%s); retrying in %.1f s",
                self.address,
                inert(reason),
                delay,
            )
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.max_reconnect_s)
        return 0

    def _channel(self) -> Any:
        import grpc

        options = channel_options()
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.ca_cert is None:
            return grpc.insecure_channel(self.address, options=options)
        cert, key = self.client_cert or (None, None)
        creds = grpc.ssl_channel_credentials(self.ca_cert, private_key=key, certificate_chain=cert)
        return grpc.secure_channel(self.address, creds, options=options)

    def _session(self) -> str:
        """One connection: returns why it ended; raises _Fatal when retrying is pointless."""
        import grpc

        outbox: queue.SimpleQueue = queue.SimpleQueue()
        ended = threading.Event()
        state = _NodeState(self, outbox)
        hello = {"name": self.node.name, "tags": self.node.tags(), "wire": msg.VERSION}
        outbox.put(control(HELLO, hello))

        def outgoing() -> Iterator[bytes]:
            while True:
                item = outbox.get()
                if item is None:
                    return
                if isinstance(item, bytes):
                    yield item
                else:
                    yield from item

        channel = self._channel()
        metadata = ((_TOKEN_HEADER, f"Bearer {self.token}"),) if self.token else ()
        call = channel.stream_stream(METHOD)(outgoing(), metadata=metadata)
        self._call = call
        beat = threading.Thread(
            target=state.heartbeats, args=(ended, call), daemon=True, name="fedplug-heartbeat"
        )
        beat.start()
        try:
            for frame in call:
                state.last_seen = time.monotonic()
                state.on_frame(frame)
            return "the researcher closed the stream"
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.FAILED_PRECONDITION,
            ) or (code == grpc.StatusCode.INVALID_ARGUMENT and "HELLO" in (exc.details() or "")):
                raise _Fatal(_status(exc)) from None
            return _status(exc)
        except ProtocolError as exc:
            return f"protocol error from the researcher: {exc}"
        finally:
            ended.set()
            state.wake.set()
            state.close()
            outbox.put(None)
            self._call = None
            call.cancel()
            channel.close()


class _NodeState:
    """What one connection of a node is doing: the request being received, replies waiting for
    their grant, and the heartbeat."""

    def __init__(self, client: NodeClient, outbox: queue.SimpleQueue) -> None:
        self.client, self.outbox = client, outbox
        self.heartbeat_s = client.heartbeat_s
        self.last_seen = time.monotonic()
        self.receiver: Inbound | None = None
        self.refused: set[int] = set()
        self.replies: dict[int, list[Any]] = {}  # each reply's buffers
        self.cancelled: set[int] = set()
        self.busy = ""
        self.lock = threading.Lock()
        self.wake = threading.Event()  # a new heartbeat period applies at once

    def on_frame(self, frame: bytes) -> None:
        kind = frame_kind(frame)
        if kind == DATA:
            if self.receiver is None:
                if len(frame) >= 9 and struct.unpack_from("<Q", frame, 1)[0] in self.refused:
                    return
                raise ProtocolError("DATA frame for no announced task")
            if self.receiver.add(frame):
                self.receiver = None
        elif kind == TASK:
            body = parse_control(frame, kind, {"task": int, "size": int})
            task, size = body["task"], body["size"]
            if not 0 < size <= self.client.max_message_bytes:
                self.refused.add(task)
                self.outbox.put(
                    control(
                        REFUSED,
                        {
                            "task": task,
                            "message": f"refuses a request of {size} bytes; it accepts up to "
                            f"{self.client.max_message_bytes} "
                            "bytes ([limits] max_message_mb in its node.toml)",
                        },
                    )
                )
                return
            with self.lock:  # a new round: replies of earlier ones are not wanted any more
                self.cancelled.update(self.replies)  # nor sent on: the plan will change
                self.replies.clear()
            if self.receiver is not None:  # never completed: its reader must not wait
                self.receiver.abort(f"task {task} replaced the request")
            self.receiver = Inbound(task, size, on_wait=self._heard)  # served while it arrives
            self._start(self.work, self.receiver)
        elif kind == GRANT:
            task = parse_control(frame, kind, {"task": int})["task"]
            with self.lock:  # kept until CANCEL: the researcher may ask for it again
                reply = self.replies.get(task)
            if reply is not None:
                self.outbox.put(data_frames(task, reply, self.client.chunk_bytes, self._cut(task)))
        elif kind == CANCEL:
            task = parse_control(frame, kind, {"task": int})["task"]
            with self.lock:
                self.cancelled.add(task)
                self.replies.pop(task, None)
            if self.receiver is not None and self.receiver.task == task:
                self.receiver.abort("the researcher cancelled the request")
                self.receiver = None
                self.refused.add(task)
        elif kind == WELCOME:
            body = parse_control(frame, kind, {})
            if isinstance(body.get("heartbeat_s"), (int, float)) and body["heartbeat_s"] > 0:
                self.heartbeat_s = float(body["heartbeat_s"])  # the researcher's, for all nodes
                self.wake.set()
            self.client.sessions += 1
            log.info("node %r connected to %s", self.client.node.name, self.client.address)
        elif kind != HEARTBEAT:
            raise ProtocolError(f"unexpected {_KIND_NAMES[kind]} frame from the researcher")

    def _cut(self, task: int) -> Any:
        return lambda: task in self.cancelled

    def _heard(self) -> None:
        # the reader waits on this node's decoding, not on the researcher: not a silence
        self.last_seen = time.monotonic()

    @staticmethod
    def _start(target: Any, inbound: Inbound) -> None:
        threading.Thread(target=target, args=(inbound,), daemon=True, name="fedplug-work").start()

    def work(self, inbound: Inbound) -> None:
        """Run one request on the node while it arrives (off the reading thread). The reply is
        sent from the plan's own parameters (Node.serve), not from a copy: the node serves no
        other request until the researcher ends the round (CANCEL) or sends the next one
        (TASK), and both stop this reply's frames first."""
        self.busy = "working"
        try:  # never raises on bad input
            reply = self.client.node.serve(inbound, inbound.size)
        finally:
            self.busy = ""
        self._announce(inbound.task, reply)

    def _announce(self, task: int, reply: Any) -> None:
        parts = reply if isinstance(reply, list) else [reply]
        with self.lock:
            if task in self.cancelled:
                return
            self.replies[task] = parts
        size = sum(memoryview(part).nbytes for part in parts)
        self.outbox.put(control(READY, {"task": task, "size": size}))

    def heartbeats(self, ended: threading.Event, call: Any) -> None:
        """Send a heartbeat every ``heartbeat_s``; end the call if the researcher went silent."""
        while True:
            self.wake.wait(self.heartbeat_s)
            self.wake.clear()
            if ended.is_set():
                return
            self.outbox.put(control(HEARTBEAT, {"busy": self.busy}))
            silent = time.monotonic() - self.last_seen
            if silent > 3 * self.heartbeat_s + 2:
                log.warning("no frame from the researcher for %.1f s; reconnecting", silent)
                call.cancel()
                return

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.abort("the connection to the researcher was lost")
        self.receiver = None
        with self.lock:
            self.replies.clear()


def _watch_parent(pid: int, client: NodeClient) -> None:
    while not client.stop_event.wait(1.0):
        if os.getppid() != pid:
            log.info("the process that started this node (pid %d) is gone; stopping", pid)
            client.stop()
            return


def serve_node(config: Any) -> int:
    """``fedplug node start``: load the node's datasets from its registry and serve the
    researcher named in ``config`` (a :class:`fedplug_grpc.nodeconfig.NodeConfig`) until SIGTERM or
    Ctrl-C. Returns the process exit code."""
    from fedplug.node import Node
    from fedplug.plugins import get_plugin_manager
    from fedplug_grpc.certs import node_tls, read_pem
    from fedplug_grpc.nodestore import NodeStore

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    tune_malloc()
    pm = get_plugin_manager()
    if config.require_secagg and not len(pm.secagg_schemes):
        # a setting that nothing would enforce: refuse to start rather than train in clear
        raise ConfigError(
            f"{config.path}: require_secagg = true, but no secure-aggregation plugin is "
            "installed on this node (or it is disabled), so nothing would enforce it; install "
            "fedplug-secagg (pip install fedplug-secagg) or set require_secagg = false"
        )
    store = NodeStore(
        config.database,
        max_pending_plans=config.max_pending_plans,
        max_pending_mb=config.max_pending_mb,
    )
    datasets = store.load_datasets(pm)
    if not datasets:
        log.warning(
            "node %r has no dataset; add one with `fedplug node dataset add --config %s`",
            config.name,
            config.path,
        )
    node = Node(
        config.name,
        datasets,
        approval=config.approval,
        plugin_manager=pm,
        settings={"require_secagg": config.require_secagg},
        limits=config.limits,
        plan_store=store,
        approve_hint=f"fedplug node plan approve {{sha256}} --config {config.path}",
    )
    client = NodeClient(
        node,
        config.address,
        config.token,
        ca_cert=None if config.insecure else read_pem(config.ca_cert),
        client_cert=None
        if config.cert_file is None or config.key_file is None
        else node_tls(config.cert_file, config.key_file),
        heartbeat_s=config.heartbeat_s,
        reconnect_s=config.reconnect_s,
        max_reconnect_s=config.max_reconnect_s,
        max_message_bytes=config.max_message_bytes,
    )

    def stop(signum: int, frame: Any) -> None:
        log.info("node %r stopping (%s)", config.name, signal.Signals(signum).name)
        client.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    parent = os.environ.get("FEDPLUG_PARENT_PID")
    if parent and parent.isdigit():  # started by `fedplug demo`: do not outlive it
        threading.Thread(
            target=_watch_parent, args=(int(parent), client), daemon=True, name="fedplug-parent"
        ).start()
    log.info(
        "node %r serving datasets %s for %s (%s)",
        config.name,
        [d.name for d in datasets],
        config.address,
        "plaintext" if config.insecure else "TLS",
    )
    try:
        code = client.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if node.busy:  # stopped mid-request: end now, not when the plan's training ends (nor abort
        # at interpreter exit under a framework's running threads)
        log.info("node %r stopped during a request; exiting now", config.name)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# -- the transport factory ----------------------------------------------------------------------


def grpc_transport(
    *,
    nodes: Any,
    tags: list[str],
    min_nodes: int,
    server: str = "0.0.0.0:50051",
    tls: str | Path | tuple[str | Path, str | Path] | list[str] | None = None,
    wait_nodes: int | list[str] | None = None,
    wait_timeout: float = 120.0,
    **options: Any,
) -> GrpcTransport:
    """The ``grpc`` transport's factory: ``Experiment(transport="grpc", transport_options={...})``.

    Starts the researcher's server at ``server`` and waits until the nodes it needs are
    connected: ``wait_nodes`` nodes (default ``min_nodes``) with a dataset carrying ``tags``, or
    the nodes named in it, for at most ``wait_timeout`` seconds (then a :class:`ConfigError`
    lists the connected nodes and their tags). ``tls`` is a certs directory or ``(cert, key)``
    paths; the other options are :class:`GrpcTransport`'s (``credentials``, ``node_auth``,
    ``client_ca``, ``request_timeout``, ``heartbeat_s``, ...)."""
    if nodes is not None:
        raise ConfigError(
            "with transport='grpc', nodes connect to the server: give transport_options="
            "{'wait_nodes': ...} (a count or node names) instead of nodes"
        )
    known = set(inspect.signature(GrpcTransport.__init__).parameters) - {"self", "address", "tls"}
    unknown = sorted(set(options) - known)
    if unknown:
        keys = sorted({"server", "tls", "wait_nodes", "wait_timeout", *known})
        raise ConfigError(f"unknown grpc transport option(s) {unknown}; known: {', '.join(keys)}")
    if isinstance(tls, list):  # as a checkpoint stores a (cert, key) pair
        tls = tuple(tls)
    transport = GrpcTransport(server, tls=tls, **options)

    def joined(connected: list[str], needed: int) -> None:
        log.info(
            "waiting on %s for %d node(s) with a dataset tagged %s: %d connected %s",
            transport.address,
            needed,
            tags,
            len(connected),
            connected,
        )

    try:
        if isinstance(wait_nodes, (list, tuple)):
            transport.wait_for_nodes(tags, names=wait_nodes, timeout=wait_timeout, on_change=joined)
        else:
            count = wait_nodes if wait_nodes is not None else min_nodes
            transport.wait_for_nodes(tags, count=count, timeout=wait_timeout, on_change=joined)
    except BaseException:
        transport.close()
        raise
    return transport
