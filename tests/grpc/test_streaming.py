"""Replies folded in while they arrive (``dispatch(..., streams=True)``): the researcher never
holds a whole reply, so a reply that fails halfway (a NaN deep inside it, a node that hangs up in
the middle) has already been partly summed. The round is then folded again from the replies
accepted so far, which their nodes send again; the result must be the same, bit for bit, as
FedAvg over the nodes that succeeded."""

from __future__ import annotations

import importlib.util
import logging
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedplug import Experiment
from fedplug import messages as msg
from fedplug.aggregators import FedAverage
from fedplug.numpy_plan import LogisticRegressionPlan

grpc = pytest.importorskip("grpc")

from fedplug_grpc import transport as transport_module  # noqa: E402

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_streaming", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support
_spec.loader.exec_module(support)

TAGS = ["streamed"]
FEATURES = 3000  # "weight" is 3000 x 2 float64: 48 kB, a dozen 4 kB frames
CHUNK = 4096 - 3  # frames that split elements: every piece boundary falls mid-float
SAMPLES = {"fake-a": 3, "fake-b": 5, "fake-nan": 7, "hangup": 11, "staller": 13}


def reply_to(payload, name: str, scale: float, poison: bool = False) -> msg.TrainReply:
    """The global model times ``scale`` (weight first, then bias); with ``poison``, the last
    element of the weight is NaN: found only after most of the reply was folded in."""
    request = msg.decode(payload, msg.TrainRequest)
    weight = np.array(request.params["weight"]) * scale + scale
    if poison:
        weight[-1, -1] = np.nan
    return msg.TrainReply(
        experiment_id=request.experiment_id,
        round_index=request.round_index,
        node=name,
        params={"weight": weight, "bias": np.array(request.params["bias"]) * scale - scale},
        n_samples=SAMPLES[name],
        n_steps=1,
        train_loss=0.5,
        duration_s=0.0,
    )


def fake(cluster, name: str, scale: float, poison: bool = False):
    return support.fake_node(
        cluster,
        name,
        lambda payload: msg.encode(reply_to(payload, name, scale, poison)),
        tags=TAGS,
        chunk_bytes=CHUNK,
    )


def experiment(cluster) -> Experiment:
    return Experiment(
        nodes=cluster.transport,
        tags=TAGS,
        training_plan=LogisticRegressionPlan,
        model_args={"n_features": FEATURES},
        training_args={"batch_size": 16, "epochs": 1},
        validate=False,
        on_node_failure="skip",
        seed=0,
        progress=False,
    )


GOOD = (("fake-a", 2.0), ("fake-b", -0.5))  # the fakes that reply well, and their scales


def expected_fedavg(exp: Experiment, before: dict, nodes=GOOD) -> dict:
    """FedAvg of the replies of ``nodes`` to the last round's request, computed here."""
    payload = msg.encode(
        msg.TrainRequest(
            experiment_id=exp.id,
            round_index=exp.round_index - 1,
            plan=exp.plan_ref,
            model_args={},
            training_args={},
            tags=TAGS,
            params=before,
        )
    )
    replies = [reply_to(payload, name, scale) for name, scale in nodes]
    return FedAverage().aggregate(before, [(r.node, r.params, r.n_samples) for r in replies])


@pytest.fixture
def streamed(cluster, monkeypatch):
    """The cluster, granting no reply early: every reply is streamed at its turn."""
    monkeypatch.setattr(cluster.transport, "early_reply_bytes", 0)
    return cluster


def test_a_nan_deep_in_a_reply_is_folded_out_exactly(streamed, caplog):
    with (
        fake(streamed, "fake-a", 2.0),
        fake(streamed, "fake-b", -0.5),
        fake(streamed, "fake-nan", 1.5, poison=True),
    ):
        exp = experiment(streamed)
        assert exp.nodes == ["fake-a", "fake-b", "fake-nan"]
        for _ in range(2):  # the transport is still sound after a reply was abandoned
            before = {k: np.array(v, copy=True) for k, v in exp.global_params.items()}
            with caplog.at_level(logging.WARNING, logger="fedplug.experiment"):
                row = support.run_round(exp)
            assert row["nodes"] == ["fake-a", "fake-b"]
            assert set(row["failures"]) == {"fake-nan"}
            assert "NaN" in row["failures"]["fake-nan"], row["failures"]
            for name, value in expected_fedavg(exp, before).items():
                assert np.array_equal(exp.global_params[name], value), name
            assert any("folding round" in r.getMessage() for r in caplog.records)
            caplog.clear()


def test_the_stream_without_failures_gives_the_whole_reply_sum(streamed):
    """No failure, no second pass: streamed pieces sum exactly like whole replies."""
    with fake(streamed, "fake-a", 2.0), fake(streamed, "fake-b", -0.5):
        exp = experiment(streamed)
        before = {k: np.array(v, copy=True) for k, v in exp.global_params.items()}
        row = support.run_round(exp)
        assert row["nodes"] == ["fake-a", "fake-b"] and row["failures"] == {}
        for name, value in expected_fedavg(exp, before).items():
            assert np.array_equal(exp.global_params[name], value), name


class RawClient:
    """A raw client speaking the frame protocol by hand, named ``name``: says HELLO, answers
    each task with :meth:`reply` (READY), and on GRANT calls :meth:`granted_reply`."""

    name = "raw"

    def __init__(self, cluster) -> None:
        self.cluster, self.outbox = cluster, queue.SimpleQueue()
        self.stop, self.granted = threading.Event(), threading.Event()
        self.reply, self.task = b"", 0
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"test-{self.name}")
        self.thread.start()

    def requests(self):
        hello = {"name": self.name, "tags": [TAGS], "wire": msg.VERSION}
        yield transport_module.control(transport_module.HELLO, hello)
        while (frame := self.outbox.get()) is not None:
            yield frame

    def reply_to(self, request: bytes) -> bytes:
        raise NotImplementedError

    def granted_reply(self, task: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.cluster.ca)
        with grpc.secure_channel(self.cluster.address, credentials) as channel:
            call = channel.stream_stream(transport_module.METHOD)(
                self.requests(),
                metadata=(("authorization", f"Bearer {self.cluster.token(self.name)}"),),
                timeout=120,
            )
            receiver = None
            try:
                for frame in call:
                    kind = frame[0]
                    if kind == transport_module.TASK:
                        body = transport_module.parse_control(
                            frame, kind, {"task": int, "size": int}
                        )
                        receiver = transport_module.Receiver(body["task"], body["size"])
                    elif kind == transport_module.DATA and receiver.add(frame):
                        self.reply, self.task = (
                            self.reply_to(bytes(receiver.message())),
                            receiver.task,
                        )
                        ready = {"task": receiver.task, "size": len(self.reply)}
                        self.outbox.put(transport_module.control(transport_module.READY, ready))
                    elif kind == transport_module.GRANT:
                        self.granted.set()
                        body = transport_module.parse_control(frame, kind, {"task": int})
                        self.granted_reply(body["task"])
            except grpc.RpcError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.outbox.put(None)
        self.thread.join(30)


class HangUp(RawClient):
    """A raw client named "hangup": answers its task with a reply whose first half it sends
    when granted, then ends its stream."""

    name = "hangup"

    def __init__(self, cluster, on_grant=lambda: None) -> None:
        self.on_grant = on_grant
        super().__init__(cluster)

    def reply_to(self, request: bytes) -> bytes:
        return msg.encode(reply_to(request, self.name, 3.0))

    def granted_reply(self, task: int) -> None:
        self.on_grant()
        half = self.reply[: len(self.reply) // 2]
        for piece in transport_module.data_frames(task, [half], CHUNK):
            self.outbox.put(piece)
        self.outbox.put(None)  # ends this side: the researcher sees it close


def test_a_node_that_hangs_up_halfway_through_its_reply_is_folded_out_exactly(streamed, caplog):
    with fake(streamed, "fake-a", 2.0), fake(streamed, "fake-b", -0.5):
        client = HangUp(streamed)
        try:
            streamed.transport.wait_for_nodes(TAGS, names=["hangup"], timeout=60)
            exp = experiment(streamed)
            assert exp.nodes == ["fake-a", "fake-b", "hangup"]
            before = {k: np.array(v, copy=True) for k, v in exp.global_params.items()}
            with caplog.at_level(logging.WARNING, logger="fedplug.experiment"):
                row = support.run_round(exp, timeout=60)
        finally:
            client.close()
        assert client.granted.is_set()
        assert row["nodes"] == ["fake-a", "fake-b"]
        assert set(row["failures"]) == {"hangup"}
        assert "closed" in row["failures"]["hangup"], row["failures"]
        for name, value in expected_fedavg(exp, before).items():
            assert np.array_equal(exp.global_params[name], value), name
        assert any("folding round" in r.getMessage() for r in caplog.records)


def test_a_node_gone_before_its_reply_is_folded_again_fails_too(streamed):
    """fake-a's reply was folded in, then fake-a disconnects, then hangup fails halfway: the
    second pass cannot get fake-a's reply again, so the round is fake-b's alone."""
    with fake(streamed, "fake-a", 2.0) as a, fake(streamed, "fake-b", -0.5):

        def stop_fake_a() -> None:
            a.client.stop()
            support.wait_until(
                lambda: "fake-a" not in streamed.transport.node_tags(), 30, "fake-a to go"
            )

        client = HangUp(streamed, on_grant=stop_fake_a)
        try:
            streamed.transport.wait_for_nodes(TAGS, names=["hangup"], timeout=60)
            exp = experiment(streamed)
            before = {k: np.array(v, copy=True) for k, v in exp.global_params.items()}
            row = support.run_round(exp, timeout=60)
        finally:
            client.close()
    assert row["nodes"] == ["fake-b"]
    assert set(row["failures"]) == {"fake-a", "hangup"}
    assert "received again" in row["failures"]["fake-a"], row["failures"]
    for name, value in expected_fedavg(exp, before, [GOOD[1]]).items():
        assert np.array_equal(exp.global_params[name], value), name


class Staller(RawClient):
    """A raw client named "staller" that keeps its connection alive (a heartbeat a second) but,
    once its reply is granted, sends ``sent`` of it (a fraction) at ``frames_per_s``, then
    nothing more: what a broken or hostile node does to hold a round."""

    name = "staller"

    def __init__(self, cluster, sent: float, frames_per_s: float = 1000.0) -> None:
        self.sent, self.delay = sent, 1.0 / frames_per_s
        super().__init__(cluster)
        threading.Thread(target=self.heartbeats, daemon=True).start()

    def heartbeats(self) -> None:
        while not self.stop.wait(1.0):
            self.outbox.put(transport_module.control(transport_module.HEARTBEAT, {"busy": ""}))

    def reply_to(self, request: bytes) -> bytes:
        return msg.encode(reply_to(request, self.name, 3))

    def granted_reply(self, task: int) -> None:
        threading.Thread(target=self.send, args=(task, self.reply), daemon=True).start()

    def send(self, task: int, reply: bytes) -> None:
        part = reply[: int(len(reply) * self.sent)]
        for piece in transport_module.data_frames(task, [part], CHUNK):
            if self.stop.wait(self.delay):
                return
            self.outbox.put(piece)


@pytest.mark.parametrize(
    ("where", "sent", "frames_per_s", "timeouts", "match"),
    [
        # nothing after READY: the stall bound (the default is the heartbeat timeout)
        ("streamed", 0.0, 1000.0, {"stall_timeout": 2.0}, "stalled: no reply data"),
        # half of it, then silence, granted early (assembled in a buffer) or streamed
        ("cluster", 0.5, 1000.0, {"stall_timeout": 2.0}, "stalled: no reply data"),
        ("streamed", 0.5, 1000.0, {"stall_timeout": 2.0}, "stalled: no reply data"),
        # a frame every 1.5 s: never stalled, but the whole reply would take a minute
        ("streamed", 1.0, 0.66, {"request_timeout": 4.0}, "within request_timeout=4 s"),
    ],
    ids=["nothing", "half-buffered", "half-streamed", "trickle"],
)
def test_a_node_that_stops_sending_its_granted_reply_fails_in_bounded_time(
    request, monkeypatch, where, sent, frames_per_s, timeouts, match
):
    cluster = request.getfixturevalue(where)
    for name, value in timeouts.items():
        monkeypatch.setattr(cluster.transport, name, value)
    with fake(cluster, "fake-a", 2.0), fake(cluster, "fake-b", -0.5):
        client = Staller(cluster, sent, frames_per_s)
        try:
            cluster.transport.wait_for_nodes(TAGS, names=["staller"], timeout=60)
            exp = experiment(cluster)
            assert exp.nodes == ["fake-a", "fake-b", "staller"]
            before = {k: np.array(v, copy=True) for k, v in exp.global_params.items()}
            start = time.monotonic()
            row = support.run_round(exp, timeout=60)
            seconds = time.monotonic() - start
        finally:
            client.close()
    assert client.granted.is_set()
    assert row["nodes"] == ["fake-a", "fake-b"]
    assert match in row["failures"]["staller"], row["failures"]
    bound = max(timeouts.values())
    assert seconds < bound + 3.0, f"the round took {seconds:.1f} s with a bound of {bound} s"
    for name, value in expected_fedavg(exp, before).items():
        assert np.array_equal(exp.global_params[name], value), name
