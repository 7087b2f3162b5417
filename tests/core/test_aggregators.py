"""FedAverage's algebra (hypothesis) and the checks every aggregator applies to replies."""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedplug import AggregationError, FedAverage, Median

SHAPES = {"weight": (3, 2), "bias": (2,), "scalar_like": (1,)}
values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_subnormal=False)
counts = st.integers(min_value=1, max_value=10_000)


@st.composite
def rounds(draw, min_nodes: int = 1, max_nodes: int = 6):
    """``(global_params, replies)`` with replies ``(node, params, n_samples)``."""
    n_nodes = draw(st.integers(min_nodes, max_nodes))
    replies = []
    for i in range(n_nodes):
        params = {
            name: draw(hnp.arrays(np.float64, shape, elements=values))
            for name, shape in SHAPES.items()
        }
        replies.append((f"node-{i}", params, draw(counts)))
    global_params = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    return global_params, replies


def fedavg(global_params, replies):
    return FedAverage().aggregate(global_params, replies)


def assert_params_close(got, expected, rtol=1e-12, atol=1e-9):
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=atol)


@settings(max_examples=60, deadline=None)
@given(rounds(), st.randoms(use_true_random=False))
def test_fedavg_does_not_depend_on_the_order_of_replies(round_, rnd):
    global_params, replies = round_
    shuffled = list(replies)
    rnd.shuffle(shuffled)
    assert_params_close(fedavg(global_params, shuffled), fedavg(global_params, replies))


@settings(max_examples=60, deadline=None)
@given(rounds(max_nodes=1), st.lists(counts, min_size=1, max_size=6))
def test_fedavg_of_identical_replies_is_that_reply(round_, sample_counts):
    global_params, [(_, params, _)] = round_
    replies = [(f"n{i}", params, n) for i, n in enumerate(sample_counts)]
    assert_params_close(fedavg(global_params, replies), params, rtol=1e-14, atol=0)


@settings(max_examples=60, deadline=None)
@given(rounds())
def test_fedavg_weights_replies_by_their_sample_counts(round_):
    global_params, replies = round_
    weights = [n for _, _, n in replies]
    expected = {
        name: np.average(np.stack([p[name] for _, p, _ in replies]), axis=0, weights=weights)
        for name in SHAPES
    }
    assert_params_close(fedavg(global_params, replies), expected)


@settings(max_examples=60, deadline=None)
@given(rounds(), st.integers(min_value=2, max_value=1000))
def test_scaling_every_sample_count_changes_nothing(round_, factor):
    global_params, replies = round_
    scaled = [(node, params, n * factor) for node, params, n in replies]
    assert_params_close(fedavg(global_params, scaled), fedavg(global_params, replies))


def test_fedavg_of_two_nodes_by_hand():
    g = {"w": np.zeros(2)}
    result = fedavg(
        g, [("a", {"w": np.array([1.0, 10.0])}, 1), ("b", {"w": np.array([4.0, 0])}, 3)]
    )
    np.testing.assert_allclose(result["w"], [(1 + 12) / 4, 10 / 4])


@pytest.mark.parametrize("aggregator", [FedAverage, Median])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_result_has_the_global_models_dtypes(aggregator, dtype):
    global_params = {"w": np.zeros(3, dtype=dtype), "steps": np.zeros(1, dtype=np.int64)}
    replies = [
        ("a", {"w": np.array([0.1, 0.2, 0.3]), "steps": np.array([2.0])}, 5),
        ("b", {"w": np.array([0.3, 0.2, 0.1], dtype=np.float32), "steps": np.array([4])}, 5),
    ]
    result = aggregator().aggregate(global_params, replies)
    assert result["w"].dtype == dtype
    assert result["steps"].dtype == np.int64
    np.testing.assert_allclose(result["w"], [0.2, 0.2, 0.2], rtol=1e-3)
    assert result["steps"][0] == 3


@pytest.mark.parametrize("aggregator", [FedAverage, Median])
@pytest.mark.parametrize("n_samples", [0, -3, True, False, 2.5, "10", None, np.float64(4.0)])
def test_bad_sample_counts_are_refused_naming_the_node(aggregator, n_samples):
    agg = aggregator()
    agg.begin({"w": np.zeros(2)})
    agg.add("good-node", {"w": np.ones(2)}, 4)
    with pytest.raises(AggregationError, match="'bad-node'") as info:
        agg.add("bad-node", {"w": np.ones(2)}, n_samples)
    assert repr(n_samples) in str(info.value)
    assert agg.nodes == ["good-node"]  # the refused reply left no trace
    np.testing.assert_array_equal(agg.result()["w"], np.ones(2))


def test_numpy_integer_sample_counts_are_accepted():
    result = fedavg({"w": np.zeros(1)}, [("a", {"w": np.ones(1)}, np.int32(3))])
    np.testing.assert_array_equal(result["w"], [1.0])


@pytest.mark.parametrize("aggregator", [FedAverage, Median])
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"w": np.ones(2)}, r"returned parameters \['w'\], expected \['b', 'w'\]"),
        ({"w": np.ones(2), "b": np.ones(1), "x": np.ones(1)}, "expected"),
        ({"w": np.ones(2), "c": np.ones(1)}, "expected"),
        ({"w": np.ones(3), "b": np.ones(1)}, r"'w' with shape \(3,\), expected \(2,\)"),
        ({"w": np.ones((2, 1)), "b": np.ones(1)}, r"'w' with shape \(2, 1\)"),
        ({"w": np.ones(2), "b": np.float64(1.0)}, r"'b' with shape \(\)"),
    ],
)
def test_mismatched_names_and_shapes_are_refused_naming_the_node(aggregator, params, match):
    agg = aggregator()
    agg.begin({"w": np.zeros(2), "b": np.zeros(1)})
    with pytest.raises(AggregationError, match="'odd-node'") as info:
        agg.add("odd-node", params, 5)
    assert info.match(match)


@pytest.mark.parametrize("aggregator", [FedAverage, Median])
def test_no_replies_is_an_error(aggregator):
    with pytest.raises(AggregationError, match="no node reply"):
        aggregator().aggregate({"w": np.zeros(2)}, [])


def test_an_aggregator_starts_afresh_each_round():
    agg = FedAverage()
    agg.aggregate({"w": np.zeros(1)}, [("a", {"w": np.array([100.0])}, 10)])
    second = agg.aggregate({"w": np.zeros(1)}, [("a", {"w": np.array([2.0])}, 1)])
    np.testing.assert_array_equal(second["w"], [2.0])
    assert agg.nodes == ["a"]


def test_fedavg_reuses_a_sum_nobody_holds_and_never_one_that_is_held():
    agg, zeros = FedAverage(), {"w": np.zeros(3, np.float32)}
    first = agg.aggregate(zeros, [("a", {"w": np.full(3, 5.0, np.float32)}, 1)])
    held = first["w"]  # someone keeps the first round's result: it must stay as it was
    del first
    second = agg.aggregate(zeros, [("a", {"w": np.full(3, 2.0, np.float32)}, 1)])
    np.testing.assert_array_equal(held, [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(second["w"], [2.0, 2.0, 2.0])
    assert not np.shares_memory(held, second["w"])

    # once nobody holds a result, the next round sums into its memory (zeroed first)
    last = weakref.ref(second["w"])
    del second
    third = agg.aggregate(zeros, [("a", {"w": np.full(3, 4.0, np.float32)}, 3)])
    assert third["w"] is last()
    np.testing.assert_array_equal(third["w"], [4.0, 4.0, 4.0])
    # a parameter whose shape changed gets a new sum
    fourth = agg.aggregate(
        {"w": np.zeros(2, np.float32)}, [("a", {"w": np.ones(2, np.float32)}, 1)]
    )
    np.testing.assert_array_equal(fourth["w"], [1.0, 1.0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=-1, max_value=1), min_size=4, max_size=8),
    st.floats(min_value=1e3, max_value=1e9) | st.floats(min_value=-1e9, max_value=-1e3),
)
def test_median_is_robust_to_one_outlying_node(honest, outlier):
    replies = [(f"n{i}", {"w": np.array([v, -v])}, 10) for i, v in enumerate(honest)]
    replies.append(("outlier", {"w": np.array([outlier, outlier])}, 10_000))
    result = Median().aggregate({"w": np.zeros(2)}, replies)["w"]
    assert min(honest) <= result[0] <= max(honest)
    assert -max(honest) <= result[1] <= -min(honest)
    # FedAverage, weighted by the outlier's sample count, is dragged away
    assert abs(fedavg({"w": np.zeros(2)}, replies)["w"][0]) > 1


def test_median_ignores_sample_counts_but_checks_them():
    replies = [("a", {"w": np.array([1.0])}, 1), ("b", {"w": np.array([2.0])}, 1000)]
    replies.append(("c", {"w": np.array([3.0])}, 1))
    assert Median().aggregate({"w": np.zeros(1)}, replies)["w"][0] == 2.0
    with pytest.raises(AggregationError, match="'z'"):
        Median().aggregate({"w": np.zeros(1)}, [("z", {"w": np.array([1.0])}, 0)])


# -- folding replies piece by piece (replies streamed by the gRPC transport) ---------------------


@settings(max_examples=60, deadline=None)
@given(
    rounds(), st.lists(st.integers(0, 40), max_size=6), st.sampled_from([np.float32, np.float64])
)
def test_fedavg_folded_in_pieces_is_bit_identical_to_whole_replies(round_, cuts, dtype):
    global_params, replies = round_
    global_params = {name: value.astype(dtype) for name, value in global_params.items()}
    replies = [(n, {k: v.astype(dtype) for k, v in p.items()}, c) for n, p, c in replies]
    whole = fedavg(global_params, replies)
    pieces = FedAverage()
    assert pieces.streams
    pieces.begin(global_params)
    for node, params, n_samples in replies:
        pieces.check(node, params, n_samples)
        for name, value in params.items():
            flat = value.reshape(-1)
            bounds = sorted({0, flat.size, *(min(c, flat.size) for c in cuts)})
            for start, stop in itertools.pairwise(bounds):
                pieces.add_part(name, start, flat[start:stop], n_samples)
        pieces.commit(node, n_samples)
    streamed = pieces.result()
    assert pieces.nodes == [node for node, _, _ in replies]
    for name, value in whole.items():
        assert streamed[name].dtype == value.dtype
        assert streamed[name].tobytes() == value.tobytes(), name


def test_a_piece_outside_its_parameter_is_refused():
    agg = FedAverage()
    agg.begin({"w": np.zeros(4)})
    with pytest.raises(AggregationError, match=r"elements 3\.\.5 of 'w' lie outside its 4"):
        agg.add_part("w", 3, np.ones(2), 1)


def test_median_needs_whole_replies():
    agg = Median()
    agg.begin({"w": np.zeros(2)})
    assert not agg.streams
    with pytest.raises(NotImplementedError, match="Median does not fold replies piece by piece"):
        agg.add_part("w", 0, np.ones(2), 1)
