"""Typed messages between researcher and nodes, and their byte encoding.

Every exchange is one of the dataclasses below, encoded to bytes even in-process so that any
transport can carry it. Nothing is ever unpickled. The frame is::

    u32 little-endian header length | msgpack header | raw array bytes

The header is ``{"fedplug": VERSION, "type": name, "body": {...}}``; in the body an array is
``[dtype, shape, offset, nbytes]`` pointing into the raw section, which the arrays tile exactly.
Arrays are written once when encoding and decoded as read-only views of the frame (no copy), so a
model of hundreds of MB costs one memcpy per hop, not several.

:func:`decode` validates everything against the message's declared field types and raises
:class:`MessageError` for anything else: unknown types, missing or extra fields, wrong value types,
arrays whose bytes disagree with their dtype and shape, unsupported dtypes, non-finite floats, and
payloads over ``max_bytes``.
"""

from __future__ import annotations

import functools
import math
import struct
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import msgpack
import numpy as np

from fedplug.errors import MessageError

#: the message format; bumped whenever a field is added (3: PlanRef.source_file/source_line)
VERSION = 3
DEFAULT_MAX_BYTES = 4 * 1024**3
#: the largest header a message may have (names, shapes, plan source, JSON settings): the
#: arrays travel outside it; a researcher reading replies allows far less (REPLY_HEADER_BYTES)
MAX_HEADER_BYTES = 16 << 20
REPLY_HEADER_BYTES = 1 << 20
#: lists and maps a header may hold: a few per array, a few for its settings
MAX_CONTAINERS = 200_000
_MAX_NDIM = 32
_MAX_DIM = 2**48  # elements along one dimension
_DTYPES = frozenset(
    np.dtype(name).str
    for name in (
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
    )
)

Arrays = dict[str, np.ndarray]
JSON = Any  # None, bool, int, float, str, and lists / str-keyed dicts of those


@dataclass
class PlanRef:
    """How a node finds the plan to run: a registered name, or source code plus its imports.

    Shipped source comes with where its class was written on the researcher's side
    (``source_file``, and ``source_line``, the line where the class's definition starts there):
    an error in the plan's code then names that file and line instead of the shipped copy's. They
    are not covered by ``sha256`` and serve error messages only."""

    name: str | None = None
    source: str | None = None
    class_name: str | None = None
    sha256: str | None = None
    source_file: str | None = None
    source_line: int | None = None


@dataclass
class AuxVarData:
    """One optimizer module's auxiliary variables (a declearn ``AuxVar``) as they travel: its
    class name, its Vector-valued fields as arrays, its other fields as plain values."""

    cls: str
    vectors: dict[str, Arrays] = field(default_factory=dict)
    values: dict[str, JSON] = field(default_factory=dict)


@dataclass
class SecAggData:
    """A secure-aggregation scheme's part of a message: the scheme's ``step``, its plain
    ``values`` and its ``arrays`` (byte strings travel as uint8 arrays, masked vectors as uint64)."""

    scheme: str
    step: str
    values: dict[str, JSON] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=dict)


@dataclass
class TrainRequest:
    """Researcher -> node: train the global parameters on the dataset that matches ``tags``.

    ``aux_vars`` come from the researcher's optimizer (e.g. Scaffold's global state), keyed by
    the module's auxiliary-variable name. With secure aggregation, ``secagg`` is the scheme's
    round context and the node replies with a masked update instead of its parameters."""

    experiment_id: str
    round_index: int
    plan: PlanRef
    model_args: dict[str, JSON]
    training_args: dict[str, JSON]
    tags: list[str]
    params: Arrays
    aux_vars: dict[str, AuxVarData] = field(default_factory=dict)
    secagg: SecAggData | None = None


@dataclass
class TrainReply:
    """Node -> researcher: locally trained parameters and what training did; with secure
    aggregation, no ``params`` but the scheme's masked update in ``secagg``."""

    experiment_id: str
    round_index: int
    node: str
    params: Arrays
    n_samples: int
    n_steps: int
    train_loss: float
    duration_s: float
    aux_vars: dict[str, AuxVarData] = field(default_factory=dict)
    secagg: SecAggData | None = None


@dataclass
class SecAggRequest:
    """Researcher -> node: one step of a secure-aggregation scheme (key exchange, unmasking)."""

    experiment_id: str
    round_index: int
    data: SecAggData


@dataclass
class SecAggReply:
    """Node -> researcher: the node's answer to a :class:`SecAggRequest`."""

    experiment_id: str
    round_index: int
    node: str
    data: SecAggData


@dataclass
class EvaluateRequest:
    """Researcher -> node: evaluate ``params`` on the held-out split of the tagged dataset."""

    experiment_id: str
    round_index: int
    plan: PlanRef
    model_args: dict[str, JSON]
    training_args: dict[str, JSON]
    tags: list[str]
    params: Arrays


@dataclass
class EvaluateReply:
    """Node -> researcher: metrics on its held-out split and that split's size."""

    experiment_id: str
    round_index: int
    node: str
    metrics: dict[str, float]
    n_samples: int
    duration_s: float


@dataclass
class ErrorReply:
    """Node -> researcher: the request was refused or failed; the node keeps running."""

    experiment_id: str
    round_index: int
    node: str
    error: str
    message: str
    details: dict[str, JSON] = field(default_factory=dict)


Message = (
    TrainRequest
    | TrainReply
    | EvaluateRequest
    | EvaluateReply
    | SecAggRequest
    | SecAggReply
    | ErrorReply
)
MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TrainRequest,
        TrainReply,
        EvaluateRequest,
        EvaluateReply,
        SecAggRequest,
        SecAggReply,
        ErrorReply,
    )
}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


# -- encoding -----------------------------------------------------------------------------------


class _Encoder:
    """Builds a header body while collecting the arrays' raw bytes."""

    def __init__(self) -> None:
        self.blobs: list[Any] = []
        self.size = 0

    def array(self, name: str, value: Any) -> list[Any]:
        arr = np.asarray(value)
        if arr.dtype.str not in _DTYPES:
            arr = arr.astype(arr.dtype.newbyteorder("<"))
            if arr.dtype.str not in _DTYPES:
                raise MessageError(f"array {name!r} has unsupported dtype {arr.dtype}")
        shape = list(arr.shape)  # np.ascontiguousarray would turn a 0-d array into shape (1,)
        flat = np.require(arr, requirements="C").reshape(-1)
        offset = self.size
        if flat.nbytes:
            self.blobs.append(memoryview(flat).cast("B"))
            self.size += flat.nbytes
        return [arr.dtype.str, shape, offset, flat.nbytes]

    def value(self, value: Any, hint: Any, path: str) -> Any:
        if hint == Arrays:
            return {name: self.array(f"{path}.{name}", arr) for name, arr in value.items()}
        if is_dataclass(hint):
            return {
                f.name: self.value(getattr(value, f.name), _hints(hint)[f.name], f"{path}.{f.name}")
                for f in fields(hint)
            }
        origin = typing.get_origin(hint)
        if origin is dict and isinstance(value, dict):
            inner = typing.get_args(hint)[1]
            return {key: self.value(item, inner, f"{path}.{key}") for key, item in value.items()}
        if origin in (typing.Union, types.UnionType) and value is not None:
            (inner,) = [opt for opt in typing.get_args(hint) if opt is not type(None)]
            return self.value(value, inner, path)
        if isinstance(value, np.generic):
            return value.item()
        return value


def encode(message: Message) -> bytes:
    """Encode a message dataclass to bytes."""
    return b"".join(encode_parts(message))


def encode_parts(message: Message) -> list[Any]:
    """The bytes of :func:`encode` as a list of buffers, not joined: the frame's prefix and
    header, then each array's memory (views, not copies). A transport that sends in chunks
    sends a large model without one more copy of it; the arrays must not change meanwhile."""
    cls = type(message)
    if MESSAGE_TYPES.get(cls.__name__) is not cls:
        raise MessageError(f"cannot encode {cls.__name__}: not a fedplug message type")
    encoder = _Encoder()
    hints = _hints(cls)
    body = {
        f.name: encoder.value(getattr(message, f.name), hints[f.name], f.name) for f in fields(cls)
    }
    try:
        header = msgpack.packb(
            {"fedplug": VERSION, "type": cls.__name__, "body": body}, use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot encode {cls.__name__}: {exc}") from exc
    return [struct.pack("<I", len(header)) + header, *encoder.blobs]


def frame(header: bytes, *blobs: Any) -> bytes:
    """Join a packed header and raw array bytes into one message frame."""
    return b"".join([struct.pack("<I", len(header)), header, *blobs])


# -- decoding -----------------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack extension type {code} is not allowed in fedplug messages")


def _check_keys(value: dict, path: str) -> None:
    for key in value:
        if not isinstance(key, str):
            raise MessageError(f"{path}: map keys must be strings, got {key!r}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Decoder:
    """Validates a header body against field types; arrays become views of the raw section."""

    def __init__(self, data: memoryview, raw_start: int) -> None:
        self.data = data
        self.raw_start = raw_start
        self.raw_size = len(data) - raw_start
        self.spans: list[tuple[int, int]] = []

    def array(self, raw: Any, path: str) -> np.ndarray:
        if not (isinstance(raw, list) and len(raw) == 4):
            raise MessageError(
                f"{path}: an array must be [dtype, shape, offset, nbytes], got {raw!r:.60}"
            )
        dtype, shape, offset, nbytes = raw
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise MessageError(
                f"{path}: unsupported dtype {dtype!r}; allowed: {', '.join(sorted(_DTYPES))}"
            )
        if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(map(_is_count, shape))):
            raise MessageError(f"{path}: invalid shape {shape!r:.80}")
        if any(size > _MAX_DIM for size in shape):  # numpy refuses them, even with no element
            raise MessageError(f"{path}: shape {shape!r:.80} has a dimension over {_MAX_DIM}")
        if not (_is_count(offset) and _is_count(nbytes)):
            raise MessageError(f"{path}: array offset and nbytes must be non-negative ints")
        expected = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes != expected:
            raise MessageError(
                f"{path}: {nbytes} bytes do not match dtype {dtype} and shape {tuple(shape)} "
                f"({expected} bytes expected)"
            )
        if offset + nbytes > self.raw_size:
            raise MessageError(
                f"{path}: bytes {offset}..{offset + nbytes} lie outside the message's "
                f"{self.raw_size} bytes of array data"
            )
        if nbytes:
            self.spans.append((offset, nbytes))
        return self._make(path, np.dtype(dtype), tuple(shape), offset, nbytes)

    def _make(self, path: str, dtype: np.dtype, shape: tuple, offset: int, nbytes: int) -> Any:
        try:
            start = self.raw_start + offset
            arr = np.frombuffer(self.data[start : start + nbytes], dtype=dtype).reshape(shape)
        except (ValueError, OverflowError) as exc:
            raise MessageError(f"{path}: invalid shape {tuple(shape)}: {exc}") from None
        _check_finite(arr, path)
        return arr

    def placed(self, arrays: dict[str, Any]) -> None:
        """Called with each map of arrays once built."""

    def check_tiling(self) -> None:
        """The arrays must cover the raw section exactly: no overlap, gap or trailing bytes."""
        position = 0
        for offset, nbytes in sorted(self.spans):
            if offset != position:
                raise MessageError(
                    f"array data is not laid out contiguously (a gap or overlap at byte {offset})"
                )
            position += nbytes
        if position != self.raw_size:
            raise MessageError(
                f"{self.raw_size - position} bytes of array data are not used by any array"
            )


def _check_finite(arr: np.ndarray, path: str) -> None:
    # One summing pass: a finite sum proves every value finite; only a NaN, an infinity or an
    # overflowing sum of huge values needs the exact, slower scan.
    if arr.dtype.kind != "f":
        return
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: the exact scan decides
        total = arr.sum()
    if not np.isfinite(total) and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "infinite values"
        raise MessageError(f"{path}: contains {bad}; refusing non-finite parameters")


def _check_json(value: Any, path: str, depth: int = 0) -> Any:
    if depth > 32:
        raise MessageError(f"{path}: nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MessageError(f"{path}: non-finite number {value!r}")
        return value
    if isinstance(value, list):
        return [_check_json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        _check_keys(value, path)
        return {key: _check_json(item, f"{path}.{key}", depth + 1) for key, item in value.items()}
    raise MessageError(f"{path}: unexpected value of type {type(value).__name__}")


FieldDecoder = Callable[[_Decoder, Any, str], Any]


@functools.cache
def _field_decoder(hint: Any) -> FieldDecoder:
    """A decoding function for one field type, built once per type."""
    origin = typing.get_origin(hint)
    if hint == Arrays:

        def arrays(dec: _Decoder, value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise MessageError(f"{path}: expected a map of arrays, got {type(value).__name__}")
            _check_keys(value, path)
            arrays = {name: dec.array(raw, f"{path}.{name}") for name, raw in value.items()}
            dec.placed(arrays)
            return arrays

        return arrays
    if origin in (typing.Union, types.UnionType):
        (inner,) = [opt for opt in typing.get_args(hint) if opt is not type(None)]
        inner_decoder = _field_decoder(inner)
        return lambda dec, value, path: None if value is None else inner_decoder(dec, value, path)
    if hint is JSON:
        return lambda dec, value, path: _check_json(value, path)
    if is_dataclass(hint):
        return lambda dec, value, path: _decode_fields(dec, hint, value, path)
    if origin is list:
        inner_decoder = _field_decoder(typing.get_args(hint)[0])

        def sequence(dec: _Decoder, value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise MessageError(f"{path}: expected a list, got {type(value).__name__}")
            return [inner_decoder(dec, item, f"{path}[{i}]") for i, item in enumerate(value)]

        return sequence
    if origin is dict:
        inner_decoder = _field_decoder(typing.get_args(hint)[1])

        def mapping(dec: _Decoder, value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
            _check_keys(value, path)
            return {key: inner_decoder(dec, item, f"{path}.{key}") for key, item in value.items()}

        return mapping
    if hint is float:

        def number(dec: _Decoder, value: Any, path: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MessageError(f"{path}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise MessageError(f"{path}: non-finite number {value!r}")
            return float(value)

        return number
    if hint in (int, str, bool):

        def scalar(dec: _Decoder, value: Any, path: str) -> Any:
            if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
                raise MessageError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
            return value

        return scalar
    raise TypeError(f"no decoder for field type {hint!r}")  # a bug in a message definition


def _decode_fields(dec: _Decoder, cls: type, body: Any, path: str) -> Any:
    if not isinstance(body, dict):
        raise MessageError(f"{path}: expected a map of fields, got {type(body).__name__}")
    _check_keys(body, path)
    hints = _hints(cls)
    extra = [key for key in body if key not in hints]
    if extra:
        raise MessageError(f"{path}: unexpected field {sorted(extra)[0]!r} in {cls.__name__}")
    values = {}
    for f in fields(cls):
        if f.name not in body:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise MessageError(f"{path}: {cls.__name__} is missing field {f.name!r}")
        values[f.name] = _field_decoder(hints[f.name])(dec, body[f.name], f"{path}.{f.name}")
    return cls(**values)


def unpack_limited(data: Any, max_containers: int = MAX_CONTAINERS) -> Any:
    """Unpack msgpack ``data`` building at most ``max_containers`` lists and maps: an empty one
    costs one byte on the wire and some sixty in memory, so a message made of them would cost
    the receiver far more than its size (a :class:`MessageError` past the budget)."""
    left = [max_containers]

    def counted(container: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise MessageError(
                f"malformed message: more than {max_containers} lists and maps in its header"
            )
        return container

    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            use_list=True,
            list_hook=counted,
            object_hook=counted,
        )
    except MessageError:
        raise
    except Exception as exc:  # msgpack raises many types on garbage; all mean "not a message"
        raise MessageError(f"malformed message bytes: {type(exc).__name__}: {exc}") from None


def _check_header_size(size: int, available: int, max_header_bytes: int) -> None:
    if size > available:
        raise MessageError(
            f"malformed message: header of {size} bytes announced, {available} available"
        )
    if size > max_header_bytes:
        raise MessageError(
            f"message header of {size} bytes exceeds the limit of {max_header_bytes} bytes here"
        )


def read_header(
    data: bytes | bytearray | memoryview, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[Any, int]:
    """The unpacked (unvalidated) header of a frame and where its raw array section starts."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if len(view) < 4:
        raise MessageError(f"malformed message: {len(view)} bytes is shorter than a frame header")
    (size,) = struct.unpack_from("<I", view)
    _check_header_size(size, len(view) - 4, max_header_bytes)
    return unpack_limited(view[4 : 4 + size]), 4 + size


T = TypeVar("T")


def decode(
    data: bytes | bytearray | memoryview,
    expected: type[T] | tuple[type, ...] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> T:
    """Decode and validate bytes produced by :func:`encode`.

    Arrays in the result are read-only views of ``data``.

    :param expected: the message type(s) the caller accepts; anything else is a MessageError.
    :param max_bytes: refuse larger payloads before parsing them.
    :param max_header_bytes: refuse a larger header before parsing it.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"a message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    envelope, raw_start = read_header(data, max_header_bytes)
    cls = _message_class(envelope, expected)
    view = data if isinstance(data, memoryview) else memoryview(data)
    decoder = _Decoder(view.cast("B") if view.format != "B" else view, raw_start)
    message = _decode_fields(decoder, cls, envelope["body"], cls.__name__)
    decoder.check_tiling()
    return message


def _message_class(envelope: Any, expected: type | tuple[type, ...] | None) -> type:
    """The message type an unpacked header announces, checked against ``expected``."""
    if not (isinstance(envelope, dict) and set(envelope) == {"fedplug", "type", "body"}):
        raise MessageError("malformed message: not a fedplug envelope")
    if type(envelope["fedplug"]) is not int or envelope["fedplug"] != VERSION:
        raise MessageError(
            f"message format version {envelope['fedplug']!r} is not supported (this fedplug "
            f"speaks version {VERSION}); upgrade the older side"
        )
    cls = MESSAGE_TYPES.get(envelope["type"]) if isinstance(envelope["type"], str) else None
    if cls is None:
        raise MessageError(f"unknown message type {envelope['type']!r}")
    if expected is not None and not (
        cls in expected if isinstance(expected, tuple) else cls is expected
    ):
        names = (
            [t.__name__ for t in expected] if isinstance(expected, tuple) else [expected.__name__]
        )
        raise MessageError(f"expected a {' or '.join(names)}, got a {cls.__name__}")
    return cls


# -- decoding a message that arrives in pieces --------------------------------------------------


@dataclass(eq=False)
class ArraySlot:
    """Where an array of a message being received will be: what :func:`decode_stream`'s
    ``on_header`` sees in place of each array, before any of its bytes have arrived."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def size(self) -> int:
        return self.nbytes // self.dtype.itemsize


#: ``sink(start, values)``: consecutive elements of a streamed array, ``values`` a 1-D read-only
#: array (possibly unaligned) that is valid only during the call, ``start`` its first index.
Sink = Callable[[int, np.ndarray], None]


class _SlotDecoder(_Decoder):
    """Validates a header whose arrays have not arrived: they become :class:`ArraySlot`\\ s."""

    def __init__(self, raw_size: int) -> None:
        self.raw_start, self.raw_size = 0, raw_size
        self.spans = []
        self.slots: list[tuple[ArraySlot, dict[str, Any], str]] = []  # and where each goes
        self._pending: list[ArraySlot] = []

    def _make(self, path: str, dtype: np.dtype, shape: tuple, offset: int, nbytes: int) -> Any:
        slot = ArraySlot(path, dtype, shape, offset, nbytes)
        self._pending.append(slot)
        return slot

    def placed(self, arrays: dict[str, Any]) -> None:
        by_id = {id(slot): slot for slot in self._pending}
        for name, value in arrays.items():
            if id(value) in by_id:
                self.slots.append((value, arrays, name))
        self._pending = []


class _Filling:
    """Bytes of one array as they arrive: copied into a new array, or passed on to a sink in
    whole elements (an element split across two chunks is joined first). When the whole message
    came in one piece (``raw``: its array section), an array without a sink is a view of it."""

    def __init__(self, slot: ArraySlot, sink: Sink | None, raw: memoryview | None) -> None:
        self.slot, self.sink = slot, sink
        self.view = raw[slot.offset : slot.offset + slot.nbytes] if raw is not None else None
        self.buffer = None
        if sink is None and self.view is None:
            self.buffer = np.empty(slot.nbytes, np.uint8)
        self.carry = b""
        self.emitted = 0

    def write(self, within: int, data: memoryview) -> None:
        if self.sink is None and self.view is not None:
            return  # the array is a view of the message
        if self.buffer is not None:
            self.buffer[within : within + len(data)] = np.frombuffer(data, np.uint8)
            return
        itemsize = self.slot.dtype.itemsize
        if self.carry:
            need = itemsize - len(self.carry)
            self.carry += bytes(data[:need])
            data = data[need:]
            if len(self.carry) < itemsize:
                return
            self._emit(np.frombuffer(self.carry, self.slot.dtype))
            self.carry = b""
        whole = len(data) - len(data) % itemsize
        if whole:
            self._emit(np.frombuffer(data[:whole], self.slot.dtype))
        if whole < len(data):
            self.carry = bytes(data[whole:])

    def _emit(self, values: np.ndarray) -> None:
        _check_finite(values, self.slot.path)
        self.sink(self.emitted, values)
        self.emitted += values.size

    def array(self) -> np.ndarray:
        data = self.buffer if self.view is None else np.frombuffer(self.view, np.uint8)
        try:
            arr = data.view(self.slot.dtype).reshape(self.slot.shape)
        except (ValueError, OverflowError) as exc:
            raise MessageError(
                f"{self.slot.path}: invalid shape {self.slot.shape}: {exc}"
            ) from None
        _check_finite(arr, self.slot.path)
        arr.flags.writeable = False
        return arr


def decode_stream(
    chunks: Iterable[Any],
    size: int,
    expected: type[T] | tuple[type, ...] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
    on_header: Callable[[Any], dict[ArraySlot, Sink] | None] | None = None,
) -> T:
    """Decode a message of ``size`` bytes that arrives as ``chunks`` (any split), validating it
    as :func:`decode` does, without ever holding the whole message.

    ``on_header(message)`` sees the message as soon as its header is read and validated, before
    any array byte: its arrays are :class:`ArraySlot` placeholders. It may raise to refuse the
    message, and returns the :data:`Sink` for each array it takes as it arrives (checked finite
    piece by piece); those stay slots in the returned message. The other arrays are copied into
    arrays of their own. ``chunks`` is closed (if it can be) however decoding ends.
    """
    if not (isinstance(size, int) and 4 <= size <= max_bytes):
        raise MessageError(f"message of {size} bytes: a message has 4 to {max_bytes} bytes")
    it = iter(chunks)
    try:
        return _decode_stream(it, size, expected, on_header, max_header_bytes)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _decode_stream(
    it: Iterator[Any], size: int, expected: Any, on_header: Any, max_header_bytes: int
) -> Any:
    head = bytearray()
    rest = memoryview(b"")
    need = 4
    while len(head) < need:
        chunk = next(it, None)
        if chunk is None:
            raise MessageError(f"message ended after {len(head)} of {size} bytes")
        view = memoryview(chunk).cast("B")
        take = need - len(head)
        head += view[:take]
        rest = view[take:]
        if need == 4 and len(head) == 4:
            (header_size,) = struct.unpack_from("<I", head)
            _check_header_size(header_size, size - 4, max_header_bytes)  # before reading it
            need = 4 + header_size
            take = min(need - 4, len(rest))
            head += rest[:take]
            rest = rest[take:]
    envelope, raw_start = read_header(head, max_header_bytes)
    cls = _message_class(envelope, expected)
    decoder = _SlotDecoder(size - raw_start)
    message = _decode_fields(decoder, cls, envelope["body"], cls.__name__)
    decoder.check_tiling()
    sinks = (on_header(message) if on_header is not None else None) or {}
    # the whole message in its first piece: arrays without a sink are views of it, no copy
    raw = rest[: decoder.raw_size] if len(rest) == decoder.raw_size else None
    fillings = sorted(
        (
            (_Filling(slot, sinks.get(slot), raw), where, name)
            for slot, where, name in decoder.slots
        ),
        key=lambda item: item[0].slot.offset,
    )
    pending = [item for item in fillings if item[0].slot.nbytes]
    index, position = 0, 0
    if len(rest) > decoder.raw_size:
        raise MessageError(f"message continues past its announced {size} bytes")
    while True:
        while len(rest):
            filling = pending[index][0]
            within = position - filling.slot.offset
            take = min(filling.slot.nbytes - within, len(rest))
            filling.write(within, rest[:take])
            rest, position = rest[take:], position + take
            if within + take == filling.slot.nbytes:
                index += 1
        if position == decoder.raw_size:
            break
        chunk = next(it, None)
        if chunk is None:
            raise MessageError(f"message ended after {raw_start + position} of {size} bytes")
        rest = memoryview(chunk).cast("B")
        if len(rest) > decoder.raw_size - position:
            raise MessageError(f"message continues past its announced {size} bytes")
    for chunk in it:
        if len(memoryview(chunk)):
            raise MessageError(f"message continues past its announced {size} bytes")
    for filling, where, name in fillings:
        if filling.sink is None:
            where[name] = filling.array()
    return message
