"""A node decodes a request while its DATA frames arrive (:class:`Inbound`, Node.handle_stream):
the frames' payloads reach the decoder without a copy, and a request that never completes
(cancelled, superseded, the connection lost) never leaves the node waiting for it."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from fedplug import messages as msg
from fedplug.datasets import Dataset
from fedplug.errors import MessageError
from fedplug.node import Node

pytest.importorskip("grpc")

from fedplug_grpc.transport import (
    CANCEL,
    DATA,
    GRANT,
    READY,
    TASK,
    GrpcTransport,
    Inbound,
    NodeClient,
    ProtocolError,
    _NodeState,
    _Task,
    control,
    data_frames,
    frame_kind,
    parse_control,
)

PAYLOAD = bytes(range(256)) * 40


def test_an_inbound_message_yields_each_payload_as_a_view_of_its_frame():
    frames = list(data_frames(7, [PAYLOAD], 1000))
    inbound = Inbound(7, len(PAYLOAD))
    done = [inbound.add(frame) for frame in frames]
    assert done == [False] * (len(frames) - 1) + [True]
    views = list(inbound)
    assert b"".join(views) == PAYLOAD
    assert all(view.obj is frame for view, frame in zip(views, frames, strict=True))


def test_an_inbound_message_refuses_a_frame_that_does_not_continue_it():
    frames = list(data_frames(7, [PAYLOAD], 1000))
    with pytest.raises(ProtocolError, match="does not continue task 8"):
        Inbound(8, len(PAYLOAD)).add(frames[0])
    inbound = Inbound(7, len(PAYLOAD))
    inbound.add(frames[0])
    with pytest.raises(ProtocolError, match="at offset 2000"):
        inbound.add(frames[2])
    with pytest.raises(ProtocolError, match="does not continue"):
        Inbound(7, 999).add(frames[0])  # more bytes than announced


def test_frames_wait_for_a_slow_reader_once_it_has_started_and_not_before():
    frames = list(data_frames(7, [PAYLOAD], 1000))  # 11 frames
    waits = []
    inbound = Inbound(7, len(PAYLOAD), ahead=2, on_wait=lambda: waits.append(1))
    for frame in frames[:4]:  # no reader yet (the node is busy): kept, nothing waits
        inbound.add(frame)
    reading = iter(inbound)
    got = [next(reading)]  # the reader started; 3 frames wait, more than ahead=2
    adder = threading.Thread(target=lambda: [inbound.add(f) for f in frames[4:]], daemon=True)
    adder.start()
    adder.join(1.2)
    assert adder.is_alive() and len(inbound._items) == 3  # held back: the sender waits
    assert len(waits) >= 1  # and says every half second that the connection is alive
    got += list(reading)
    adder.join(10)
    assert not adder.is_alive()
    assert b"".join(got) == PAYLOAD


def test_the_reader_of_an_aborted_message_gets_an_error_naming_why():
    inbound = Inbound(7, len(PAYLOAD))
    got, failed = [], []

    def read():
        try:
            got.extend(inbound)
        except MessageError as exc:
            failed.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    inbound.add(next(data_frames(7, [PAYLOAD], 1000)))
    inbound.abort("the researcher cancelled the request")
    reader.join(10)
    assert not reader.is_alive()
    assert len(got) == 1
    assert failed == [f"the researcher cancelled the request after 1000 of {len(PAYLOAD)} bytes"]


def test_frames_that_arrive_once_the_reader_stopped_are_dropped():
    frames = list(data_frames(7, [PAYLOAD], 1000))
    inbound = Inbound(7, len(PAYLOAD))
    inbound.add(frames[0])
    reading = iter(inbound)
    next(reading)
    reading.close()  # e.g. the node refused the request from its header
    assert inbound.closed
    assert [inbound.add(frame) for frame in frames[1:]][-1] is True
    assert not inbound._items


# -- a node connection's state, fed frames by hand (no network) ---------------------------------
def _request(round_index: int) -> bytes:
    return msg.encode(
        msg.TrainRequest(
            experiment_id="exp-inbound",
            round_index=round_index,
            plan=msg.PlanRef(name="numpy-logreg"),
            model_args={"n_features": 2},
            training_args={"batch_size": 8, "epochs": 1, "seed": 0},
            tags=["inbound"],
            params={"weight": np.full((2, 2), 0.5), "bias": np.zeros(2)},
        )
    )


@pytest.fixture
def node_state():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2))
    node = Node("inbound", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=["inbound"]))
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    state = _NodeState(NodeClient(node, "127.0.0.1:1", "token"), outbox)
    yield node, state, outbox
    node.stop()


def _send(state: _NodeState, task: int, payload: bytes, frames: int | None = None) -> None:
    state.on_frame(control(TASK, {"task": task, "size": len(payload)}))
    for frame in list(data_frames(task, [payload], 100))[:frames]:
        state.on_frame(frame)


def _ready(outbox: queue.SimpleQueue, timeout: float = 30.0) -> dict:
    while True:
        item = outbox.get(timeout=timeout)
        if isinstance(item, bytes) and frame_kind(item) == READY:
            return parse_control(item, READY, {"task": int, "size": int})


def _reply(state: _NodeState, outbox: queue.SimpleQueue, task: int) -> msg.Message:
    state.on_frame(control(GRANT, {"task": task}))
    frames = outbox.get(timeout=10)
    return msg.decode(b"".join(bytes(memoryview(f)[17:]) for f in frames))


def test_a_request_is_served_while_it_arrives(node_state):
    _, state, outbox = node_state
    _send(state, 1, _request(0))
    ready = _ready(outbox)
    assert ready["task"] == 1
    reply = _reply(state, outbox, 1)
    assert isinstance(reply, msg.TrainReply) and reply.n_samples > 0


@pytest.mark.parametrize("how", ["cancel", "connection lost", "replaced"])
def test_a_request_that_never_completes_does_not_hold_the_node(node_state, how):
    node, state, outbox = node_state
    payload = _request(0)
    _send(state, 1, payload, frames=3)  # 300 of its bytes, then nothing more
    if how == "cancel":
        state.on_frame(control(CANCEL, {"task": 1}))
    elif how == "connection lost":
        state.close()
    if how == "connection lost":  # the node's lock is free again: the reader gave up
        assert node._lock.acquire(timeout=10)
        node._lock.release()
        return
    _send(state, 2, _request(1))
    ready = _ready(outbox)
    if how == "replaced":  # the unfinished request got its error reply first
        assert ready["task"] == 1
        ready = _ready(outbox)
    assert ready["task"] == 2
    assert isinstance(_reply(state, outbox, 2), msg.TrainReply)
    if how == "cancel":  # no reply announced for the cancelled request
        while not outbox.empty():
            item = outbox.get_nowait()
            assert not (isinstance(item, bytes) and frame_kind(item) == READY)


def test_a_reply_being_sent_stops_when_the_next_request_comes(node_state):
    """The reply's frames are views of the plan, which the next request overwrites: they must
    not go on once it is announced."""
    _, state, outbox = node_state
    _send(state, 1, _request(0))
    assert _ready(outbox)["task"] == 1
    state.on_frame(control(GRANT, {"task": 1}))
    frames = outbox.get(timeout=10)
    first = next(frames)
    assert frame_kind(first) == DATA
    _send(state, 2, _request(1))
    assert list(frames) == []  # nothing more of task 1
    assert _ready(outbox)["task"] == 2


@pytest.mark.parametrize("answer", ["ready", "failed"])
def test_the_researcher_stops_sending_a_request_its_node_has_answered(answer):
    """A node answers before its whole request arrived only when it refused it from its header
    (an unapproved plan, wrong shapes): the rest of a large model is not sent for nothing."""
    transport = GrpcTransport("127.0.0.1:0", chunk_bytes=1000)
    try:
        task = _Task(5, "node", None)
        frames = transport._sending(task, [PAYLOAD])
        sent = [next(frames), next(frames)]
        task.state = answer  # READY from the node, or the task failed
        sent += list(frames)
        assert len(sent) == 2 and task.state == answer
        whole = _Task(6, "node", None)
        assert len(list(transport._sending(whole, [PAYLOAD]))) == 11
        assert whole.state == "running"
    finally:
        transport.close()
