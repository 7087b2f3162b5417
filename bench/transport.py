"""The gRPC transport's speed and memory: the issue's three questions, answered in one run.

Usage: ``python bench/transport.py [--quick] [--out PATH]``

1. **Demo round time**: the demo workload (3 hospitals, ``torch-mlp``, FedAvg, 20 % held out and
   validated every round: ``fedplug demo``'s settings) with the local transport (in-process nodes)
   and with gRPC (``fedplug_demo.demo.grpc_federation``: TLS, one ``fedplug node start`` process per
   hospital): start-up (until the nodes are connected), round 1 (plans built on the nodes), the
   median ``round_s`` of rounds 2..N, and the final accuracy and parameters of both.
2. **Throughput**: a 1 GiB float32 model (4 arrays) sent to 4 node processes whose plan
   (:class:`EchoPlan`) holds it and trains nothing; their replies averaged (FedAvg). One warm-up
   round, then timed rounds. Bytes per round = 4 requests down + 4 replies up, as the transport
   saw them; effective throughput = bytes / median round time, over TLS and plaintext gRPC.
   Raw loopback: the same bytes sent in this run by a plain TCP socket sender to a child process
   that ``recv_into()``s preallocated buffers, over one stream and over 4 parallel streams;
   raw TLS: the same over 4 TLS streams with Python's ``ssl`` (the node's certificate check,
   no framing, no gRPC): what TLS itself costs a Python process on this machine.
   Bare grpcio: the same bytes through grpcio with no fedplug code (:func:`bare_grpc`: one server
   in this process, 4 client processes, the same message size, channel options and TLS, down to
   all at once, then up one after the other; nothing framed, decoded or kept): what grpcio's
   Python binding itself costs on this machine, the ceiling for any transport built on it.
   Where a round goes: until the last node has its request decoded and loaded ("requests in",
   from the node's clock, which the plan reports as its loss), then until the last reply is folded
   (node encoding, replies up one at a time, each streamed, decoded and folded into FedAvg by the
   researcher while it arrives: "receive+fold", the time the Experiment spent consuming replies),
   ``result()``, the CPU seconds of the researcher and the nodes (for raw TCP: sender and
   receiver), and the largest node process's peak RSS over the model size (the node holds its
   plan's model and one reply buffer; requests go straight into the plan). "other CPU s" is the
   machine's CPU time charged to none of these processes (other processes, interrupt
   handling): large values mean a disturbed run.
3. **Researcher peak RSS** with a 256 MiB model and 2, 4 and 8 nodes: the researcher runs alone in
   a fresh process (the nodes are other processes). Baseline: its ``VmRSS`` once the nodes are
   connected (Python, numpy, gRPC); then the peak (``VmHWM``) while the Experiment is built, its
   ``VmRSS`` at rest, and the peak over 2 rounds (``VmHWM`` reset in between).

``--quick``: 128 MiB instead of 1 GiB, 64 MiB instead of 256 MiB, 2 and 4 nodes, fewer rounds.

Targets: effective throughput >= 50 % of the better raw loopback figure (TLS and plaintext each);
researcher peak RSS <= 3x the model, whatever the node count (NVIDIA FLARE's published
tensor-streaming example peaks at ~24x, printed beside, not measured here).

Output: the tables, and ``bench/results/transport.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.plan import TrainingPlan, TrainResult

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "transport.json"
TAGS = ["bench-transport"]
ARRAYS = 4  # the bench model: 4 float32 arrays of equal size
DEMO_ROUNDS, QUICK_DEMO_ROUNDS = 20, 5
BIG_MIB, QUICK_BIG_MIB, BIG_NODES = 1024, 128, 4
BIG_ROUNDS, QUICK_BIG_ROUNDS = 3, 2  # timed rounds, after one warm-up round
RSS_MIB, QUICK_RSS_MIB, RSS_ROUNDS = 256, 64, 2
RSS_NODES, QUICK_RSS_NODES = (2, 4, 8), (2, 4)
RAW_REPEAT = 3
THROUGHPUT_TARGET, RSS_TARGET = 0.5, 3.0
FLARE = "NVIDIA FLARE's tensor streaming example: peak memory ~24x the model"


class EchoPlan(TrainingPlan):
    """A float32 model of ``model_args["mib"]`` MiB in ``model_args["arrays"]`` arrays; training
    leaves it as it is, so a round is moving the model and averaging it. Shipped as source."""

    def __init__(self, model_args: dict | None = None) -> None:
        super().__init__(model_args)
        self.add_dependency(["import time", "import numpy as np"])
        self.add_dependency("from fedplug.plan import TrainResult")
        arrays = self.model_args["arrays"]
        size = (self.model_args["mib"] << 20) // 4 // arrays
        self.params = {f"layer{i}": np.full(size, 0.01, np.float32) for i in range(arrays)}

    def get_parameters(self) -> dict:
        return {name: value.copy() for name, value in self.params.items()}

    def parameter_views(self) -> dict:
        return self.params

    def parameter_buffers(self) -> dict:  # as fedplug-torch's plans on CPU
        return self.params

    def set_parameters(self, params: dict) -> None:
        for name, value in params.items():
            np.copyto(self.params[name], value)

    def train(self, dataset: object, args: object) -> TrainResult:
        # the "loss" is the node's clock: when its request had arrived, been decoded and loaded
        return TrainResult(n_samples=len(dataset), n_steps=0, loss=time.time())

    def evaluate(self, dataset: object, args: object) -> dict:
        return {}


class MeteredTransport:
    """Wraps the researcher's transport: records each dispatch's start and bytes, and the time
    the Experiment spent on each reply (decoding it, folding it into the aggregator)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.records = inner, []
        self.streams_replies = getattr(inner, "streams_replies", False)

    def node_tags(self) -> dict[str, list[list[str]]]:
        return self.inner.node_tags()

    def close(self) -> None:  # the deployment closes the real transport
        pass

    def dispatch(self, payload: Any, nodes: list[str], **options: Any) -> Any:
        parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        record = {"start": time.time(), "nodes": len(nodes), "reply_bytes": 0, "fold_s": 0.0}
        record["request_bytes"] = sum(memoryview(p).nbytes for p in parts)
        self.records.append(record)
        with contextlib.closing(self.inner.dispatch(payload, nodes, **options)) as stream:
            for node, reply in stream:
                if hasattr(reply, "replay"):  # a ReplyStream: read while it arrives
                    record["reply_bytes"] += reply.size
                elif not isinstance(reply, BaseException):
                    record["reply_bytes"] += memoryview(reply).nbytes
                start = time.perf_counter()
                yield node, reply
                del reply  # do not keep the reply's buffer while the next one arrives
                record["fold_s"] += time.perf_counter() - start


def bench_nodes(count: int, workdir: Path) -> list[Any]:
    """``count`` node specs with a tiny numpy dataset each, running shipped plans unapproved."""
    from fedplug_grpc.deploy import NodeSpec

    data = workdir / "tiny.npz"
    data.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data, x=np.zeros((8, 2), np.float32), y=np.zeros(8, np.int64))
    dataset = ("tiny", "numpy", TAGS, {"path": str(data)})
    return [NodeSpec(f"node-{i}", [dataset], node={"approval": False}) for i in range(count)]


def bench_experiment(transport: Any, mib: int) -> Any:
    from fedplug import Experiment
    from fedplug.aggregators import FedAverage

    return Experiment(
        nodes=transport,
        tags=TAGS,
        training_plan=EchoPlan,
        model_args={"mib": mib, "arrays": ARRAYS},
        aggregator=FedAverage(),
        seed=0,
        progress=False,
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have spent (from /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _status_mib(field: str, pid: int | str = "self") -> float:
    """``VmRSS`` or ``VmHWM`` of this process (or ``pid``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# -- 1. the demo's rounds -----------------------------------------------------------------------
def demo_rounds(rounds: int, workdir: Path) -> dict[str, Any]:
    from fedplug.plugins import get_plugin_manager
    from fedplug_demo.demo import ALGORITHMS, PLANS, _demo_experiment, demo_nodes, grpc_federation

    pm = get_plugin_manager()
    plan, _, model_args, training_args = PLANS["torch"]
    result: dict[str, Any] = {"rounds": rounds, "nodes": 3}
    finals = {}
    for transport in ("local", "grpc"):
        with contextlib.ExitStack() as stack:
            start = time.perf_counter()
            if transport == "grpc":
                federation = stack.enter_context(grpc_federation(3, 0, workdir / "demo"))
            else:
                federation = demo_nodes(3, 0, plugin_manager=pm)
                stack.callback(lambda nodes=federation: [node.stop() for node in nodes])
            startup_s = time.perf_counter() - start
            exp = _demo_experiment(
                federation=federation,
                plan_name=plan,
                model_args=model_args,
                training_args=training_args,
                rounds=rounds,
                seed=0,
                pm=pm,
                workers=None,
                recipe=ALGORITHMS["fedavg"],
                secagg=False,
                progress=False,
                transport=transport,
            )
            with exp:
                history = exp.run()
            finals[transport] = {k: v.copy() for k, v in exp.global_params.items()}
        times = [row["durations"]["round_s"] for row in history]
        result[transport] = {
            "startup_s": startup_s,
            "first_round_s": times[0],
            "round_s": statistics.median(times[1:]),
            "rounds_s": times,
            "accuracy": history[-1]["validation_global"]["accuracy"],
        }
        print(f"  demo, {transport}: {result[transport]['round_s']:.4f} s/round", file=sys.stderr)
    result["ratio"] = result["grpc"]["round_s"] / result["local"]["round_s"]
    result["max_abs_param_diff"] = max(
        float(np.max(np.abs(finals["local"][k] - finals["grpc"][k]))) for k in finals["local"]
    )
    return result


# -- 2. throughput ------------------------------------------------------------------------------
def fedplug_throughput(mib: int, rounds: int, tls: bool, workdir: Path) -> dict[str, Any]:
    """Rounds of the echo model through a local deployment: bytes, times, where they go."""
    from fedplug_grpc.deploy import local_deployment

    home = workdir / ("tls" if tls else "plain")
    with local_deployment(home, bench_nodes(BIG_NODES, home), tls=tls) as deployment:
        metered = MeteredTransport(deployment.transport)
        pids = [proc.pid for proc in deployment.procs.values()]
        with bench_experiment(metered, mib) as exp:
            exp.run_once()  # warm-up: plan built on the nodes, first buffers
            rows = []
            for _ in range(rounds):
                cpu = time.process_time(), sum(map(_cpu_s, pids)), _busy_cpu_s()
                summary = exp.run_once()
                rec, durations = metered.records[-1], summary["durations"]
                requests_in = max(summary["train_loss"].values()) - rec["start"]
                rows.append(
                    {
                        "round_s": durations["round_s"],
                        "requests_in_s": requests_in,
                        "replies_s": durations["train_s"] - requests_in,
                        "receive_fold_s": rec["fold_s"],
                        "aggregate_s": durations["aggregate_s"],
                        "researcher_cpu_s": time.process_time() - cpu[0],
                        "nodes_cpu_s": sum(map(_cpu_s, pids)) - cpu[1],
                        "machine_cpu_s": _busy_cpu_s() - cpu[2],
                    }
                )
            drift = max(float(np.max(np.abs(v - 0.01))) for v in exp.global_params.values())
        node_peak = max(_status_mib("VmHWM", pid) for pid in pids)
    row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    down, up = rec["request_bytes"] * rec["nodes"], rec["reply_bytes"]
    row.update(tls=tls, bytes=down + up, down_bytes=down, up_bytes=up, runs=rows)
    row.update(max_abs_param_change=drift, gb_per_s=(down + up) / row["round_s"] / 1e9)
    row.update(node_peak_mib=node_peak, node_peak_per_model=node_peak / mib)
    row["cpu_s"] = row["researcher_cpu_s"] + row["nodes_cpu_s"]
    row["other_cpu_s"] = max(row["machine_cpu_s"] - row["cpu_s"], 0.0)
    print(f"  fedplug {'TLS' if tls else 'plaintext'}: {row['gb_per_s']:.3f} GB/s", file=sys.stderr)
    return row


def _sink(
    pipe: Any, streams: int, buffer_bytes: int, repeat: int, tls: tuple[str, str] | None = None
) -> None:
    """Child process: accept ``streams`` connections, ``repeat`` times; each announces its byte
    count, received into a preallocated buffer (wrapping around), then acknowledged. ``tls``:
    (certificate, key) PEM paths: the connections are TLS (Python's ``ssl``, OpenSSL)."""
    import ssl

    listener = socket.create_server(("127.0.0.1", 0), backlog=streams)
    pipe.send(listener.getsockname()[1])
    buffers = [memoryview(bytearray(buffer_bytes)) for _ in range(streams)]
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)

    def drain(sock: socket.socket, buffer: memoryview) -> None:
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True)
        with sock:
            header = b""
            while len(header) < 8:  # (an SSL socket takes no recv flags)
                if not (piece := sock.recv(8 - len(header))):
                    raise ConnectionError("stream ended in its header")
                header += piece
            (total,) = struct.unpack("<Q", header)
            got = 0
            while got < total:
                start = got % len(buffer)
                n = sock.recv_into(buffer[start : start + min(len(buffer) - start, total - got)])
                if not n:
                    raise ConnectionError(f"stream ended after {got} of {total} bytes")
                got += n
            sock.sendall(b"k")

    for _ in range(repeat):
        socks = [listener.accept()[0] for _ in range(streams)]
        threads = [threading.Thread(target=drain, args=p) for p in zip(socks, buffers, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _pour(sock: socket.socket, source: memoryview, total: int, errors: list) -> None:
    try:
        with sock:
            sock.sendall(struct.pack("<Q", total))
            for start in range(0, total, len(source)):
                sock.sendall(source[: min(len(source), total - start)])
            if sock.recv(1) != b"k":
                raise ConnectionError("the sink did not acknowledge")
    except OSError as exc:
        errors.append(exc)


def raw_loopback(
    total: int, streams: int, buffer_bytes: int, certs_dir: Path | None = None
) -> dict[str, Any]:
    """Seconds to send ``total`` bytes over ``streams`` plain TCP connections to a child; with
    ``certs_dir`` (``fedplug certs init``'s files), over TLS connections that verify the
    server's certificate, as fedplug's nodes do."""
    import ssl

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    tls, client = None, None
    if certs_dir is not None:
        tls = (str(certs_dir / "server.pem"), str(certs_dir / "server.key"))
        client = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    args = (child, streams, buffer_bytes, RAW_REPEAT, tls)
    proc = ctx.Process(target=_sink, args=args, daemon=True)
    proc.start()
    port = parent.recv()
    source = memoryview(np.full(buffer_bytes, 7, np.uint8)).cast("B")
    shares = [total // streams + (i < total % streams) for i in range(streams)]
    times, cpu, other, errors = [], [], [], []
    for _ in range(RAW_REPEAT):
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]
        if client is not None:
            socks = [client.wrap_socket(sock, server_hostname="localhost") for sock in socks]
        pairs = zip(socks, shares, strict=True)
        threads = [threading.Thread(target=_pour, args=(s, source, n, errors)) for s, n in pairs]
        start, cpu_start = time.perf_counter(), time.process_time() + _cpu_s(proc.pid)
        busy = _busy_cpu_s()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() + _cpu_s(proc.pid) - cpu_start)
        other.append(max(_busy_cpu_s() - busy - cpu[-1], 0.0))
    proc.join(60)
    if errors or proc.exitcode != 0:
        raise RuntimeError(f"raw loopback failed: {errors}, sink exit code {proc.exitcode}")
    seconds = statistics.median(times)
    label = f"raw {'TLS' if tls else 'TCP'}, {streams} stream(s)"
    print(f"  {label}: {total / seconds / 1e9:.3f} GB/s", file=sys.stderr)
    return {"label": label, "tls": tls is not None, "streams": streams, "bytes": total,
            "seconds": seconds, "runs_s": times,
            "gb_per_s": total / seconds / 1e9, "cpu_s": statistics.median(cpu),
            "other_cpu_s": statistics.median(other)}  # fmt: skip


def throughput(mib: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from fedplug_grpc.deploy import make_certs

    runs = {name: fedplug_throughput(mib, rounds, name == "TLS", workdir)
            for name in ("TLS", "plaintext")}  # fmt: skip
    bare = {name: bare_grpc(mib, rounds, name == "TLS", workdir) for name in runs}
    total = runs["TLS"]["bytes"]
    raw = [raw_loopback(total, streams, mib << 20) for streams in (1, BIG_NODES)]
    best = max(r["gb_per_s"] for r in raw)
    raw_tls = raw_loopback(total, BIG_NODES, mib << 20, make_certs(workdir / "raw-tls", []))
    raw_tls["ratio_to_raw"] = raw_tls["gb_per_s"] / best
    for name, row in runs.items():
        row["ratio_to_raw"] = row["gb_per_s"] / best
        row["ratio_to_bare"] = row["gb_per_s"] / bare[name]["gb_per_s"]
        bare[name]["ratio_to_raw"] = bare[name]["gb_per_s"] / best
    return {"model_mib": mib, "nodes": BIG_NODES, "fedplug": runs, "bare_grpc": bare,
            "raw": raw, "raw_best": best, "raw_tls": raw_tls}  # fmt: skip


# -- 2b. bare grpcio: the same bytes through gRPC, no fedplug code ------------------------------
_BARE_METHOD = "/bench.Bare/Stream"
_GO, _ACK, _END = b"G", b"A", b"E"  # one-byte control messages; data messages are CHUNK_BYTES


def _bare_client(port: int, index: int, chunks: int, ca_cert: bytes | None) -> None:
    """Child process: a node without fedplug: receives ``chunks`` messages and acknowledges
    them; on each grant streams ``chunks`` messages back, then an end marker."""
    import queue

    import grpc

    from fedplug_grpc.transport import CHUNK_BYTES, channel_options, tune_malloc

    tune_malloc()  # as fedplug's node processes do
    target, options = f"127.0.0.1:{port}", channel_options()
    if ca_cert is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_cert), options)
    payload = bytes(np.full(CHUNK_BYTES, 7, np.uint8))
    commands: queue.SimpleQueue = queue.SimpleQueue()

    def requests() -> Iterator[bytes]:
        yield bytes([index])
        while (command := commands.get()) is not None:
            if command == _GO:
                yield from (payload for _ in range(chunks))
                yield _END
            else:
                yield command

    received = 0
    with channel:
        for message in channel.stream_stream(_BARE_METHOD)(requests()):
            if message == _GO:
                commands.put(_GO)
            else:
                received += len(message)
                if received == chunks * CHUNK_BYTES:
                    received = 0
                    commands.put(_ACK)
    commands.put(None)


def bare_grpc(mib: int, rounds: int, tls: bool, workdir: Path) -> dict[str, Any]:
    """The throughput round without fedplug: a grpcio server in this process sends ``mib`` MiB
    in ``CHUNK_BYTES`` messages (one bytes object, sent again and again: no framing, no copy
    of ours) to each of ``BIG_NODES`` client processes at once, then lets them stream as much
    back one after the other, as fedplug grants replies; received bytes are counted, not kept.
    The same channel options, TLS and malloc tuning as fedplug: what grpcio alone costs."""
    import queue
    from concurrent import futures

    import grpc

    from fedplug_grpc import certs
    from fedplug_grpc.deploy import make_certs
    from fedplug_grpc.transport import CHUNK_BYTES, channel_options

    chunks = (mib << 20) // CHUNK_BYTES
    payload = bytes(np.full(CHUNK_BYTES, 7, np.uint8))
    outboxes = [queue.SimpleQueue() for _ in range(BIG_NODES)]
    events: queue.SimpleQueue = queue.SimpleQueue()

    def connect(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        index = next(requests)[0]

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # the call ends when the bench does
                for message in requests:
                    if message in (_ACK, _END):
                        events.put((message, index))

        threading.Thread(target=read, daemon=True).start()
        while (command := outboxes[index].get()) is not None:
            if command == "send":
                yield from (payload for _ in range(chunks))
            else:
                yield _GO

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Stream": grpc.stream_stream_rpc_method_handler(connect)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(BIG_NODES + 2), options=channel_options())
    server.add_generic_rpc_handlers((handler,))
    ca_cert = None
    if tls:
        certs_dir = make_certs(workdir / "bare", [])
        cert, key = certs.server_tls(certs_dir)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
        ca_cert = certs.read_pem(certs_dir / "ca.pem")
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bare_client, args=(port, i, chunks, ca_cert), daemon=True)
             for i in range(BIG_NODES)]  # fmt: skip
    for proc in procs:
        proc.start()

    def wait(kind: bytes, count: int) -> None:
        while count:
            try:
                got = events.get(timeout=1.0)
            except queue.Empty:
                if any(proc.exitcode is not None for proc in procs):
                    raise RuntimeError("bare gRPC: a client process ended") from None
                continue
            if got[0] != kind:
                raise RuntimeError(f"bare gRPC: expected {kind!r}, got {got}")
            count -= 1

    rows = []
    try:
        for timed in [False] + [True] * rounds:  # one warm-up round
            cpu = time.process_time(), sum(_cpu_s(p.pid) for p in procs)
            start = time.perf_counter()
            for outbox in outboxes:
                outbox.put("send")
            wait(_ACK, BIG_NODES)
            down = time.perf_counter()
            for outbox in outboxes:  # replies one at a time
                outbox.put("grant")
                wait(_END, 1)
            end = time.perf_counter()
            if timed:
                rows.append({"round_s": end - start, "requests_in_s": down - start,
                             "replies_s": end - down,
                             "researcher_cpu_s": time.process_time() - cpu[0],
                             "nodes_cpu_s": sum(_cpu_s(p.pid) for p in procs) - cpu[1]})  # fmt: skip
    finally:
        for outbox in outboxes:
            outbox.put(None)  # the calls end: the clients return
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        server.stop(grace=None)
    row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    half = BIG_NODES * chunks * CHUNK_BYTES
    row.update(tls=tls, bytes=2 * half, down_bytes=half, up_bytes=half, runs=rows)
    row["gb_per_s"] = 2 * half / row["round_s"] / 1e9
    row["cpu_s"] = row["researcher_cpu_s"] + row["nodes_cpu_s"]
    print(f"  bare gRPC {'TLS' if tls else 'plaintext'}: {row['gb_per_s']:.3f} GB/s",
          file=sys.stderr)  # fmt: skip
    return row


# -- 3. researcher peak RSS ---------------------------------------------------------------------
def _researcher(pipe: Any, nodes: int, mib: int, workdir: str) -> None:
    """Child process: a researcher alone in its process, measuring its own memory (with the
    malloc tuning a researcher script that moves large models applies in its main)."""
    from fedplug_grpc.deploy import local_deployment
    from fedplug_grpc.transport import tune_malloc

    tune_malloc()

    home = Path(workdir)
    try:
        with local_deployment(home, bench_nodes(nodes, home)) as deployment:
            row = {"nodes": nodes, "model_mib": mib, "baseline_mib": _status_mib("VmRSS")}
            with bench_experiment(deployment.transport, mib) as exp:
                row["build_peak_mib"] = _status_mib("VmHWM")
                row["at_rest_mib"] = _status_mib("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
                history = exp.run(RSS_ROUNDS)
                row["rounds_peak_mib"] = _status_mib("VmHWM")
        row["round_s"] = [r["durations"]["round_s"] for r in history]
    except Exception as exc:
        row = {"error": f"{type(exc).__name__}: {exc}"}
    pipe.send(row)


def peak_rss(mib: int, node_counts: tuple[int, ...], workdir: Path) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for nodes in node_counts:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_researcher, args=(child, nodes, mib, str(workdir / "rss")))
        proc.start()
        row = parent.recv()
        proc.join()
        if "error" in row:
            raise RuntimeError(f"the researcher with {nodes} nodes failed: {row['error']}")
        row["peak_mib"] = max(row["build_peak_mib"], row["rounds_peak_mib"])
        row["above_baseline"] = (row["peak_mib"] - row["baseline_mib"]) / mib
        row["round_adds"] = (row["rounds_peak_mib"] - row["at_rest_mib"]) / mib
        row["peak_per_model"] = row["peak_mib"] / mib
        print(f"  {nodes} nodes: peak {row['peak_mib']:.0f} MiB", file=sys.stderr)
        rows.append(row)
    return rows


# -- report -------------------------------------------------------------------------------------
def tables(demo: dict[str, Any], tput: dict[str, Any], rss: list[dict[str, Any]]) -> dict:
    from fedplug.report import format_table

    out = {}
    out["demo"] = format_table(
        ["transport", "start-up s", "round 1 s", "median round s (2..N)", "accuracy"],
        [[name, demo[name]["startup_s"], demo[name]["first_round_s"], demo[name]["round_s"],
          demo[name]["accuracy"]] for name in ("local", "grpc")],
    )  # fmt: skip
    senders = [(f"fedplug gRPC, {name}", row["bytes"], row["round_s"], row["cpu_s"],
                row["other_cpu_s"], f"{row['ratio_to_raw']:.0%}", f"{row['ratio_to_bare']:.0%}")
               for name, row in tput["fedplug"].items()]  # fmt: skip
    senders += [(f"bare grpcio, {name}", row["bytes"], row["round_s"], row["cpu_s"], None,
                 f"{row['ratio_to_raw']:.0%}", None)
                for name, row in tput["bare_grpc"].items()]  # fmt: skip
    senders += [(raw["label"], raw["bytes"], raw["seconds"], raw["cpu_s"], raw["other_cpu_s"],
                 f"{raw['ratio_to_raw']:.0%}" if raw["tls"] else None, None)
                for raw in [*tput["raw"], tput["raw_tls"]]]  # fmt: skip
    out["throughput"] = format_table(
        ["sender", "GB", "seconds", "GB/s", "CPU s per GB", "other CPU s", "of raw",
         "of bare grpcio"],
        [[label, n / 1e9, s, n / s / 1e9, cpu / n * 1e9, other, share, bare_share]
         for label, n, s, cpu, other, share, bare_share in senders],
    )  # fmt: skip
    body = []
    for label, rows in (("fedplug", tput["fedplug"]), ("bare grpcio", tput["bare_grpc"])):
        for name, row in rows.items():
            body.append([f"{label}, {name}", row["round_s"], row["requests_in_s"],
                         row["down_bytes"] / row["requests_in_s"] / 1e9, row["replies_s"],
                         row["up_bytes"] / row["replies_s"] / 1e9, row.get("receive_fold_s"),
                         row.get("aggregate_s"), row["researcher_cpu_s"], row["nodes_cpu_s"],
                         row.get("node_peak_per_model")])  # fmt: skip
    out["phases"] = format_table(
        ["gRPC", "round s", "requests in s", "down GB/s", "replies s", "up GB/s", "receive+fold s",
         "result() s", "researcher CPU s", "nodes CPU s", "node peak RSS / model"], body,
    )  # fmt: skip
    out["rss"] = format_table(
        ["nodes", "baseline MiB", "build peak MiB", "at rest MiB", "rounds peak MiB",
         "round adds", "(peak-baseline)/model", "peak/model"],
        [[r["nodes"], round(r["baseline_mib"]), round(r["build_peak_mib"]),
          round(r["at_rest_mib"]), round(r["rounds_peak_mib"]), f"{r['round_adds']:.2f}x",
          f"{r['above_baseline']:.2f}x", f"{r['peak_per_model']:.2f}x"] for r in rss],
    )  # fmt: skip
    return out


def targets(tput: dict[str, Any], rss: list[dict[str, Any]]) -> list[dict[str, Any]]:
    beside = {"TLS": f"; raw TLS without gRPC: {tput['raw_tls']['ratio_to_raw']:.0%}"}
    found = [
        {
            "target": f"gRPC {name} throughput >= {THROUGHPUT_TARGET:.0%} of raw loopback",
            "value": f"{row['ratio_to_raw']:.0%} ({row['gb_per_s']:.3f} of "
            f"{tput['raw_best']:.3f} GB/s){beside.get(name, '')}",
            "met": row["ratio_to_raw"] >= THROUGHPUT_TARGET,
        }
        for name, row in tput["fedplug"].items()
    ]
    found += [
        {
            "target": f"researcher peak RSS <= {RSS_TARGET:g}x model, {row['nodes']} nodes",
            "value": f"{row['peak_per_model']:.2f}x ({row['peak_mib']:.0f} MiB, "
            f"{row['model_mib']} MiB model; {row['above_baseline']:.2f}x above the baseline)",
            "met": row["peak_per_model"] <= RSS_TARGET,
        }
        for row in rss
    ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    quick = args.quick
    # the researcher moves large models: the same malloc tuning as fedplug's node processes
    # (fedplug-grpc leaves it to each process's main; see fedplug_grpc.tune_malloc)
    from fedplug_grpc.transport import tune_malloc

    tune_malloc()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes make the seconds noisy",
              file=sys.stderr)  # fmt: skip
    started = time.perf_counter()
    big_mib, rss_mib = (QUICK_BIG_MIB, QUICK_RSS_MIB) if quick else (BIG_MIB, RSS_MIB)
    with tempfile.TemporaryDirectory(prefix="fedplug-bench-transport-") as tmp:
        workdir = Path(tmp)  # one part after the other: each frees its memory before the next
        demo = demo_rounds(QUICK_DEMO_ROUNDS if quick else DEMO_ROUNDS, workdir)
        tput = throughput(big_mib, QUICK_BIG_ROUNDS if quick else BIG_ROUNDS, workdir)
        rss = peak_rss(rss_mib, QUICK_RSS_NODES if quick else RSS_NODES, workdir)
    text, found = tables(demo, tput, rss), targets(tput, rss)

    print(f"\n## demo rounds: 3 hospitals, torch-mlp, FedAvg, validation every round, "
          f"{demo['rounds']} rounds")  # fmt: skip
    print(text["demo"])
    print(f"gRPC / local: {demo['ratio']:.2f}x per round; largest parameter difference after "
          f"{demo['rounds']} rounds: {demo['max_abs_param_diff']:.1e}")  # fmt: skip
    print(f"\n## throughput: a {big_mib} MiB float32 model to {BIG_NODES} node processes and "
          "back (FedAvg), median of timed rounds; bare grpcio: the same bytes through grpcio "
          "alone; raw: the same bytes over plain TCP, and over TLS with Python's ssl")  # fmt: skip
    print(text["throughput"])
    for name, row in tput["fedplug"].items():
        print(f"fedplug {name}: {row['ratio_to_bare']:.0%} of bare grpcio "
              f"({tput['bare_grpc'][name]['gb_per_s']:.3f} GB/s, "
              f"{tput['bare_grpc'][name]['ratio_to_raw']:.0%} of raw)")  # fmt: skip
    import ssl

    print(f"raw TLS ({ssl.OPENSSL_VERSION}, no gRPC): {tput['raw_tls']['ratio_to_raw']:.0%} "
          "of raw TCP")  # fmt: skip
    drift = max(row["max_abs_param_change"] for row in tput["fedplug"].values())
    print(f"the model came back unchanged from the nodes: largest change {drift:.1e}")
    print("\n## where a gRPC round goes (CPU: all threads; the machine has "
          f"{os.cpu_count()} cores)")  # fmt: skip
    print(text["phases"])
    print(f"\n## researcher RSS: {rss_mib} MiB model, {RSS_ROUNDS} rounds, its own process")
    print(text["rss"])
    print()
    for t in found:
        print(f"target: {t['target']}: {t['value']}: {'PASS' if t['met'] else 'MISS'}")
    print(f"published, not measured here: {FLARE}")

    document = {
        "meta": {
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
            f"Python {platform.python_version()}",
            "versions": {d: _version(d) for d in ("fedplug", "grpcio", "numpy", "torch")},
            "quick": quick,
            "loadavg_before": load,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "demo": demo,
        "throughput": tput,
        "peak_rss": rss,
        "targets": found,
        "published": {"NVIDIA FLARE": FLARE},
        "tables": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nbenchmark took {document['meta']['seconds']:.0f} s; JSON in {args.out}")
    return 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
