"""Messages and their byte encoding: exact round trips, and refusal of anything else."""

from __future__ import annotations

import pickle
from dataclasses import fields

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedplug import MessageError
from fedplug.messages import (
    MESSAGE_TYPES,
    VERSION,
    ErrorReply,
    EvaluateReply,
    EvaluateRequest,
    PlanRef,
    TrainReply,
    TrainRequest,
    decode,
    encode,
    frame,
    read_header,
)

DTYPES = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]

# -- strategies ---------------------------------------------------------------------------------


def _array(dtype_name: str) -> st.SearchStrategy[np.ndarray]:
    dtype = np.dtype(dtype_name)
    finite = {"allow_nan": False, "allow_infinity": False} if dtype.kind == "f" else {}
    return hnp.arrays(
        dtype,
        # ndim >= 1 here: 0-d arrays have their own test below
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4),
        elements=hnp.from_dtype(dtype, **finite),
    )


arrays = st.sampled_from(DTYPES).flatmap(_array)
params = st.dictionaries(st.text(min_size=1, max_size=8), arrays, max_size=4)
texts = st.text(max_size=12)
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
json_maps = st.dictionaries(texts, json_values, max_size=4)
plan_refs = st.builds(
    PlanRef,
    name=st.none() | texts,
    source=st.none() | st.text(max_size=200),
    class_name=st.none() | texts,
    sha256=st.none() | texts,
)
requests = st.sampled_from([TrainRequest, EvaluateRequest]).flatmap(
    lambda cls: st.builds(
        cls,
        experiment_id=texts,
        round_index=ints,
        plan=plan_refs,
        model_args=json_maps,
        training_args=json_maps,
        tags=st.lists(texts, max_size=3),
        params=params,
    )
)
messages = st.one_of(
    requests,
    st.builds(
        TrainReply,
        experiment_id=texts,
        round_index=ints,
        node=texts,
        params=params,
        n_samples=ints,
        n_steps=ints,
        train_loss=floats,
        duration_s=floats,
    ),
    st.builds(
        EvaluateReply,
        experiment_id=texts,
        round_index=ints,
        node=texts,
        metrics=st.dictionaries(texts, floats, max_size=4),
        n_samples=ints,
        duration_s=floats,
    ),
    st.builds(
        ErrorReply,
        experiment_id=texts,
        round_index=ints,
        node=texts,
        error=texts,
        message=st.text(max_size=100),
        details=json_maps,
    ),
)


def assert_same_arrays(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name  # bit for bit


def assert_same_message(got, expected) -> None:
    assert type(got) is type(expected)
    for f in fields(expected):
        value, decoded = getattr(expected, f.name), getattr(got, f.name)
        if f.name == "params":
            assert_same_arrays(decoded, value)
        else:
            assert decoded == value, f.name
            assert type(decoded) is type(value), f.name


def reply(**params: np.ndarray) -> TrainReply:
    return TrainReply("exp", 2, "node-a", params, 10, 3, 0.25, 0.5)


def envelope(message) -> dict:
    """The decoded msgpack header of a valid message, to tamper with."""
    header, _ = read_header(encode(message))
    return header


def pack(obj, raw: bytes = b"") -> bytes:
    """A frame with ``obj`` as its msgpack header and ``raw`` as its array section."""
    return frame(msgpack.packb(obj, use_bin_type=True), raw)


W = np.ones((2, 3), dtype=np.float32)


def tampered_body(raw: bytes = W.tobytes(), **changes) -> bytes:
    env = envelope(reply(w=W))
    env["body"].update(changes)
    return pack(env, raw)


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_message_round_trips_exactly(message):
    raw = encode(message)
    assert isinstance(raw, bytes)
    assert_same_message(decode(raw), message)
    assert_same_message(decode(bytearray(raw), type(message)), message)
    assert_same_message(decode(memoryview(raw), tuple(MESSAGE_TYPES.values())), message)


def test_zero_size_arrays_round_trip():
    params = {
        "empty": np.zeros(0, dtype=np.float32),
        "no-rows": np.zeros((0, 5), dtype=np.int64),
        "no-cols": np.ones((3, 0), dtype=bool),
    }
    assert_same_arrays(decode(encode(reply(**params))).params, params)


def test_zero_dimensional_arrays_keep_their_shape():
    # scalar parameters (a temperature, torch's BatchNorm num_batches_tracked) are 0-d arrays
    params = {"scalar": np.array(3.5, dtype=np.float32), "count": np.array(7, dtype=np.int64)}
    decoded = decode(encode(reply(**params))).params
    assert decoded["scalar"].shape == ()
    assert decoded["count"].shape == ()
    assert_same_arrays(decoded, params)


def test_non_contiguous_arrays_round_trip():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    params = {"transposed": base.T, "strided": base[::2, 1::3], "fortran": np.asfortranarray(base)}
    decoded = decode(encode(reply(**params))).params
    for name, value in params.items():
        np.testing.assert_array_equal(decoded[name], value)
        assert decoded[name].shape == value.shape


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", ">u2", ">i8"])
def test_big_endian_arrays_are_sent_as_little_endian(dtype):
    value = np.arange(-3, 3).astype(dtype).reshape(2, 3)
    decoded = decode(encode(reply(w=value))).params["w"]
    assert decoded.dtype == value.dtype.newbyteorder("<")
    assert decoded.dtype.str.startswith(("<", "|"))
    np.testing.assert_array_equal(decoded, value)


def test_a_field_with_a_default_may_be_omitted():
    env = envelope(ErrorReply("exp", 0, "n", "PlanError", "boom", {"k": 1}))
    del env["body"]["details"]
    assert decode(pack(env)).details == {}


# -- fuzzing: only MessageError -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_error(data):
    try:
        message = decode(data)
    except MessageError:
        return
    assert type(message) in MESSAGE_TYPES.values()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_messages_raise_only_message_error(message, data):
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        action = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        position = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="position")
        if action == "flip" and raw:
            raw[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif action == "set" and raw:
            raw[position] = data.draw(st.integers(0, 255), label="byte")
        elif action == "truncate":
            del raw[position:]
        elif action == "insert":
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        elif raw:
            del raw[position]
    try:
        decoded = decode(bytes(raw))
    except MessageError:
        return
    assert type(decoded) in MESSAGE_TYPES.values()


# -- explicit refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["Pickle", "trainreply", "", 3, None])
def test_unknown_message_types_are_refused(type_name):
    env = envelope(reply())
    env["type"] = type_name
    with pytest.raises(MessageError, match="unknown message type"):
        decode(pack(env))


@pytest.mark.parametrize(
    "obj",
    [
        [1, "TrainReply", {}],
        {"fedplug": 1, "type": "TrainReply"},
        {"fedplug": 1, "type": "TrainReply", "body": {}, "extra": 0},
        "TrainReply",
        None,
    ],
)
def test_what_is_not_an_envelope_is_refused(obj):
    with pytest.raises(MessageError, match="not a fedplug envelope"):
        decode(pack(obj))


@pytest.mark.parametrize(
    "version", [0, VERSION - 1, VERSION + 1, str(VERSION), None, [VERSION], True, float(VERSION)]
)
def test_other_envelope_versions_are_refused(version):
    env = envelope(reply())
    env["fedplug"] = version
    with pytest.raises(MessageError, match=r"version .* is not supported"):
        decode(pack(env))


def test_a_missing_field_is_refused():
    env = envelope(reply())
    del env["body"]["n_samples"]
    with pytest.raises(MessageError, match="missing field 'n_samples'"):
        decode(pack(env))


def test_an_extra_field_is_refused():
    with pytest.raises(MessageError, match="unexpected field 'pickled'"):
        decode(tampered_body(pickled=b"\x80\x04"))


def test_extra_fields_of_mixed_key_types_are_refused():
    # msgpack map keys may be str or bin (strict_map_key allows both)
    env = envelope(reply())
    env["body"].update({"zz": 1, b"yy": 2})
    with pytest.raises(MessageError, match="keys must be strings, got b'yy'"):
        decode(pack(env))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n_samples", "10", "n_samples: expected int, got str"),
        ("n_samples", True, "n_samples: expected int, got bool"),
        ("n_samples", 10.0, "n_samples: expected int, got float"),
        ("n_steps", None, "n_steps: expected int, got NoneType"),
        ("node", 7, "node: expected str, got int"),
        ("node", b"node-a", "node: expected str, got bytes"),
        ("train_loss", "0.5", "train_loss: expected a number, got str"),
        ("train_loss", False, "train_loss: expected a number, got bool"),
        ("train_loss", float("nan"), "train_loss: non-finite"),
        ("duration_s", float("inf"), "duration_s: non-finite"),
        ("params", [1, 2], "params: expected a map of arrays"),
        ("params", {"w": "abc"}, r"params.w: an array must be \[dtype, shape, offset, nbytes\]"),
        ("params", {"w": ["<f4", [1], 0, 4, "x"]}, r"an array must be \[dtype"),
    ],
)
def test_wrong_field_types_are_refused(field, value, match):
    with pytest.raises(MessageError, match=match):
        decode(tampered_body(**{field: value}))


def request_env(**changes) -> bytes:
    env = envelope(TrainRequest("e", 0, PlanRef(name="p"), {}, {}, ["t"], {}))
    env["body"].update(changes)
    return pack(env)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tags": "t"}, "tags: expected a list"),
        ({"tags": [1]}, r"tags\[0\]: expected str, got int"),
        ({"plan": "numpy-logreg"}, "plan: expected a map of fields"),
        ({"plan": {"name": 3}}, "plan.name: expected str"),
        ({"plan": {"name": "p", "code": "x"}}, "unexpected field 'code'"),
        ({"model_args": [1]}, "model_args: expected a map"),
        ({"model_args": {"lr": float("nan")}}, "model_args.lr: non-finite"),
        ({"model_args": {"deep": [[{"x": float("-inf")}]]}}, "non-finite"),
        ({"model_args": {"blob": b"\x80\x04"}}, "unexpected value of type bytes"),
        (
            {
                "training_args": {
                    "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                }
            },
            "nested too deeply",
        ),
    ],
)
def test_request_fields_are_validated(changes, match):
    with pytest.raises(MessageError, match=match):
        decode(request_env(**changes))


def test_metrics_keys_must_be_strings():
    env = envelope(EvaluateReply("e", 0, "n", {"accuracy": 0.5}, 10, 0.1))
    env["body"]["metrics"] = {b"accuracy": 0.5}
    with pytest.raises(MessageError, match="metrics"):
        decode(pack(env))


def test_non_finite_metrics_are_refused():
    with pytest.raises(MessageError, match="non-finite"):
        decode(encode(EvaluateReply("e", 0, "n", {"loss": float("nan")}, 10, 0.1)))


# -- arrays on the wire -------------------------------------------------------------------------


def wire_array(dtype, shape, data, offset=0, nbytes=None) -> bytes:
    nbytes = len(data) if nbytes is None else nbytes
    return tampered_body(raw=data, params={"w": [dtype, shape, offset, nbytes]})


@pytest.mark.parametrize(
    ("shape", "data"),
    [([2, 3], b"\0" * 23), ([2, 3], b"\0" * 25), ([0], b"\0" * 4), ([], b""), ([4], b"\0" * 8)],
)
def test_array_bytes_must_match_dtype_and_shape(shape, data):
    with pytest.raises(MessageError, match="bytes do not match dtype <f4"):
        decode(wire_array("<f4", shape, data))


@pytest.mark.parametrize("dtype", ["<c16", "|O", "<U3", ">f8", ">i4", "float64", "<M8[s]", 5])
def test_unsupported_wire_dtypes_are_refused(dtype):
    with pytest.raises(MessageError, match="unsupported dtype"):
        decode(wire_array(dtype, [1], b"\0" * 16))


@pytest.mark.parametrize("shape", [[-1], "3", [1.5], [True], 3, [1] * 33, None])
def test_invalid_shapes_are_refused(shape):
    with pytest.raises(MessageError, match="invalid shape"):
        decode(wire_array("<f8", shape, b"\0" * 8))


@pytest.mark.parametrize(("offset", "nbytes"), [("0", 3), (0, "3"), (-1, 3), (0, True), (0, 3.0)])
def test_array_offsets_must_be_counts(offset, nbytes):
    with pytest.raises(MessageError, match="offset and nbytes must be non-negative ints"):
        decode(wire_array("|u1", [3], b"abc", offset, nbytes))


def test_arrays_must_lie_inside_the_frame():
    with pytest.raises(MessageError, match="lie outside"):
        decode(wire_array("|u1", [3], b"abc", offset=2))


def test_arrays_must_tile_the_raw_section():
    with pytest.raises(MessageError, match="2 bytes of array data are not used"):
        decode(wire_array("|u1", [3], b"abcde", nbytes=3))
    reply_two = encode(reply(a=np.ones(2, dtype=np.uint8), b=np.ones(2, dtype=np.uint8)))
    env = envelope(reply(a=np.ones(2, dtype=np.uint8), b=np.ones(2, dtype=np.uint8)))
    env["body"]["params"]["b"][2] = 0  # b overlaps a
    with pytest.raises(MessageError, match="not laid out contiguously"):
        decode(pack(env, reply_two[-4:]))


def test_decoded_arrays_are_read_only_views_of_the_frame():
    raw = encode(reply(w=np.arange(6, dtype=np.float64)))
    decoded = decode(raw).params["w"]
    assert not decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))


@pytest.mark.parametrize("shape", [[0, 2**63], [2**64 - 1, 0], [0, 2**40, 2**40]])
def test_zero_size_arrays_with_huge_dimensions_are_refused(shape):
    with pytest.raises(MessageError):
        decode(wire_array("<f8", shape, b""))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    ("bad", "match"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "inf")]
)
def test_non_finite_parameters_are_refused(dtype, bad, match):
    value = np.ones((2, 2), dtype=dtype)
    value[1, 0] = bad
    raw = encode(reply(w=value))
    with pytest.raises(MessageError, match=f"params.w: contains {match}"):
        decode(raw)


# -- limits, extension types, expected types ----------------------------------------------------


def test_oversized_payloads_are_refused_before_parsing():
    raw = encode(reply(w=np.zeros(1000)))
    assert decode(raw, max_bytes=len(raw)).n_samples == 10
    with pytest.raises(MessageError, match=f"{len(raw)} bytes exceeds the limit of 100 bytes"):
        decode(raw, max_bytes=100)


@pytest.mark.parametrize(
    "ext", [msgpack.ExtType(42, b"payload"), msgpack.ExtType(0, b""), msgpack.Timestamp(0, 0)]
)
def test_msgpack_extension_types_are_refused(ext):
    env = envelope(ErrorReply("e", 0, "n", "PlanError", "boom"))
    env["body"]["details"] = {"ext": ext}
    with pytest.raises(MessageError):
        decode(pack(env))


def test_an_extension_type_is_named_in_the_error():
    env = envelope(reply())
    env["body"]["node"] = msgpack.ExtType(42, b"x")
    with pytest.raises(MessageError, match="extension type 42"):
        decode(pack(env))


def test_expected_types_are_enforced():
    raw = encode(reply())
    assert isinstance(decode(raw, TrainReply), TrainReply)
    with pytest.raises(MessageError, match="expected a TrainRequest, got a TrainReply"):
        decode(raw, TrainRequest)
    with pytest.raises(MessageError, match="expected a TrainRequest or EvaluateRequest"):
        decode(raw, (TrainRequest, EvaluateRequest))


@pytest.mark.parametrize("data", ["a string", None, 42, [b"x"]])
def test_only_bytes_can_be_decoded(data):
    with pytest.raises(MessageError, match="a message must be bytes"):
        decode(data)


def test_only_message_types_can_be_encoded():
    with pytest.raises(MessageError, match="not a fedplug message type"):
        encode(PlanRef(name="x"))

    class TrainReplyLookalike(TrainReply):
        pass

    with pytest.raises(MessageError, match="not a fedplug message type"):
        encode(TrainReplyLookalike("e", 0, "n", {}, 1, 1, 0.0, 0.0))


# -- no pickle, ever ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.array([1 + 2j]),
        np.array(["text"]),
        np.array([np.datetime64("2024-01-01")]),
    ],
    ids=["object", "complex", "unicode", "datetime"],
)
def test_arrays_of_unsupported_dtypes_cannot_be_encoded(value):
    with pytest.raises(MessageError, match="unsupported dtype"):
        encode(reply(w=value))


def test_a_list_of_objects_cannot_be_encoded():
    with pytest.raises(MessageError, match="unsupported dtype"):
        encode(reply(w=[object(), None]))


def test_encoding_and_decoding_never_call_pickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Pickler", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    message = reply(w=np.arange(6.0).reshape(2, 3), b=np.array([True, False]))
    assert_same_message(decode(encode(message)), message)
