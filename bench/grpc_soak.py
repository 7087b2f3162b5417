"""Fuzz and soak the gRPC transport with real processes: the long runs CI leaves out.

Usage: ``python bench/grpc_soak.py [--fuzz N] [--rounds R] [--quick] [--only SECTION]``

1. **Researcher fuzz.** ``N`` hostile clients against a researcher that serves 3 real node
   processes (the demo's hospitals, plaintext on loopback: any client is admitted, so every
   case reaches the frame protocol). Each says HELLO, then sends one hostile sequence: random
   bytes, a control frame of each kind a node may send with a random or mistyped body, kinds a
   node never sends, DATA for no task, a short DATA frame, READY for an unknown task. Each must
   end that client's stream with ``INVALID_ARGUMENT: protocol error ...`` within 10 s, except a
   HEARTBEAT, which any body may carry and which leaves the stream open. Every 25 cases, a
   FedAvg round over the real nodes (``on_node_failure="fail"``) must still succeed.
2. **Node fuzz.** A fake researcher (a gRPC server speaking the frame protocol) serves a real
   ``fedplug node start`` process: each time the node connects it gets WELCOME, then one hostile
   case: random frames; a TASK then DATA of random bytes (the node must answer READY, and the
   granted reply must be an ErrorReply); a TASK cut off by CANCEL; a TASK cut off by the
   connection ending; DATA for no task; a GRANT or CANCEL for unknown tasks. The node process must
   outlive every case and connect again; at the end a valid training request gets a TrainReply.
3. **Soak.** ``R`` rounds of the demo workload over gRPC with TLS (3 node processes, skip policy,
   at least 2 nodes per round); every 10 rounds one node process is killed (SIGKILL) and started
   again. Each round records its time, the researcher's RSS and the nodes' RSS. Reports the
   completed and degraded rounds and the RSS drift (median of the last tenth of the rounds
   against the second tenth): a leak shows as a drift that grows with ``R``.
4. **Hardening** (issue 16's items 2-7): a node that stalls after READY; headers of empty
   containers (1, 4, 16 MiB, decoded here, and a 16 MiB error reply from a node); a reply of
   shape (0, 2**63); float64-max parameters from one node; 60 silent streams with one valid
   credential while a node restarts; a ~220-byte request asking a node for a 1.5 GiB plan.
   Each must be refused or survived as the issue asks, with the figures printed.

Exit status 0 when every check held, 1 otherwise. JSON in ``bench/results/grpc_soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fedplug import Experiment
from fedplug import messages as msg
from fedplug_demo.demo import TAGS, demo_node_specs
from fedplug_grpc import transport as wire
from fedplug_grpc.deploy import local_deployment, prepare_nodes

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "grpc_soak.json"
NODES = 3
KILL_EVERY = 10
NODE_KINDS = (wire.HELLO, wire.READY, wire.REFUSED, wire.DATA, wire.HEARTBEAT)


def _experiment(transport: Any, **options: Any) -> Experiment:
    return Experiment(
        nodes=transport,
        tags=TAGS,
        training_plan="numpy-logreg",
        model_args={"n_features": 30},
        training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
        seed=0,
        progress=False,
        **options,
    )


def _rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- 1. researcher fuzz -------------------------------------------------------------------------
def _random_body(rng: random.Random) -> Any:
    choices = [
        lambda: {},
        lambda: {"task": rng.choice([-1, 2**70, "7", None, 1.5, True])},
        lambda: {"task": rng.randrange(10**6), "size": rng.choice([-5, 0, 2**62, "big"])},
        lambda: [1, 2, 3],
        lambda: rng.randbytes(rng.randrange(20)),
        lambda: {rng.randbytes(3): rng.random()},
    ]
    return rng.choice(choices)()


def hostile_node_frames(rng: random.Random) -> tuple[str, list[bytes]]:
    """One hostile sequence a client sends after its HELLO, and what it is."""
    case = rng.choice(["random", "control", "foreign kind", "data", "short data", "heartbeat"])
    if case == "random":
        frame = rng.randbytes(rng.randrange(1, 80))
        if frame[0] == wire.HEARTBEAT:
            frame = b"\x00" + frame[1:]
        return case, [frame]
    if case == "control":
        kind = rng.choice([wire.READY, wire.REFUSED])
        try:
            body = msgpack.packb(_random_body(rng), use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            body = b"\xc1"  # never valid msgpack
        return case, [bytes([kind]) + body]
    if case == "foreign kind":
        kind = rng.choice([wire.HELLO, wire.WELCOME, wire.TASK, wire.GRANT, wire.CANCEL])
        return case, [wire.control(kind, {"task": 1, "size": 1})]
    if case == "data":
        head = wire._DATA_HEAD.pack(wire.DATA, rng.randrange(10**6), 0)
        return case, [head + rng.randbytes(rng.randrange(100))]
    if case == "short data":
        return case, [bytes([wire.DATA]) + rng.randbytes(rng.randrange(16))]
    return case, [bytes([wire.HEARTBEAT]) + rng.randbytes(rng.randrange(30))]


def _raw_client(address: str, name: str, frames: list[bytes], timeout: float) -> tuple[str, float]:
    """Send HELLO and ``frames``; the status that ended the stream (or "open") and how long the
    researcher took."""
    import grpc

    hello = wire.control(wire.HELLO, {"name": name, "tags": [["fuzz"]], "wire": msg.VERSION})
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        yield hello
        yield from frames
        hold.wait(timeout + 5)  # this side never ends the stream first

    start = time.perf_counter()
    with grpc.insecure_channel(address, options=wire.channel_options()) as channel:
        call = channel.stream_stream(wire.METHOD)(requests(), timeout=timeout)
        try:
            for _ in call:
                pass
            outcome = "closed cleanly"
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome = "open"
            else:
                outcome = f"{exc.code().name}: {(exc.details() or '')[:40]}"
        finally:
            hold.set()
    return outcome, time.perf_counter() - start


def researcher_fuzz(cases: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    outcomes: dict[str, dict[str, int]] = {}
    failures, rounds_ok, slowest = [], 0, 0.0
    specs = demo_node_specs(NODES, 0, workdir)
    with local_deployment(workdir, specs, tls=False) as deployment:
        address = f"127.0.0.1:{deployment.transport.port}"
        exp = _experiment(deployment.transport, on_node_failure="fail")
        for i in range(cases):
            case, frames = hostile_node_frames(rng)
            heartbeat = case == "heartbeat"
            outcome, seconds = _raw_client(address, f"fuzz-{i}", frames, 2.0 if heartbeat else 10.0)
            slowest = max(slowest, 0.0 if heartbeat else seconds)
            short = outcome.split(" ...")[0] if outcome.startswith("INVALID") else outcome
            outcomes.setdefault(case, {}).setdefault(short.split(":")[0], 0)
            outcomes[case][short.split(":")[0]] += 1
            expected = "open" if heartbeat else "INVALID_ARGUMENT: protocol error"
            if not outcome.startswith(expected):
                failures.append(f"case {i} ({case}, {frames[0][:20]!r}): {outcome}")
            if (i + 1) % 25 == 0 or i == cases - 1:
                try:
                    summary = exp.run_once()
                    rounds_ok += len(summary["nodes"]) == NODES
                except Exception as exc:  # reported, and the bench fails
                    failures.append(f"round after case {i}: {type(exc).__name__}: {exc}")
        exp.close()
    print(f"  researcher fuzz: {cases} cases, {len(failures)} unexpected", file=sys.stderr)
    return {"cases": cases, "outcomes": outcomes, "failures": failures,
            "rounds_ok": rounds_ok, "slowest_refusal_s": slowest}  # fmt: skip


# -- 2. node fuzz -------------------------------------------------------------------------------
class FakeResearcher:
    """A gRPC server speaking the frame protocol to a node: on each connection, WELCOME, then
    the next scripted case (a function of the frames the node sends)."""

    def __init__(self) -> None:
        import grpc

        self.cases: queue.SimpleQueue = queue.SimpleQueue()
        self.connections = 0
        handler = grpc.method_handlers_generic_handler(
            "fedplug.v1.Federation",
            {"Connect": grpc.stream_stream_rpc_method_handler(self._connect)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4), options=wire.channel_options())
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _connect(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        hello = next(requests)

        def read() -> None:
            try:
                for frame in requests:
                    if frame[0] != wire.HEARTBEAT:
                        inbox.put(frame)
            except Exception:  # the node hung up: the case decides
                pass
            inbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.connections += 1
        yield wire.control(wire.WELCOME, {"heartbeat_s": 5.0})
        script, done = self.cases.get()
        try:
            yield from script(inbox, hello)
        finally:
            done.set()

    def run(self, script: Any, timeout: float = 30.0) -> bool:
        """Serve ``script`` to the node's next connection; True once it ended."""
        done = threading.Event()
        self.cases.put((script, done))
        return done.wait(timeout)


def _frame_of(inbox: queue.SimpleQueue, kind: int, timeout: float = 10.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            return None
        if frame is None or frame[0] == kind:
            return frame
    return None


def _ask_script(task: int, payload: bytes, replies: dict[int, Any], ready_timeout: float = 10.0):
    """A fake researcher's script: send ``payload`` as task ``task``, grant the reply and keep
    it (decoded, or None when cut short) in ``replies``."""

    def script(inbox: queue.SimpleQueue, hello: bytes) -> Iterator[bytes]:
        yield wire.control(wire.TASK, {"task": task, "size": len(payload)})
        yield from wire.data_frames(task, [payload], 4096)
        ready = _frame_of(inbox, wire.READY, ready_timeout)
        if ready is None:
            return  # no reply: the case reports it
        size = wire.parse_control(ready, wire.READY, {"task": int, "size": int})["size"]
        yield wire.control(wire.GRANT, {"task": task})  # the rest runs once it is sent
        parts, got = [], 0
        while got < size and (frame := _frame_of(inbox, wire.DATA)) is not None:
            parts.append(frame[wire._DATA_HEAD.size :])
            got += len(parts[-1])
        replies[task] = msg.decode(b"".join(parts)) if got == size else None
        yield wire.control(wire.CANCEL, {"task": task})

    return script


def node_fuzz(cases: int, workdir: Path, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    fake = FakeResearcher()
    [spec] = demo_node_specs(
        1, 0, workdir, researcher={"reconnect_s": 0.05, "max_reconnect_s": 0.2}
    )
    deployment = prepare_nodes(workdir, [spec], f"127.0.0.1:{fake.port}", None)
    failures, kinds, replies = [], {}, {}
    request = msg.encode(
        msg.TrainRequest("fuzz", 0, msg.PlanRef(name="numpy-logreg"), {"n_features": 30},
                         {"batch_size": 16, "epochs": 1}, TAGS,
                         {"weight": np.zeros((30, 2)), "bias": np.zeros(2)})
    )  # fmt: skip

    def send(task: int, payload: bytes, upto: int | None = None) -> Iterator[bytes]:
        yield wire.control(wire.TASK, {"task": task, "size": len(payload)})
        frames = list(wire.data_frames(task, [payload], 4096))
        yield from frames[:upto]

    def ask(task: int, payload: bytes) -> Any:
        """Send ``payload`` as a request, grant the reply and keep it in ``replies``."""
        return _ask_script(task, payload, replies)

    try:
        deployment.start_all()
        for i in range(cases):
            case = rng.choice(["random", "garbage request", "cancelled", "cut", "data", "grant"])
            kinds[case] = kinds.get(case, 0) + 1
            task = 1000 + i
            if case == "random":
                frames = [rng.randbytes(rng.randrange(1, 60)) for _ in range(rng.randrange(1, 4))]
                script = lambda inbox, hello, f=frames: iter(f)  # noqa: E731
            elif case == "garbage request":
                script = ask(task, rng.randbytes(rng.randrange(4, 20000)))
            elif case == "cancelled":
                cut = send(task, request, upto=1)
                script = lambda inbox, hello, c=cut, t=task: iter(  # noqa: E731
                    [*c, wire.control(wire.CANCEL, {"task": t})]
                )
            elif case == "cut":
                cut = list(send(task, request, upto=1))
                script = lambda inbox, hello, c=cut: iter(c)  # noqa: E731
            elif case == "data":
                frame = wire._DATA_HEAD.pack(wire.DATA, task, 0) + rng.randbytes(50)
                script = lambda inbox, hello, f=frame: iter([f])  # noqa: E731
            else:
                kind = rng.choice([wire.GRANT, wire.CANCEL])
                script = lambda inbox, hello, k=kind, t=task: iter(  # noqa: E731
                    [wire.control(k, {"task": t})]
                )
            if not fake.run(script):
                failures.append(f"case {i} ({case}): the node did not connect within 30 s")
            if case == "garbage request" and not isinstance(replies.get(task), msg.ErrorReply):
                failures.append(f"case {i}: a garbage request got {replies.get(task)!r:.80}")
            if deployment.procs[spec.name].poll() is not None:
                failures.append(f"case {i} ({case}): the node process exited")
                break
        fake.run(ask(99, request))
        final = replies.get(99)
        if not isinstance(final, msg.TrainReply):
            failures.append(f"a valid request after the fuzzing got {final!r:.100}")
    finally:
        deployment.stop()
        fake.server.stop(None)
    print(f"  node fuzz: {cases} cases, {len(failures)} unexpected", file=sys.stderr)
    return {"cases": cases, "kinds": kinds, "connections": fake.connections,
            "failures": failures}  # fmt: skip


# -- 3. soak ------------------------------------------------------------------------------------
def soak(rounds: int, workdir: Path) -> dict[str, Any]:
    specs = demo_node_specs(NODES, 0, workdir)
    rows, failures = [], []
    with local_deployment(workdir, specs) as deployment:
        transport = deployment.transport
        transport.request_timeout = 60
        exp = _experiment(transport, on_node_failure="skip", min_nodes=2)
        names = [spec.name for spec in specs]
        for r in range(rounds):
            victim = None
            if r and r % KILL_EVERY == 0:
                victim = names[(r // KILL_EVERY) % NODES]
                deployment.kill(victim)
            start = time.perf_counter()
            try:
                summary = exp.run_once()
            except Exception as exc:  # reported, and the bench fails
                failures.append(f"round {r}: {type(exc).__name__}: {exc}")
                summary = {"nodes": []}
            if victim is not None:
                deployment.start(victim)
                transport.wait_for_nodes(TAGS, names=names, timeout=120)
            nodes_rss = sum(_rss_mib(proc.pid) for proc in deployment.procs.values())
            rows.append({"round_s": time.perf_counter() - start, "nodes": len(summary["nodes"]),
                         "researcher_rss_mib": _rss_mib(), "nodes_rss_mib": nodes_rss})  # fmt: skip
        exp.close()
    tenth = max(rounds // 10, 1)

    def drift(key: str) -> float:
        early = statistics.median(row[key] for row in rows[tenth : 2 * tenth] or rows)
        return statistics.median(row[key] for row in rows[-tenth:]) - early

    print(f"  soak: {rounds} rounds, {len(failures)} failed", file=sys.stderr)
    return {
        "rounds": rounds,
        "complete_rounds": sum(row["nodes"] == NODES for row in rows),
        "degraded_rounds": sum(0 < row["nodes"] < NODES for row in rows),
        "median_round_s": statistics.median(row["round_s"] for row in rows),
        "researcher_rss_drift_mib": drift("researcher_rss_mib"),
        "nodes_rss_drift_mib": drift("nodes_rss_mib"),
        "failures": failures,
        "rows": rows,
    }


# -- 4. hardening: what the attack run of issue 16 did, done again -----------------------------
class RawNode:
    """A node speaking the frame protocol by hand, over TLS with its own credential: it answers
    each request with ``answer(request bytes)`` (None: READY for a reply it never sends) and
    heartbeats meanwhile, as a broken or hostile node that keeps its connection alive."""

    def __init__(self, address: str, ca: bytes, token: str, name: str, answer: Any) -> None:
        self.address, self.ca, self.token, self.name = address, ca, token, name
        self.answer, self.outbox = answer, queue.SimpleQueue()
        self.stop, self.granted_at, self.cancelled_at = threading.Event(), 0.0, 0.0
        threading.Thread(target=self.run, daemon=True, name=f"raw-{name}").start()
        threading.Thread(target=self.beat, daemon=True).start()

    def beat(self) -> None:
        while not self.stop.wait(1.0):
            self.outbox.put(wire.control(wire.HEARTBEAT, {"busy": ""}))

    def requests(self) -> Iterator[bytes]:
        hello = {"name": self.name, "tags": [TAGS], "wire": msg.VERSION}
        yield wire.control(wire.HELLO, hello)
        while (frame := self.outbox.get()) is not None:
            yield frame

    def run(self) -> None:
        import grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
        with grpc.secure_channel(self.address, credentials, wire.channel_options()) as channel:
            call = channel.stream_stream(wire.METHOD)(
                self.requests(), metadata=(("authorization", f"Bearer {self.token}"),)
            )
            receiver, reply = None, b""
            try:
                for frame in call:
                    if frame[0] == wire.TASK:
                        body = wire.parse_control(frame, wire.TASK, {"task": int, "size": int})
                        receiver = wire.Receiver(body["task"], body["size"])
                    elif frame[0] == wire.DATA and receiver is not None and receiver.add(frame):
                        reply = self.answer(bytes(receiver.message()))
                        size = len(reply) if reply is not None else 1 << 20
                        self.outbox.put(
                            wire.control(wire.READY, {"task": receiver.task, "size": size})
                        )
                    elif frame[0] == wire.GRANT:  # the first reply's grant and cancel
                        self.granted_at = self.granted_at or time.perf_counter()
                    elif frame[0] == wire.CANCEL:
                        self.cancelled_at = self.cancelled_at or time.perf_counter()
                    if frame[0] == wire.GRANT and reply is not None:
                        for piece in wire.data_frames(receiver.task, [reply], 1 << 20):
                            self.outbox.put(piece)
            except grpc.RpcError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.outbox.put(None)


def _bomb_answer(payload: bytes) -> bytes:
    """A 16 MiB ErrorReply whose header is an array of empty maps."""
    return _empty_maps_header(16)


def _raw_node_process(address: str, ca: bytes, token: str, name: str, answer: Any,
                      stop: Any) -> None:  # fmt: skip
    """A RawNode in a process of its own, so that what it allocates is not the researcher's."""
    raw = RawNode(address, ca, token, name, answer)
    stop.wait()
    raw.close()


class _RawProcess:
    """A RawNode in a spawned process (``answer`` must be a module-level function)."""

    def __init__(self, *args: Any) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.stop, self.granted_at, self.cancelled_at = context.Event(), 0.0, 0.0
        self.process = context.Process(target=_raw_node_process, args=(*args, self.stop))
        self.process.start()

    def close(self) -> None:
        self.stop.set()
        self.process.join(30)


def _not_training(payload: bytes, name: str) -> bytes | None:
    """An ErrorReply to a request other than training (the round's evaluation), else None."""
    request = msg.decode(payload)
    if isinstance(request, msg.TrainRequest):
        return None
    return msg.encode(msg.ErrorReply(request.experiment_id, request.round_index, name,
                                     "NodeError", "this node only trains"))  # fmt: skip


def _train_reply(payload: bytes, name: str, params: Any) -> bytes:
    if (refusal := _not_training(payload, name)) is not None:
        return refusal
    request = msg.decode(payload, msg.TrainRequest)
    reply = msg.TrainReply(request.experiment_id, request.round_index, name, {}, 50, 1, 0.5, 0.0)
    reply.params = params(request.params)
    return msg.encode(reply)


def _impossible_shape(payload: bytes, name: str) -> bytes:
    """A TrainReply whose first array claims shape (0, 2**63): no element, an impossible shape."""
    if (refusal := _not_training(payload, name)) is not None:
        return refusal
    good = msg.decode(msg.encode(msg.decode(payload, msg.TrainRequest)))
    data = msg.encode(msg.TrainReply(good.experiment_id, good.round_index, name,
                                     {"weight": np.zeros(0)}, 50, 1, 0.5, 0.0))  # fmt: skip
    header, start = msg.read_header(data)
    header["body"]["params"]["weight"] = ["<f8", [0, 2**63], 0, 0]
    packed = msgpack.packb(header, use_bin_type=True)
    return len(packed).to_bytes(4, "little") + packed + bytes(data[start:])


def _empty_maps_header(mib: int) -> bytes:
    n = mib << 20
    body = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n  # an array of n empty maps
    envelope = (b"\x83" + msgpack.packb("fedplug") + msgpack.packb(msg.VERSION)
                + msgpack.packb("type") + msgpack.packb("ErrorReply")
                + msgpack.packb("body") + body)  # fmt: skip
    return len(envelope).to_bytes(4, "little") + envelope


def _decode_cost(mib: int) -> dict[str, float]:
    """Peak memory (tracemalloc) and seconds to refuse a header of empty maps of ``mib`` MiB."""
    import tracemalloc

    data = _empty_maps_header(mib)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        msg.decode_stream([data], len(data))
        refused, reason = False, ""
    except msg.MessageError as exc:
        refused, reason = True, str(exc)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / (1 << 20)
    tracemalloc.stop()
    return {"input_mib": mib, "refused": refused, "reason": reason, "peak_mib": peak,
            "seconds": seconds,
            "peak_mib_per_input_mib": peak / mib}  # fmt: skip


def _silent_stream(address: str, ca: bytes, token: str, hold_s: float) -> str:
    """A stream that never says HELLO; how it ended."""
    import grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    stop = threading.Event()

    def nothing() -> Iterator[bytes]:
        stop.wait(hold_s)
        return
        yield

    with grpc.secure_channel(address, credentials) as channel:
        call = channel.stream_stream(wire.METHOD)(
            nothing(), metadata=(("authorization", f"Bearer {token}"),), timeout=hold_s
        )
        try:
            for _ in call:
                pass
            return "closed"
        except grpc.RpcError as exc:
            return exc.code().name
        finally:
            stop.set()


def hardening(workdir: Path) -> dict[str, Any]:
    """Items 2 to 7 of issue 16 against a researcher serving 3 real node processes over TLS."""
    from fedplug_grpc import certs

    failures: list[str] = []
    found: dict[str, Any] = {"decode": [_decode_cost(mib) for mib in (1, 4, 16)]}
    for row in found["decode"]:
        if not row["refused"] or row["peak_mib"] > 64:
            failures.append(f"header of {row['input_mib']} MiB: {row}")
    specs = demo_node_specs(NODES, 0, workdir)
    with local_deployment(workdir, specs, stall_timeout=3.0, hello_timeout=2.0) as deployment:
        transport, ca = deployment.transport, (deployment.certs_dir / "ca.pem").read_bytes()
        address = f"localhost:{transport.port}"
        names = [spec.name for spec in specs]
        tokens = {}
        for name in ("raw-stall", "raw-shape", "raw-overflow", "raw-bomb", "intruder"):
            tokens[name] = certs.add_node(deployment.certs_dir, name)[0]
        deadline = time.monotonic() + 10
        while "intruder" not in transport.credentials and time.monotonic() < deadline:
            time.sleep(0.1)  # the researcher reads credentials.json again by itself

        def round_with(name: str, answer: Any, process: bool = False) -> tuple[Any, float]:
            raw = (_RawProcess if process else RawNode)(address, ca, tokens[name], name, answer)
            try:
                transport.wait_for_nodes(TAGS, names=[*names, name], timeout=30)
                exp = _experiment(transport, on_node_failure="skip")
                before = {k: v.copy() for k, v in exp.global_params.items()}
                rss = _rss_mib()
                start = time.perf_counter()
                try:
                    row: Any = exp.run_once()
                except Exception as exc:  # item 5: the round fails whole
                    row = exc
                seconds = time.perf_counter() - start
                if isinstance(row, Exception):
                    unchanged = all(
                        np.array_equal(exp.global_params[k], v) for k, v in before.items()
                    )
                    row = {"error": f"{type(row).__name__}: {row}"[:200], "unchanged": unchanged}
                row["researcher_rss_added_mib"] = _rss_mib() - rss
                if raw.granted_at and raw.cancelled_at:
                    row["cancelled_after_grant_s"] = raw.cancelled_at - raw.granted_at
                return row, seconds
            finally:
                raw.close()
                deadline = time.monotonic() + 30
                while name in transport.node_tags() and time.monotonic() < deadline:
                    time.sleep(0.1)

        row, seconds = round_with("raw-stall", lambda payload: None)  # item 2
        found["stall"] = {"seconds": seconds, "fail_s": row.get("cancelled_after_grant_s", 0.0),
                          "failure": row.get("failures", {}).get("raw-stall")}  # fmt: skip
        if "stalled" not in str(found["stall"]["failure"]) or found["stall"]["fail_s"] > 3.0 + 2.0:
            failures.append(f"stalled node: {found['stall']}")
        # item 3, live: a 16 MiB error reply of empty containers from a node process
        row, _ = round_with("raw-bomb", _bomb_answer, process=True)
        found["bomb"] = {"failure": row.get("failures", {}).get("raw-bomb"),
                         "researcher_rss_added_mib": row["researcher_rss_added_mib"]}  # fmt: skip
        if "exceeds the limit" not in str(found["bomb"]["failure"]):
            failures.append(f"16 MiB header bomb: {found['bomb']}")
        row, _ = round_with("raw-shape", lambda payload: _impossible_shape(payload, "raw-shape"))
        found["shape"] = {"failure": row.get("failures", {}).get("raw-shape"),
                          "nodes": row.get("nodes")}  # fmt: skip  # item 4
        if "dimension" not in str(found["shape"]["failure"]) or len(row.get("nodes", [])) != NODES:
            failures.append(f"impossible shape: {found['shape']}")
        huge = lambda params: {k: np.full(v.shape, np.finfo(v.dtype).max, v.dtype)  # noqa: E731
                               for k, v in params.items()}  # fmt: skip
        row, _ = round_with(  # item 5
            "raw-overflow", lambda payload: _train_reply(payload, "raw-overflow", huge)
        )
        found["overflow"] = row
        if "not finite" not in str(row.get("error")) or not row.get("unchanged"):
            failures.append(f"overflowing aggregate: {row}")

        # item 6: 60 silent streams with one valid credential; a node restarted meanwhile
        with futures.ThreadPoolExecutor(60) as pool:
            flood = [pool.submit(_silent_stream, address, ca, tokens["intruder"], 20)
                     for _ in range(60)]  # fmt: skip
            time.sleep(0.5)
            victim = names[0]
            deployment.kill(victim)
            start = time.perf_counter()
            deployment.start(victim)
            transport.wait_for_nodes(TAGS, names=[victim], timeout=60)
            reconnect = time.perf_counter() - start
            outcomes = [future.result(timeout=60) for future in flood]
        found["flood"] = {"reconnect_s": reconnect,
                          "outcomes": {o: outcomes.count(o) for o in set(outcomes)}}  # fmt: skip
        if outcomes.count("RESOURCE_EXHAUSTED") < 58 or reconnect > 15:
            failures.append(f"stream flood: {found['flood']}")
        exp = _experiment(transport, on_node_failure="fail")
        try:
            exp.run_once()
        except Exception as exc:
            failures.append(f"a round after the hardening cases: {exc}")
    found["big_plan"] = _big_plan(workdir / "big-plan", failures)
    print(f"  hardening: {len(failures)} unexpected", file=sys.stderr)
    return {"found": found, "failures": failures}


def _big_plan(workdir: Path, failures: list[str]) -> dict[str, Any]:
    """Item 7: a ~220-byte request whose model_args ask a real node process for a 1.5 GiB plan,
    over its max_plan_mb; then a valid request. The node's RSS around it."""
    fake = FakeResearcher()
    [spec] = demo_node_specs(1, 0, workdir, limits={"max_plan_mb": 64})
    deployment = prepare_nodes(workdir, [spec], f"127.0.0.1:{fake.port}", None)
    replies: dict[int, Any] = {}

    def ask(task: int, payload: bytes) -> Any:
        return _ask_script(task, payload, replies, ready_timeout=60)

    def request(features: int, experiment: str) -> bytes:
        # a new experiment id: a node builds the plan on an experiment's first request
        params = {"weight": np.zeros((30, 2)), "bias": np.zeros(2)} if features == 30 else {}
        return msg.encode(msg.TrainRequest(experiment, 0, msg.PlanRef(name="numpy-logreg"),
                                           {"n_features": features}, {"batch_size": 16}, TAGS,
                                           params))  # fmt: skip

    result: dict[str, Any] = {}
    try:
        deployment.start_all()
        fake.run(ask(1, request(30, "small")))
        pid = deployment.procs[spec.name].pid
        result["node_rss_before_mib"] = _rss_mib(pid)
        big = request(100_000_000, "big")
        result["request_bytes"] = len(big)
        fake.run(ask(2, big), timeout=120)
        result["node_rss_after_mib"] = _rss_mib(pid)
        result["reply"] = f"{replies.get(2)!r}"[:200]
        fake.run(ask(3, request(30, "small-again")))
        result["then"] = type(replies.get(3)).__name__
        if "max_plan_mb" not in f"{replies.get(2)!r}" or result["then"] != "TrainReply":
            failures.append(f"plan over max_plan_mb: {result}")
    finally:
        deployment.stop()
        fake.server.stop(None)
    return result


def _print_fuzz(fuzz: dict[str, Any]) -> None:
    print(f"\n## researcher fuzz: {fuzz['cases']} hostile clients")
    for case, counts in sorted(fuzz["outcomes"].items()):
        print(f"  {case:13s} {counts}")
    print(f"  rounds over the real nodes in between: {fuzz['rounds_ok']} complete; slowest "
          f"refusal {fuzz['slowest_refusal_s'] * 1000:.1f} ms")  # fmt: skip


def _print_node_fuzz(nodes: dict[str, Any]) -> None:
    print(f"\n## node fuzz: {nodes['cases']} cases {nodes['kinds']}, "
          f"{nodes['connections']} connections of one node process")  # fmt: skip


def _print_soak(long: dict[str, Any]) -> None:
    print(f"\n## soak: {long['rounds']} rounds, a node killed every {KILL_EVERY}")
    print(f"  complete {long['complete_rounds']}, degraded {long['degraded_rounds']}, "
          f"median round {long['median_round_s'] * 1000:.1f} ms")  # fmt: skip
    print(f"  RSS drift (last tenth vs second tenth): researcher "
          f"{long['researcher_rss_drift_mib']:+.1f} MiB, "
          f"nodes {long['nodes_rss_drift_mib']:+.1f} MiB")  # fmt: skip


def _print_hardening(result: dict[str, Any]) -> None:
    hard = result["found"]
    print("\n## hardening (issue 16): a hostile node, a hostile researcher, bad input")
    for row in hard["decode"]:
        print(f"  header of {row['input_mib']} MiB of empty maps: refused in {row['seconds']:.3f} s, "
              f"peak {row['peak_mib']:.1f} MiB ({row['peak_mib_per_input_mib']:.1f} MiB per "
              f"input MiB): {row['reason'][:90]}")  # fmt: skip
    stall = hard.get("stall", {})
    print(f"  a node that stalls after READY (stall_timeout 3 s): cancelled {stall.get('fail_s', 0):.1f} s "
          f"after its grant (round of {stall.get('seconds', 0):.1f} s: it stalls its evaluation "
          f"too); {stall.get('failure')}")  # fmt: skip
    bomb = hard.get("bomb", {})
    print(f"  a 16 MiB error reply of empty containers: {bomb.get('failure')}; researcher RSS "
          f"+{bomb.get('researcher_rss_added_mib', 0):.0f} MiB")  # fmt: skip
    print(f"  a reply of shape (0, 2**63): {hard.get('shape', {}).get('failure')}")
    print(f"  float64-max parameters from one node: {hard.get('overflow', {}).get('error')}")
    flood = hard.get("flood", {})
    print(f"  60 silent streams with one credential: {flood.get('outcomes')}; a restarted node "
          f"reconnected in {flood.get('reconnect_s', 0):.1f} s")  # fmt: skip
    big = hard.get("big_plan", {})
    print(f"  a {big.get('request_bytes')}-byte request for a 1.5 GiB plan: node RSS "
          f"{big.get('node_rss_before_mib', 0):.0f} -> {big.get('node_rss_after_mib', 0):.0f} MiB; "
          f"{big.get('reply')}; then {big.get('then')}")  # fmt: skip


SECTIONS = {  # name: (run, print), in the order they run
    "researcher_fuzz": (lambda a, w: researcher_fuzz(a.cases, w), _print_fuzz),
    "node_fuzz": (lambda a, w: node_fuzz(a.cases, w), _print_node_fuzz),
    "soak": (lambda a, w: soak(a.rounds_, w), _print_soak),
    "hardening": (lambda a, w: hardening(w), _print_hardening),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--fuzz", type=int, default=300, help="hostile cases per side (300)")
    parser.add_argument("--rounds", type=int, default=200, help="soak rounds (200)")
    parser.add_argument("--quick", action="store_true", help="40 cases per side, 30 rounds")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    args.cases, args.rounds_ = (40, 30) if args.quick else (args.fuzz, args.rounds)
    started = time.perf_counter()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedplug-grpc-soak-") as tmp:
        for name, (run, _) in SECTIONS.items():
            if not args.only or name in args.only:
                result[name] = run(args, Path(tmp) / name)
    failures: list[str] = []
    for name, section in result.items():
        SECTIONS[name][1](section)
        failures += section["failures"]
    for failure in failures:
        print(f"UNEXPECTED: {failure}")
    result["meta"] = {"seconds": round(time.perf_counter() - started, 1), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'all checks held' if not failures else f'{len(failures)} unexpected outcomes'}; "
          f"took {result['meta']['seconds']:.0f} s; JSON in {args.out}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
