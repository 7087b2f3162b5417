"""The researcher's side of the wire protocol, seen from a raw gRPC client (no NodeClient):
what must come first (HELLO, in this fedplug's message format), and random frames, each of which
ends that client's stream with a protocol error while the researcher keeps serving its real
nodes (a few frames only: long fuzzing belongs in bench/)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedplug import Experiment, NodeError
from fedplug import messages as msg
from fedplug.numpy_plan import LogisticRegressionPlan

grpc = pytest.importorskip("grpc")

from fedplug_grpc import transport as transport_module  # noqa: E402

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_wire", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)

NAME = "fuzz-client"
HELLO_BODY = {"name": NAME, "tags": [["fuzz"]], "wire": msg.VERSION}
HELLO = transport_module.control(transport_module.HELLO, HELLO_BODY)


def random_frames(count: int, seed: int) -> list[bytes]:
    """``count`` frames of 0 to 80 random bytes; none starts with HEARTBEAT, the one frame
    kind a node may send at any time with any body."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = rng.integers(0, 256, size=int(rng.integers(0, 81)), dtype=np.uint8).tobytes()
        if frame[:1] == bytes([transport_module.HEARTBEAT]):
            frame = bytes([0]) + frame[1:]
        frames.append(frame)
    return frames


def test_random_frames_end_the_stream_and_the_researcher_keeps_serving(cluster):
    outcomes = []
    for frame in random_frames(20, seed=20):
        received, error = support.raw_stream(cluster, NAME, [HELLO, frame])
        assert received and received[0][0] == transport_module.WELCOME, frame
        assert error is not None, f"the stream stayed open after frame {frame!r}"
        outcomes.append((frame, error.code(), error.details()))
    for frame, code, details in outcomes:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (frame, code, details)
        assert details.startswith("protocol error: "), (frame, details)

    # random frames in place of HELLO: refused before the client is admitted
    for frame in random_frames(5, seed=21):
        received, error = support.raw_stream(cluster, NAME, [frame])
        assert received == [] and error is not None, frame
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (frame, error)
        assert "bad HELLO" in error.details(), (frame, error.details())
    refused = cluster.transport.refused[-5:]  # it keeps the last 10
    assert len(refused) == 5 and all("HELLO" in reason for reason in refused), refused

    support.wait_until(
        lambda: NAME not in cluster.transport.node_tags(), 30, f"{NAME} to be dropped"
    )
    exp = Experiment(
        nodes=cluster.transport,
        tags=support.TAGS,
        training_plan=LogisticRegressionPlan,
        model_args={"n_features": support.N_FEATURES},
        training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
        seed=0,
        progress=False,
    )
    assert exp.nodes == ["alpha", "beta", "slow"]
    row = support.run_round(exp)
    assert row["nodes"] == exp.nodes and row["failures"] == {}


def test_a_node_speaking_another_message_format_is_refused_at_hello(cluster):
    hello = transport_module.control(
        transport_module.HELLO, {**HELLO_BODY, "wire": msg.VERSION + 1}
    )
    received, error = support.raw_stream(cluster, NAME, [hello])
    assert received == [] and error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    details = error.details()
    assert "bad HELLO" in details and f"message format {msg.VERSION + 1}" in details, details
    assert NAME not in cluster.transport.node_tags()


@pytest.mark.parametrize(
    "hello",
    [
        {**HELLO_BODY, "tags": [["fuzz", "ok\x1b[2K\x1b[1Gadmin-trusted"]]},
        {**HELLO_BODY, "tags": [["fuzz", "x\u202ey"]]},
    ],
    ids=["escape-in-tags", "bidi-in-tags"],
)
def test_a_hello_with_characters_a_terminal_acts_on_is_refused(cluster, hello):
    """A node's name and tags end up in the researcher's messages and logs."""
    frame = transport_module.control(transport_module.HELLO, hello)
    received, error = support.raw_stream(cluster, NAME, [frame])
    assert received == [] and error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "control or formatting characters" in error.details()
    assert "\x1b" not in error.details() and "\u202e" not in error.details()
    assert NAME not in cluster.transport.node_tags()


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ([["t" * 64] * 5000], "control frames have at most"),  # 330 kB of tags
        ([[] for _ in range(10000)], "more than 4096 lists and maps"),  # 10 kB, 10k lists
    ],
    ids=["oversized", "amplifying"],
)
def test_a_hello_that_would_cost_the_researcher_memory_is_refused_unparsed(cluster, tags, match):
    frame = transport_module.control(transport_module.HELLO, {**HELLO_BODY, "tags": tags})
    received, error = support.raw_stream(cluster, NAME, [frame])
    assert received == [] and error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert match in error.details(), error.details()
    assert NAME not in cluster.transport.node_tags()


def test_a_stream_that_never_says_hello_is_closed_after_hello_timeout(cluster, monkeypatch):
    monkeypatch.setattr(cluster.transport, "hello_timeout", 1.0)
    start = time.monotonic()
    received, error = support.raw_stream(cluster, NAME, [], timeout=30)
    seconds = time.monotonic() - start
    assert received == [] and error is not None, error
    assert seconds < 5.0, f"held for {seconds:.1f} s"
    assert any("no HELLO within hello_timeout=1 s" in r for r in cluster.transport.refused)


def test_one_credential_cannot_hold_the_connection_slots(cluster, monkeypatch):
    """A flood of silent streams with one valid token: two are admitted (and closed after
    hello_timeout), the rest refused at once, and an honest node connects meanwhile."""
    monkeypatch.setattr(cluster.transport, "hello_timeout", 3.0)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        flood = [pool.submit(support.raw_stream, cluster, NAME, [], 30) for _ in range(20)]
        start = time.monotonic()
        with support.fake_node(cluster, "fake-a", lambda payload: b"", tags=["honest"]):
            cluster.transport.wait_for_nodes(["honest"], names=["fake-a"], timeout=10)
            joined = time.monotonic() - start
        results = [future.result(timeout=60) for future in flood]
    codes = [error.code() for _, error in results if error is not None]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 18
    refused = [error for _, error in results if error is not None]
    assert any("already has 2 connections" in e.details() for e in refused if e.details())
    assert joined < 3.0, f"the honest node took {joined:.1f} s to connect"


# -- liveness: the researcher's heartbeat settings apply to every node -------------------------

QUICK_HEARTBEAT_NODES = {  # nodes with node.toml's default heartbeat_s (5 s)
    "steady": (60, [*support.TAGS, "idle"], {"approval": False}, {}),
    "stalled": (70, [*support.TAGS, "slow"], {"approval": False}, {}),
}


@pytest.fixture
def quick_heartbeats(tmp_path):
    """A researcher with heartbeat_s=0.5 (no request_timeout) and two node processes."""
    cluster = support.Cluster(tmp_path / "cluster", QUICK_HEARTBEAT_NODES, (), heartbeat_s=0.5)
    try:
        cluster.deployment.start_all()
        cluster.ensure()
        yield cluster
    finally:
        cluster.close()


def test_a_silent_node_is_dropped_after_the_heartbeat_timeout_and_reconnects(
    quick_heartbeats, tmp_path
):
    """The researcher's heartbeat_s applies to every node ("the researcher sets it for all"):
    a node stopped with SIGSTOP mid-round is dropped once silent for heartbeat_timeout, a live
    one never is, however idle (``steady`` takes no part in that round: only its heartbeats
    keep it connected)."""
    cluster = quick_heartbeats
    transport = cluster.transport
    assert transport.heartbeat_s == 0.5 and transport.request_timeout is None
    since = time.time()  # both nodes are connected
    exp = Experiment(
        nodes=transport,
        tags=["slow"],
        training_plan=support.SlowPlan,
        model_args={"n_features": support.N_FEATURES, "control": str(tmp_path)},
        training_args={"batch_size": 16, "epochs": 1},
        seed=0,
        on_node_failure="fail",
        progress=False,
    )
    assert exp.nodes == ["stalled"]
    future = support.in_thread(exp.run_once)
    support.wait_until(
        lambda: (tmp_path / "started").exists() or future.done(), 120, "training to start"
    )
    assert not future.done(), future

    pid = cluster.pid("stalled")
    os.kill(pid, signal.SIGSTOP)  # alive, but silent
    try:
        error = future.exception(timeout=60)
        assert isinstance(error, NodeError), repr(error)
        assert error.node == "stalled"
        assert "heartbeat" in str(error), str(error)
        assert "stalled" not in transport.node_tags()
        assert support.process_state(pid) in ("T", "t")  # still there, still stopped
    finally:
        os.kill(pid, signal.SIGCONT)
        (tmp_path / "release").touch()
    support.wait_until(lambda: "stalled" in transport.node_tags(), 60, "the node to reconnect")
    assert cluster.pid("stalled") == pid and cluster.deployment.procs["stalled"].poll() is None

    # the steady node, idle but alive all along, kept the connection it had before the round
    elapsed = time.time() - since
    assert elapsed > transport.heartbeat_timeout
    steady = {entry["name"]: entry for entry in transport.connected()}["steady"]
    assert steady["connected_s"] + 0.2 >= elapsed, (
        f"the live node 'steady' was dropped and reconnected: connected for "
        f"{steady['connected_s']} s of the last {elapsed:.1f} s; its log:\n" + cluster.log("steady")
    )
    assert cluster.log("steady").count("connected to") == 1, cluster.log("steady")

    row = support.run_round(
        Experiment(
            nodes=transport,
            tags=support.TAGS,
            training_plan=LogisticRegressionPlan,
            model_args={"n_features": support.N_FEATURES},
            training_args={"batch_size": 16, "epochs": 1},
            seed=0,
            progress=False,
        )
    )
    assert row["nodes"] == ["stalled", "steady"] and row["failures"] == {}


# -- what comes before HELLO -------------------------------------------------------------------


def test_the_first_frame_must_be_a_hello(cluster):
    """A frame of another kind is no HELLO, even when its body reads like one."""
    body = msgpack.packb(HELLO_BODY, use_bin_type=True)
    for kind in (transport_module.TASK, transport_module.DATA, 77):
        received, error = support.raw_stream(cluster, NAME, [bytes([kind]) + body], max_frames=1)
        kinds = [frame[0] for frame in received]
        assert kinds == [], f"a frame of kind {kind} was taken for a HELLO: received {kinds}"
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, error)
        assert "HELLO" in error.details(), (kind, error.details())
        assert NAME not in cluster.transport.node_tags()


def test_a_client_that_closes_before_hello_is_refused_with_that_reason(cluster):
    """The refusal says why, to the client and in the transport's ``refused`` list."""
    received, error = support.raw_stream(cluster, NAME, [], keep_open=False)
    assert received == [] and error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "closed before HELLO" in error.details(), error.details()
    assert "closed before HELLO" in cluster.transport.refused[-1], cluster.transport.refused
