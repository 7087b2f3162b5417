"""Aggregators: how the researcher combines the parameters returned by nodes into one model.

An aggregator is fed replies one by one as they arrive (:meth:`Aggregator.add`), so that a
weighted-sum aggregator such as :class:`FedAverage` keeps memory O(model size) whatever the number
of nodes. Robust aggregators (:class:`Median`) need every reply and keep them all.
Core's aggregators are registered by the built-in plugin (``"fedavg"``, ``"median"``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from fedplug.errors import AggregationError
from fedplug.plan import Params


class Aggregator:
    """Base class: ``begin`` a round, ``add`` each reply, then take the ``result``."""

    name = "aggregator"
    #: True when the result is the sample-weighted sum of replies divided by the total weight
    #: (what secure aggregation can compute without seeing individual replies).
    weighted_sum = False
    #: True when a reply can be folded in piece by piece while it arrives (:meth:`add_part`,
    #: then :meth:`commit`), so that the researcher never holds a whole reply.
    streams = False

    def begin(self, global_params: Params) -> None:
        """Start a round whose replies must match ``global_params`` in names and shapes."""
        self._spec = {name: np.shape(value) for name, value in global_params.items()}
        self._dtypes = {name: np.asarray(value).dtype for name, value in global_params.items()}
        self.nodes: list[str] = []

    def get_state(self) -> dict[str, Any]:
        """State kept across rounds, saved in checkpoints (JSON values); none by default."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    def add(self, node: str, params: Params, n_samples: int) -> None:
        """Fold in one node's parameters, weighted by its number of training samples."""
        self.check(node, params, n_samples)
        self.nodes.append(node)
        self._add(params, int(n_samples))

    def check(self, node: str, params: Any, n_samples: int) -> None:
        """Refuse a reply that cannot be folded in: a bad sample count, other parameter names
        or shapes. ``params`` only needs names and shapes (the arrays may not be there
        yet)."""
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples <= 0
        ):
            raise AggregationError(
                f"node {node!r} replied with n_samples={n_samples!r}; a reply must have trained "
                "on at least one sample to be aggregated"
            )
        if set(params) != set(self._spec):
            raise AggregationError(
                f"node {node!r} returned parameters {sorted(params)}, expected {sorted(self._spec)}"
            )
        for name, value in params.items():
            if np.shape(value) != self._spec[name]:
                raise AggregationError(
                    f"node {node!r} returned {name!r} with shape {np.shape(value)}, "
                    f"expected {self._spec[name]}"
                )

    def add_part(self, name: str, start: int, values: np.ndarray, n_samples: int) -> None:
        """Streaming aggregators: fold elements ``start:start + values.size`` of parameter
        ``name`` (flattened) of a reply checked (:meth:`check`) with ``n_samples``."""
        raise NotImplementedError(f"{type(self).__name__} does not fold replies piece by piece")

    def commit(self, node: str, n_samples: int) -> None:
        """Streaming aggregators: every part of ``node``'s reply has been folded in."""
        raise NotImplementedError(f"{type(self).__name__} does not fold replies piece by piece")

    def _add(self, params: Params, n_samples: int) -> None:
        raise NotImplementedError

    def result(self) -> Params:
        """The aggregated parameters, in the global model's dtypes."""
        if not self.nodes:
            raise AggregationError("no node reply to aggregate this round")
        return {
            name: value.astype(self._dtypes[name], copy=False)
            for name, value in self._result().items()
        }

    def _result(self) -> Params:
        raise NotImplementedError

    def aggregate(
        self, global_params: Params, replies: Iterable[tuple[str, Params, int]]
    ) -> Params:
        """Aggregate a whole round at once: ``(node, params, n_samples)`` triples."""
        self.begin(global_params)
        for node, params, n_samples in replies:
            self.add(node, params, n_samples)
        return self.result()


class FedAverage(Aggregator):
    """Federated averaging (McMahan et al.): the mean of node parameters weighted by sample counts.

    Folds replies in as they come, one buffer per parameter: memory is O(model), not
    O(nodes x model). The buffers are kept for the next round, and reused once nothing else
    holds them (the result was copied into the global model). Sums are kept in the
    parameter's precision (float32 for float32 and float16 models, float64 otherwise): the
    rounding of a sum of node updates is far below what training itself changes, and a
    float32 model then costs half the memory traffic.
    """

    name = "fedavg"
    weighted_sum = True
    streams = True

    _CHUNK = 1 << 18  # elements weighted at a time: bounds the scratch memory to 2 MiB

    def begin(self, global_params: Params) -> None:
        super().begin(global_params)
        previous, self._sum = getattr(self, "_sum", {}), {}
        for name, shape in self._spec.items():
            self._sum[name] = _zeroed(previous.pop(name, None), shape, self._dtypes[name])
        del previous
        self._scratch: dict[np.dtype, np.ndarray] = {}
        self._total = 0

    def _add(self, params: Params, n_samples: int) -> None:
        for name, value in params.items():
            self.add_part(name, 0, np.asarray(value).reshape(-1), n_samples)
        self._total += n_samples

    def add_part(self, name: str, start: int, values: np.ndarray, n_samples: int) -> None:
        # element by element the same arithmetic whatever the pieces: streamed or whole replies
        # give bit-identical sums
        flat_sum = self._sum[name].reshape(-1)[start : start + values.size]
        if flat_sum.size != values.size:
            raise AggregationError(
                f"elements {start}..{start + values.size} of {name!r} lie outside its "
                f"{self._sum[name].size} elements"
            )
        scratch = self._scratch.get(flat_sum.dtype)
        if scratch is None or scratch.size < min(values.size, self._CHUNK):
            scratch = np.empty(min(values.size, self._CHUNK), dtype=flat_sum.dtype)
            self._scratch[flat_sum.dtype] = scratch
        # values near their type's limit overflow: the round refuses a result that is not finite
        with np.errstate(over="ignore", invalid="ignore"):
            for offset in range(0, values.size, self._CHUNK):
                part = scratch[: min(self._CHUNK, values.size - offset)]
                np.multiply(
                    values[offset : offset + part.size], n_samples, out=part, casting="unsafe"
                )
                flat_sum[offset : offset + part.size] += part

    def commit(self, node: str, n_samples: int) -> None:
        self.nodes.append(node)
        self._total += int(n_samples)

    def _result(self) -> Params:
        if self._total:  # divide in place once; a second call returns the same mean
            for total in self._sum.values():
                total /= self._total
            self._total = 0
            self._scratch = {}
        return self._sum


def _zeroed(previous: np.ndarray | None, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A zeroed sum for a parameter of ``shape`` and ``dtype``: the last round's sum when nothing
    else holds it any more (the global model was copied out of it), since zeroing it is cheaper
    than the kernel zeroing fresh pages as they are first written (bench/transport.py)."""
    dtype = _sum_dtype(dtype)
    if (
        previous is not None
        and previous.shape == shape
        and previous.dtype == dtype
        and sys.getrefcount(previous) <= 2  # a free one: ``previous`` and getrefcount's argument
    ):
        previous.fill(0)
        return previous
    return np.zeros(shape, dtype=dtype)


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype in (np.float32, np.float16) else np.dtype(np.float64)


class Median(Aggregator):
    """Coordinate-wise median of node parameters (robust to a minority of outlying nodes).

    Sample counts are checked but do not weigh in; every reply is kept until the round ends.
    """

    name = "median"

    def begin(self, global_params: Params) -> None:
        super().begin(global_params)
        self._replies: list[Params] = []

    def _add(self, params: Params, n_samples: int) -> None:
        self._replies.append({name: np.asarray(value) for name, value in params.items()})

    def _result(self) -> Params:
        return {
            name: np.median(np.stack([reply[name] for reply in self._replies]), axis=0)
            for name in self._spec
        }
