"""Typed messages between researcher and nodes, and their byte encoding.

Every exchange is one of the dataclasses below, encoded to bytes even in-process so that any
transport can carry it. The encoding is a msgpack envelope ``{"fedplug": VERSION, "type": name,
"body": {...}}``; arrays travel as ``[dtype, shape, raw bytes]``. Nothing is ever unpickled.

:func:`decode` validates everything against the message's declared field types and raises
:class:`MessageError` for anything else: unknown types, missing or extra fields, wrong value types,
arrays whose bytes disagree with their dtype and shape, unsupported dtypes, non-finite floats, and
payloads over ``max_bytes``.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import msgpack
import numpy as np

from fedplug.errors import MessageError

VERSION = 1
DEFAULT_MAX_BYTES = 4 * 1024**3
_MAX_NDIM = 32
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
    """How a node finds the plan to run: a registered name, or source code plus its imports."""

    name: str | None = None
    source: str | None = None
    class_name: str | None = None
    sha256: str | None = None


@dataclass
class TrainRequest:
    """Researcher -> node: train the global parameters on the dataset that matches ``tags``."""

    experiment_id: str
    round_index: int
    plan: PlanRef
    model_args: dict[str, JSON]
    training_args: dict[str, JSON]
    tags: list[str]
    params: Arrays


@dataclass
class TrainReply:
    """Node -> researcher: locally trained parameters and what training did."""

    experiment_id: str
    round_index: int
    node: str
    params: Arrays
    n_samples: int
    n_steps: int
    train_loss: float
    duration_s: float


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


Message = TrainRequest | TrainReply | EvaluateRequest | EvaluateReply | ErrorReply
MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TrainRequest, TrainReply, EvaluateRequest, EvaluateReply, ErrorReply)
}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


# -- encoding -----------------------------------------------------------------------------------


def _encode_array(name: str, value: Any) -> list[Any]:
    arr = np.asarray(value)
    if arr.dtype.str not in _DTYPES:
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.str not in _DTYPES:
            raise MessageError(f"array {name!r} has unsupported dtype {arr.dtype}")
    shape = list(arr.shape)  # np.ascontiguousarray would turn a 0-d array into shape (1,)
    flat = np.require(arr, requirements="C").reshape(-1)
    return [arr.dtype.str, shape, memoryview(flat).cast("B") if arr.size else b""]


def _encode_value(value: Any, hint: Any, path: str) -> Any:
    if hint == Arrays:
        return {name: _encode_array(f"{path}.{name}", arr) for name, arr in value.items()}
    if is_dataclass(hint):
        return {
            f.name: _encode_value(getattr(value, f.name), _hints(hint)[f.name], f"{path}.{f.name}")
            for f in fields(hint)
        }
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode(message: Message) -> bytes:
    """Encode a message dataclass to bytes."""
    cls = type(message)
    if MESSAGE_TYPES.get(cls.__name__) is not cls:
        raise MessageError(f"cannot encode {cls.__name__}: not a fedplug message type")
    hints = _hints(cls)
    body = {
        f.name: _encode_value(getattr(message, f.name), hints[f.name], f.name) for f in fields(cls)
    }
    try:
        return msgpack.packb(
            {"fedplug": VERSION, "type": cls.__name__, "body": body}, use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot encode {cls.__name__}: {exc}") from exc


# -- decoding -----------------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack extension type {code} is not allowed in fedplug messages")


def _decode_array(raw: Any, path: str) -> np.ndarray:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise MessageError(
            f"{path}: an array must be [dtype, shape, bytes], got {type(raw).__name__}"
        )
    dtype, shape, data = raw
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise MessageError(
            f"{path}: unsupported dtype {dtype!r}; allowed: {', '.join(sorted(_DTYPES))}"
        )
    if not (
        isinstance(shape, list)
        and len(shape) <= _MAX_NDIM
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MessageError(f"{path}: invalid shape {shape!r}")
    if not isinstance(data, bytes):
        raise MessageError(f"{path}: array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise MessageError(
            f"{path}: {len(data)} bytes do not match dtype {dtype} and shape {tuple(shape)} "
            f"({expected} bytes expected)"
        )
    try:
        arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise MessageError(f"{path}: invalid shape {tuple(shape)}: {exc}") from None
    # A float64 sum is NaN/inf iff some value is (a float32 array cannot overflow it); only a
    # float64 array of huge finite values needs the exact, slower scan.
    if (
        arr.dtype.kind == "f"
        and not np.isfinite(arr.sum(dtype=np.float64))
        and not np.isfinite(arr).all()
    ):
        bad = "NaN" if np.isnan(arr).any() else "infinite values"
        raise MessageError(f"{path}: contains {bad}; refusing non-finite parameters")
    return arr


def _check_keys(value: dict, path: str) -> None:
    for key in value:
        if not isinstance(key, str):
            raise MessageError(f"{path}: map keys must be strings, got {key!r}")


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


def _decode_value(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint == Arrays:
        if not isinstance(value, dict):
            raise MessageError(f"{path}: expected a map of arrays, got {type(value).__name__}")
        _check_keys(value, path)
        return {name: _decode_array(raw, f"{path}.{name}") for name, raw in value.items()}
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [opt for opt in options if opt is not type(None)]
        return _decode_value(value, inner, path)
    if hint is JSON:
        return _check_json(value, path)
    if is_dataclass(hint):
        return _decode_fields(hint, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{path}: expected a list, got {type(value).__name__}")
        (inner,) = typing.get_args(hint)
        return [_decode_value(item, inner, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
        _, inner = typing.get_args(hint)
        _check_keys(value, path)
        return {key: _decode_value(item, inner, f"{path}.{key}") for key, item in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageError(f"{path}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise MessageError(f"{path}: non-finite number {value!r}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise MessageError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    raise MessageError(f"{path}: no decoder for field type {hint!r}")  # pragma: no cover


def _decode_fields(cls: type, body: Any, path: str) -> Any:
    if not isinstance(body, dict):
        raise MessageError(f"{path}: expected a map of fields, got {type(body).__name__}")
    _check_keys(body, path)
    hints = _hints(cls)
    declared = {f.name for f in fields(cls)}
    extra = sorted(set(body) - declared)
    if extra:
        raise MessageError(f"{path}: unexpected field {extra[0]!r} in {cls.__name__}")
    values = {}
    for f in fields(cls):
        if f.name not in body:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise MessageError(f"{path}: {cls.__name__} is missing field {f.name!r}")
        values[f.name] = _decode_value(body[f.name], hints[f.name], f"{path}.{f.name}")
    return cls(**values)


T = TypeVar("T")


def decode(
    data: bytes | bytearray | memoryview,
    expected: type[T] | tuple[type, ...] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> T:
    """Decode and validate bytes produced by :func:`encode`.

    :param expected: the message type(s) the caller accepts; anything else is a MessageError.
    :param max_bytes: refuse larger payloads before parsing them.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"a message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        envelope = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
        )
    except MessageError:
        raise
    except Exception as exc:  # msgpack raises many types on garbage; all mean "not a message"
        raise MessageError(f"malformed message bytes: {type(exc).__name__}: {exc}") from None
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
    return _decode_fields(cls, envelope["body"], cls.__name__)
