"""messages.decode_stream: a message decoded from pieces as it arrives (how the gRPC transport
hands replies over), which must accept and refuse exactly what decode() does, and pass streamed
arrays to sinks in whole, finite elements whatever the split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedplug import MessageError
from fedplug.messages import (
    MESSAGE_TYPES,
    ArraySlot,
    EvaluateReply,
    TrainReply,
    decode,
    decode_stream,
    encode,
)

DTYPES = ["float16", "float32", "float64", "int8", "int32", "uint64", "bool"]


def _array(dtype_name: str) -> st.SearchStrategy[np.ndarray]:
    dtype = np.dtype(dtype_name)
    finite = {"allow_nan": False, "allow_infinity": False} if dtype.kind == "f" else {}
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        elements=hnp.from_dtype(dtype, **finite),
    )


params = st.dictionaries(
    st.text(min_size=1, max_size=6), st.sampled_from(DTYPES).flatmap(_array), max_size=4
)
replies = st.builds(
    TrainReply,
    experiment_id=st.text(max_size=8),
    round_index=st.integers(0, 10),
    node=st.text(max_size=8),
    params=params,
    n_samples=st.integers(0, 100),
    n_steps=st.integers(0, 100),
    train_loss=st.floats(allow_nan=False, allow_infinity=False),
    duration_s=st.floats(allow_nan=False, allow_infinity=False),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, repeats make empty pieces)."""
    points = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


cuts = st.lists(st.integers(0, 400), max_size=12)


def reply(**arrays) -> TrainReply:
    return TrainReply("exp", 1, "node", arrays, 5, 1, 0.5, 0.1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies, cuts)
def test_any_split_decodes_to_what_decode_gives(message, positions):
    raw = encode(message)
    got = decode_stream(split(raw, positions), len(raw), TrainReply)
    assert encode(got) == encode(decode(raw))
    assert all(not value.flags.writeable for value in got.params.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies, cuts)
def test_streamed_arrays_reach_their_sinks_whole_in_order(message, positions):
    raw = encode(message)
    pieces: dict[str, list] = {}

    def on_header(header):
        assert all(isinstance(slot, ArraySlot) for slot in header.params.values())
        return {
            slot: lambda start, values, name=name: pieces.setdefault(name, []).append(
                (start, values.copy())
            )
            for name, slot in header.params.items()
        }

    got = decode_stream(split(raw, positions), len(raw), TrainReply, on_header=on_header)
    for name, value in message.params.items():
        slot = got.params[name]
        assert isinstance(slot, ArraySlot)
        assert (slot.shape, slot.dtype, slot.size) == (value.shape, value.dtype, value.size)
        received = pieces.get(name, [])
        starts = np.cumsum([0] + [v.size for _, v in received])
        assert [start for start, _ in received] == list(starts[:-1])  # consecutive elements
        flat = np.concatenate([v for _, v in received]) if received else value.reshape(-1)[:0]
        assert flat.dtype == value.dtype
        assert flat.tobytes() == np.ascontiguousarray(value).tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies, cuts, st.data())
def test_mutated_messages_are_refused_exactly_when_decode_refuses_them(message, positions, data):
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        position = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="position")
        action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if action == "flip" and raw:
            raw[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif action == "truncate":
            del raw[position:]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    raw = bytes(raw)
    try:
        expected = encode(decode(raw))
    except MessageError:
        expected = None
    try:
        got = encode(decode_stream(split(raw, positions), len(raw)))
    except MessageError:
        got = None
    assert got == expected


def test_a_stream_shorter_or_longer_than_announced_is_refused():
    raw = encode(reply(w=np.arange(50, dtype=np.float64)))
    with pytest.raises(MessageError, match=f"ended after {len(raw) - 1} of {len(raw)} bytes"):
        decode_stream([raw[:100], raw[100:-1]], len(raw))
    with pytest.raises(MessageError, match="continues past"):
        decode_stream([raw[:100], raw[100:], b"x"], len(raw))
    with pytest.raises(MessageError, match="continues past"):
        decode_stream([raw + b"x"], len(raw))
    with pytest.raises(MessageError, match="ended after"):
        decode_stream([raw[:2]], len(raw))


def test_a_size_over_the_limit_is_refused_before_reading():
    def chunks():
        raise AssertionError("read a chunk")
        yield b""

    with pytest.raises(MessageError, match="4 to 1000 bytes"):
        decode_stream(chunks(), 5000, max_bytes=1000)


def test_a_refusal_at_the_header_reads_no_array_byte_and_closes_the_stream():
    raw = encode(reply(w=np.arange(1000, dtype=np.float64)))
    read, closed = [], []

    def chunks():
        try:
            for start in range(0, len(raw), 64):
                read.append(start)
                yield raw[start : start + 64]
        finally:
            closed.append(True)

    def refuse(header):
        raise MessageError(f"not from {header.node}")

    with pytest.raises(MessageError, match="not from node"):
        decode_stream(chunks(), len(raw), on_header=refuse)
    assert closed == [True]
    header_end = 4 + int.from_bytes(raw[:4], "little")
    assert read[-1] < header_end  # stopped at the chunk that completed the header


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_value_stops_the_stream_at_its_piece(bad):
    values = np.arange(4000, dtype=np.float32)
    values[3500] = bad
    raw = encode(reply(w=values))
    folded = []

    def on_header(header):
        return {header.params["w"]: lambda start, piece: folded.append(start + piece.size)}

    chunks = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]
    with pytest.raises(MessageError, match=r"params\.w: contains"):
        decode_stream(chunks, len(raw), on_header=on_header)
    assert folded and folded[-1] <= 3500  # the pieces before the bad value, not the bad one


def test_arrays_not_streamed_are_assembled_and_checked_finite():
    raw = encode(reply(w=np.array([1.0, np.nan])))
    with pytest.raises(MessageError, match="contains NaN"):
        decode_stream([raw[:-3], raw[-3:]], len(raw))


def test_messages_without_arrays_and_the_expected_type():
    raw = encode(EvaluateReply("exp", 1, "node", {"accuracy": 0.5}, 10, 0.2))
    assert decode_stream([raw], len(raw), EvaluateReply) == decode(raw)
    with pytest.raises(MessageError, match="expected a TrainReply, got a EvaluateReply"):
        decode_stream([raw], len(raw), TrainReply)
    assert set(MESSAGE_TYPES.values()) >= {EvaluateReply, TrainReply}
