"""Node.serve with a request in pieces: decoded while it arrives, its parameters written straight
into the plan (what a gRPC node does), with the replies the whole request gets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedplug import messages as msg
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug.planref import source_hash

MODEL_ARGS = {"n_features": 4}
TRAINING_ARGS = {"batch_size": 16, "epochs": 1, "test_ratio": 0.25, "seed": 3}
PARAMS = {"weight": np.linspace(-1.0, 1.0, 8).reshape(4, 2), "bias": np.array([0.25, -0.5])}


def train_request(params: dict | None = None, round_index: int = 0) -> msg.TrainRequest:
    return msg.TrainRequest(
        experiment_id="exp-stream",
        round_index=round_index,
        plan=msg.PlanRef(name="numpy-logreg"),
        model_args=MODEL_ARGS,
        training_args=TRAINING_ARGS,
        tags=[],
        params=PARAMS if params is None else params,
    )


def evaluate_request(params: dict | None = None) -> msg.EvaluateRequest:
    request = train_request(params)
    return msg.EvaluateRequest(
        request.experiment_id, 0, request.plan, MODEL_ARGS, TRAINING_ARGS, [], request.params
    )


def pieces(payload: bytes, size: int) -> list[memoryview]:
    view = memoryview(payload)
    return [view[i : i + size] for i in range(0, len(view), size)]


def streamed(node, request, chunk: int = 1000) -> msg.Message:
    payload = msg.encode(request) if not isinstance(request, bytes) else request
    return msg.decode(b"".join(node.serve(pieces(payload, chunk), len(payload))))


def whole(node, request) -> msg.Message:
    return msg.decode(b"".join(node.serve(msg.encode(request))))


def same_reply(a: msg.Message, b: msg.Message) -> None:
    assert type(a) is type(b)
    for name in ("params", "metrics", "n_samples", "n_steps", "train_loss"):
        left, right = getattr(a, name, None), getattr(b, name, None)
        if name == "params" and left is not None:
            assert set(left) == set(right)
            for key in left:
                assert np.array_equal(left[key], right[key]), key
        else:
            assert left == right, name


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1 << 20])
@pytest.mark.parametrize("make", [train_request, evaluate_request], ids=["train", "evaluate"])
def test_a_streamed_request_gets_the_reply_the_whole_request_gets(make_nodes, make, chunk):
    """Any split of the request, down to one byte (an element split across pieces)."""
    a, b = make_nodes((40, 40), seed=5)
    b.datasets = a.datasets  # the same data: the same training
    if make is evaluate_request:  # evaluate a session's plan
        whole(a, train_request())
        whole(b, train_request())
    reply = streamed(a, make(), chunk)
    assert not isinstance(reply, msg.ErrorReply), reply
    same_reply(reply, whole(b, make()))


def test_parameters_go_straight_into_the_plan_without_set_parameters(make_nodes, monkeypatch):
    [node] = make_nodes((40,))
    [reference] = make_nodes((40,))
    reference.datasets = node.datasets
    whole(node, train_request())  # the session and its plan exist from here on
    plan = node._sessions["exp-stream"].plan
    buffers = plan.parameter_buffers()
    loaded = []
    real = LogisticRegressionPlan.set_parameters
    monkeypatch.setattr(
        LogisticRegressionPlan,
        "set_parameters",
        lambda self, params: (loaded.append(self), real(self, params))[1],
    )
    sent = {"weight": np.full((4, 2), 0.125), "bias": np.array([1.0, -1.0])}
    reply = streamed(node, evaluate_request(sent), chunk=5)
    assert loaded == []
    for name, value in sent.items():  # the plan's own arrays hold what was sent
        assert plan.parameter_buffers()[name] is buffers[name]
        assert np.array_equal(buffers[name], value)
    whole(reference, train_request())
    same_reply(reply, whole(reference, evaluate_request(sent)))
    assert loaded == []  # a request in one piece is written into the plan the same way


def test_a_plan_without_buffers_is_loaded_through_set_parameters(make_nodes, monkeypatch):
    monkeypatch.setattr(LogisticRegressionPlan, "parameter_buffers", lambda self: None)
    a, b = make_nodes((40, 40))
    b.datasets = a.datasets
    reply = streamed(a, train_request(), chunk=3)
    assert isinstance(reply, msg.TrainReply)
    same_reply(reply, whole(b, train_request()))


def test_a_nan_that_arrives_late_is_refused_and_leaves_no_trace_in_the_next_round(make_nodes):
    a, b = make_nodes((40, 40))
    b.datasets = a.datasets
    same_reply(streamed(a, train_request()), whole(b, train_request()))  # round 0: a session
    bad = {"weight": PARAMS["weight"], "bias": np.array([0.0, np.nan])}  # bias: the last array
    reply = streamed(a, train_request(bad, round_index=1), chunk=16)
    assert isinstance(reply, msg.ErrorReply) and reply.error == "MessageError"
    assert "NaN" in reply.message and "bias" in reply.message
    assert reply.experiment_id == "exp-stream"
    # weight was written into the plan before the NaN arrived; the next request loads all again
    assert np.array_equal(
        a._sessions["exp-stream"].plan.parameter_buffers()["weight"], bad["weight"]
    )
    same_reply(streamed(a, train_request(round_index=1)), whole(b, train_request(round_index=1)))


def test_a_wrong_shape_is_refused_before_any_parameter_is_written(make_nodes):
    [node] = make_nodes((40,))
    whole(node, train_request())
    before = {k: v.copy() for k, v in node._sessions["exp-stream"].plan.get_parameters().items()}
    wrong = {"weight": np.ones((2, 4)), "bias": np.ones(2)}
    reply = streamed(node, train_request(wrong, round_index=1))
    assert isinstance(reply, msg.ErrorReply)
    assert "do not match the plan's model" in reply.message and "weight" in reply.message
    after = node._sessions["exp-stream"].plan.get_parameters()
    for name, value in before.items():
        assert np.array_equal(after[name], value), name


@pytest.mark.parametrize("cut", [3, 40, -1], ids=["in-length", "in-header", "last-byte"])
def test_a_request_that_stops_short_gets_an_error_reply(make_nodes, cut):
    [node] = make_nodes((40,))
    payload = msg.encode(train_request())
    reply = msg.decode(b"".join(node.serve(pieces(payload[:cut], 10), len(payload))))
    assert isinstance(reply, msg.ErrorReply) and reply.error == "MessageError"
    assert f"of {len(payload)} bytes" in reply.message
    assert isinstance(streamed(node, train_request()), msg.TrainReply)  # still serving


def test_garbage_and_unexpected_messages_get_the_replies_whole_ones_get(make_nodes):
    [node] = make_nodes((40,))
    for payload in (b"\x05\x00\x00\x00garbage!", msg.encode(msg.ErrorReply("e", 0, "x", "E", "m"))):
        reply = streamed(node, payload, chunk=4)
        assert isinstance(reply, msg.ErrorReply) and reply.error == "MessageError"
        assert reply.message == msg.decode(b"".join(node.serve(payload))).message


def test_an_unapproved_plan_is_refused_from_its_header(make_nodes):
    [node] = make_nodes((40,), approval=True)
    source = "class Shipped:\n    pass\n"
    ref = msg.PlanRef(source=source, class_name="Shipped", sha256=source_hash(source))
    request = replace(train_request(), plan=ref)
    payload = msg.encode(request)
    taken = []

    def chunks():
        for piece in pieces(payload, 64):
            taken.append(len(piece))
            yield piece

    reply = msg.decode(b"".join(node.serve(chunks(), len(payload))))
    assert isinstance(reply, msg.ErrorReply) and "not approved" in reply.message
    assert sum(taken) < len(payload)  # refused before its parameters were read


def test_serve_replies_from_the_plans_own_parameters(make_nodes):
    """What a gRPC node sends: the reply's bytes, the parameters not copied but views of the
    plan's, valid until the node's next request."""
    a, b = make_nodes((40, 40))
    b.datasets = a.datasets
    payload = msg.encode(train_request())
    parts = a.serve(pieces(payload, 100), len(payload))
    expected = b"".join(b.serve(payload))
    same_reply(msg.decode(b"".join(parts)), msg.decode(expected))  # but duration_s
    weight = a._sessions["exp-stream"].plan.parameter_views()["weight"]
    assert any(np.shares_memory(np.frombuffer(part, np.uint8), weight) for part in parts[1:])
