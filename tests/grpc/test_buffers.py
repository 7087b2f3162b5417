"""A node's message buffers, reused from round to round (:class:`Recycler`): never while
anything still refers to one, and a real node over gRPC gives the same model with and without
reuse."""

from __future__ import annotations

import importlib.util
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from fedplug import Experiment
from fedplug.datasets import Dataset
from fedplug.node import Node
from fedplug.numpy_plan import LogisticRegressionPlan

pytest.importorskip("grpc")

from fedplug.transport.grpc import NodeClient, Recycler

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_buffers", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)


MIB = 1 << 20


def test_a_free_buffer_is_handed_out_again_for_a_message_that_fits():
    recycler = Recycler()
    first = recycler.take(4 * MIB)
    assert first.shape == (4 * MIB,) and first.dtype == np.uint8
    base = weakref.ref(first.base)  # holding the buffer itself would keep it from reuse
    del first
    again = recycler.take(4 * MIB + 100)  # a header a few bytes longer still fits
    assert again.base is base() and again.shape == (4 * MIB + 100,) and recycler.reused == 1
    del again
    smaller = recycler.take(3 * MIB)
    assert smaller.base is base() and recycler.reused == 2
    del smaller
    assert recycler.take(MIB).base is not base()  # less than half of it: a buffer of its own
    assert recycler.take(5 * MIB).base is not base()  # too large
    assert recycler.take(100).base is None and recycler.reused == 2  # small: never kept


@pytest.mark.parametrize(
    "hold",
    [
        lambda b: b[10:20],  # a view
        lambda b: memoryview(b),
        lambda b: np.frombuffer(memoryview(b), np.float32),  # what decode() makes
        lambda b: b,  # the buffer itself, still held
    ],
    ids=["view", "memoryview", "decoded-array", "buffer"],
)
def test_a_buffer_something_refers_to_is_never_handed_out(hold):
    recycler = Recycler()
    buffer = recycler.take(MIB)
    buffer[:] = 7
    held = hold(buffer)
    del buffer
    fresh = recycler.take(MIB)
    fresh[:] = 0
    assert not np.shares_memory(fresh, np.asarray(held))
    assert np.all(np.asarray(held).view(np.uint8) == 7)
    assert recycler.reused == 0


def test_only_the_most_recently_used_buffers_are_kept():
    recycler = Recycler(keep=2)
    bases = [weakref.ref(recycler.take(size * MIB).base) for size in (2, 3, 4)]
    assert bases[0]() is None  # 2 MiB fell out (and nothing else held it)
    assert recycler.take(4 * MIB).base is bases[2]() and recycler.take(3 * MIB).base is bases[1]()
    assert recycler.reused == 2
    never = Recycler(keep=0)
    never.take(2 * MIB)
    assert never.take(2 * MIB).base is None and never.reused == 0


class BufferNode:
    """A node object with only ``handle_buffer``: NodeClient assembles each request in a buffer
    and encodes each reply into one (what a node object without ``serve_stream`` gets)."""

    def __init__(self, node: Node) -> None:
        self.node, self.name = node, node.name

    def tags(self) -> list[list[str]]:
        return self.node.tags()

    def handle_buffer(self, payload, allocate=None):
        return self.node.handle_buffer(payload, allocate)


@pytest.mark.slow
def test_a_node_reusing_its_buffers_gives_the_same_model(cluster):
    """Real Nodes served in this process by NodeClient, over gRPC: through buffers reused from
    the second round on, through buffers never reused, and streamed (requests straight into the
    plan, replies from the plan's parameters: no buffer at all); the same model each time."""
    x, y = support.separable(90, 7)
    tags = ["buffers"]
    results, reused = {}, {}
    for how, keep in (("reuse", 2), ("never", 0), ("stream", 2)):
        node = Node("fake-a", Dataset(x, y, tags=tags, name="buffers"), approval=False)
        served = node if how == "stream" else BufferNode(node)
        client = NodeClient(
            served, cluster.address, cluster.token("fake-a"), ca_cert=cluster.ca, keep_buffers=keep
        )
        client.buffers.min_bytes = 0  # this model's messages are small: keep them all the same
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        try:
            cluster.transport.wait_for_nodes(tags, names=["fake-a"], timeout=60)
            exp = Experiment(
                nodes=cluster.transport,
                tags=tags,
                training_plan=LogisticRegressionPlan,
                model_args={"n_features": support.N_FEATURES},
                training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
                round_limit=3,
                seed=0,
                progress=False,
            )
            support.in_thread(exp.run).result(timeout=120)
            results[how] = {k: v.copy() for k, v in exp.global_params.items()}
            reused[how] = client.buffers.reused
        finally:
            client.stop()
            thread.join(30)
            node.stop()
            support.wait_until(
                lambda: "fake-a" not in cluster.transport.node_tags(), 30, "fake-a to go"
            )
    # rounds 2 and 3: the training request and its reply, the validation request and its reply
    assert reused["reuse"] >= 8 and reused["never"] == 0 and reused["stream"] == 0
    for how in ("reuse", "stream"):
        assert set(results[how]) == set(results["never"])
        for name, value in results["never"].items():
            assert np.array_equal(results[how][name], value), (how, name)
