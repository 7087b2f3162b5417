"""What one bad node can no longer do to an experiment (issue 16, items 4, 5, 10 and 13): make a
decoder raise something else than MessageError, crash the experiment with an unexpected
exception, poison the global model with an overflowing aggregate, hang its own reply, or report a
negative number of samples."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedplug import (
    AggregationError,
    Experiment,
    FedAverage,
    LogisticRegressionPlan,
    Node,
    hookimpl,
)
from fedplug import messages as msg
from fedplug.errors import MessageError

MODEL_ARGS = {"n_features": 4}
DTYPES = ["<f4", "<f8", "<i8", "|u1", "|b1", "<c16", "x", 3]


def with_array(shape, dtype="<f8", offset=0, nbytes=0) -> bytes:
    """An EvaluateReply-shaped TrainReply whose one array's header says ``shape``."""
    good = msg.encode(msg.TrainReply("e", 0, "n", {"w": np.zeros(0)}, 1, 1, 0.0, 0.0))
    header, start = msg.read_header(good)
    header["body"]["params"]["w"] = [dtype, shape, offset, nbytes]
    packed = msgpack.packb(header, use_bin_type=True)
    return struct.pack("<I", len(packed)) + packed + bytes(good[start:]) + bytes(nbytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(min_value=-3, max_value=2**64 - 1), max_size=40),
    dtype=st.sampled_from(DTYPES),
    offset=st.integers(min_value=-1, max_value=64),
    nbytes=st.integers(min_value=0, max_value=64),
    split=st.integers(min_value=1, max_value=200),
)
def test_decoders_raise_only_message_errors_whatever_the_shape(shape, dtype, offset, nbytes, split):
    data = with_array(shape, dtype, offset, nbytes)
    pieces = [data[i : i + split] for i in range(0, len(data), split)]
    for decode in (
        lambda: msg.decode(data),
        lambda: msg.decode_stream([data], len(data)),
        lambda: msg.decode_stream(pieces, len(data)),
    ):
        with contextlib.suppress(MessageError):  # anything else fails the test
            decode()


def test_a_zero_size_array_with_a_huge_dimension_is_a_message_error():
    data = with_array([0, 2**63])
    for decode in (msg.decode, lambda d: msg.decode_stream([d[:7], d[7:]], len(d))):
        with pytest.raises(MessageError, match="has a dimension over"):
            decode(data)


class Forger(Node):
    """Trains honestly, then replaces its training reply by ``forge(reply)`` (bytes)."""

    forge = None

    def serve(self, request, size=None):
        reply = msg.decode(b"".join(super().serve(request, size)))
        if isinstance(reply, msg.TrainReply) and self.forge is not None:
            return [self.forge(reply)]
        return [msg.encode(reply)]


def experiment(nodes, **kwargs):
    return Experiment(
        nodes=nodes,
        training_plan="numpy-logreg",
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20, "test_ratio": 0.25},
        round_limit=2,
        seed=0,
        **kwargs,
    )


def test_a_reply_with_an_impossible_shape_fails_its_node_not_the_experiment(make_nodes):
    good = make_nodes((60, 80))
    [bad] = make_nodes((70,), tags=good[0].datasets[0].tags, node_cls=Forger)
    bad.forge = lambda reply: with_array([0, 2**63])
    exp = experiment([*good, bad], on_node_failure="skip")
    row = exp.run_once()
    assert row["nodes"] == [node.name for node in good]
    assert "has a dimension over" in row["failures"][bad.name]


class Fragile(FedAverage):
    """An aggregator with a bug that one node's reply triggers (not a fedplug error)."""

    victim = ""

    def add(self, node, params, n_samples):
        if node == self.victim:
            raise ZeroDivisionError("a third party's aggregator bug")
        super().add(node, params, n_samples)


def test_an_unexpected_exception_on_one_reply_fails_that_node_only(make_nodes):
    nodes = make_nodes()
    aggregator = Fragile()
    aggregator.streams = False  # every reply through add()
    aggregator.victim = nodes[1].name
    exp = experiment(nodes, aggregator=aggregator, on_node_failure="skip")
    row = exp.run_once()
    assert row["nodes"] == [nodes[0].name, nodes[2].name]
    assert "ZeroDivisionError: a third party's aggregator bug" in row["failures"][nodes[1].name]
    with pytest.raises(Exception, match="a third party's aggregator bug"):  # fail: it stops
        experiment(nodes, aggregator=aggregator).run_once()


def test_finite_values_that_overflow_the_aggregate_fail_the_round_atomically(make_nodes, tmp_path):
    nodes = make_nodes((60, 80, 100), node_cls=Forger)
    huge = np.finfo(np.float64).max

    def overflow(reply):
        reply.params = {name: np.full_like(value, huge) for name, value in reply.params.items()}
        return msg.encode(reply)

    exp = experiment(nodes, on_node_failure="skip", checkpoint_dir=tmp_path)
    exp.run_once()
    before = {name: value.copy() for name, value in exp.global_params.items()}
    for node in nodes[:2]:
        node.forge = overflow
    with pytest.raises(AggregationError) as info:
        exp.run_once()
    text = str(info.value)
    assert "is not finite in ['bias', 'weight']" in text and "not applied" in text
    assert all(node.name in text for node in nodes)  # the suspects
    assert exp.round_index == 1 and len(exp.history) == 1
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == ["round-00001.npz"]
    for name, value in before.items():
        assert np.array_equal(exp.global_params[name], value)
    for node in nodes:  # the nodes behave again: training goes on from the last good model
        node.forge = None
    assert exp.run_once()["round"] == 1


class ComplexPlan(LogisticRegressionPlan):
    """A plan whose trained parameters no message can carry (complex numbers)."""

    trained = False

    def train(self, dataset, args):
        self.trained = True
        return super().train(dataset, args)

    def parameter_views(self):
        views = super().parameter_views()
        if self.trained:
            return {name: value.astype(np.complex128) for name, value in views.items()}
        return views


class ComplexPlans:
    @hookimpl
    def fedplug_register_training_plans(self, register):
        register("complex-logreg", ComplexPlan)


def test_a_reply_that_cannot_be_encoded_becomes_an_error_reply(make_nodes):
    [node] = make_nodes((40,))
    node.pm.register(ComplexPlans(), name="complex-plans")
    params = LogisticRegressionPlan(MODEL_ARGS).get_parameters()
    ref = msg.PlanRef(name="complex-logreg")
    request = msg.TrainRequest("exp", 0, ref, MODEL_ARGS, {}, [], params)
    reply = msg.decode(b"".join(node.serve(msg.encode(request))))
    assert isinstance(reply, msg.ErrorReply), reply
    assert reply.error == "MessageError" and "unsupported dtype complex128" in reply.message
    assert (reply.experiment_id, reply.round_index) == ("exp", 0)


def test_negative_sample_counts_are_refused(make_nodes):
    good = make_nodes((60, 80))
    [bad] = make_nodes((70,), tags=good[0].datasets[0].tags, node_cls=Forger)

    class Negative(Forger):
        def serve(self, request, size=None):
            reply = msg.decode(b"".join(Node.serve(self, request, size)))
            if isinstance(reply, msg.EvaluateReply):
                reply.n_samples = -200
            return [msg.encode(reply)]

    bad.__class__ = Negative
    exp = experiment([*good, bad], on_node_failure="skip")
    row = exp.run_once()
    assert row["nodes"] == sorted(node.name for node in [*good, bad])  # training was fine
    assert "reports -200 samples" in row["validation_failures"][bad.name]
    assert bad.name not in row["validation"]
    assert 0.0 <= row["validation_global"]["accuracy"] <= 1.0


# -- item 3: decoder amplification ----------------------------------------------------------


def header_of_empty_maps(n: int, type_name: str = "ErrorReply") -> bytes:
    """A message whose header's body is an array of ``n`` empty maps (one byte each)."""
    body = b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    envelope = (
        b"\x83"
        + msgpack.packb("fedplug")
        + msgpack.packb(msg.VERSION)
        + msgpack.packb("type")
        + msgpack.packb(type_name)
        + msgpack.packb("body")
        + body
    )
    return struct.pack("<I", len(envelope)) + envelope


@pytest.mark.parametrize("how", ["whole", "streamed"])
def test_a_header_of_empty_containers_costs_bounded_memory(how):
    data = header_of_empty_maps(4 << 20)  # 4 MiB: about 300 MiB of Python objects before
    tracemalloc.start()
    try:
        with pytest.raises(MessageError, match="more than 200000 lists and maps"):
            if how == "whole":
                msg.decode(data)
            else:
                msg.decode_stream(
                    [data[i : i + 65536] for i in range(0, len(data), 65536)], len(data)
                )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, f"{peak >> 20} MiB for a 4 MiB header"


def test_a_header_over_the_limit_is_refused_before_it_is_read():
    data = header_of_empty_maps(2 << 20)
    taken = []

    def chunks():
        for i in range(0, len(data), 4096):
            taken.append(i)
            yield data[i : i + 4096]

    with pytest.raises(MessageError, match="exceeds the limit of 1048576 bytes"):
        msg.decode_stream(chunks(), len(data), max_header_bytes=msg.REPLY_HEADER_BYTES)
    assert len(taken) == 1  # its length was enough
    with pytest.raises(MessageError, match="exceeds the limit of 1048576 bytes"):
        msg.decode(data, max_header_bytes=msg.REPLY_HEADER_BYTES)


def test_the_researcher_reads_replies_with_a_small_header_limit(make_nodes):
    good = make_nodes((60, 80))
    [bad] = make_nodes((70,), tags=good[0].datasets[0].tags, node_cls=Forger)
    bad.forge = lambda reply: msg.encode(
        msg.ErrorReply(reply.experiment_id, reply.round_index, reply.node, "E", "x" * (2 << 20))
    )
    row = experiment([*good, bad], on_node_failure="skip").run_once()
    assert row["nodes"] == [node.name for node in good]
    assert "exceeds the limit of 1048576 bytes" in row["failures"][bad.name]
