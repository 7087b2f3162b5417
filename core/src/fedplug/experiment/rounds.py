"""A round on the researcher's side: requests out, replies in, under the failure policy.

:class:`Dispatch` sends one request to the selected nodes through the transport and hands each
good reply on, applying ``on_node_failure`` and ``min_nodes``. A training round is a
:class:`TrainingRound`, which a *fit workflow* runs (Flower's ``DefaultWorkflow(fit_workflow=...)``
seam): :class:`PlainAggregation`, core's, folds the nodes' parameters into the aggregator as they
arrive; a secure-aggregation scheme (:class:`fedplug.secagg.SecAggScheme`) replaces it with its own
steps and returns the average it unmasks. Core's round has no branch for either.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedplug import messages as msg
from fedplug.aggregators import Aggregator
from fedplug.errors import (
    AggregationError,
    FedplugError,
    MessageError,
    NodeError,
    node_failure_advice,
)
from fedplug.optimizer import Optimizer, pack_aux_vars
from fedplug.plan import Params, params_spec
from fedplug.text import inert

log = logging.getLogger("fedplug.experiment")


@dataclass
class StreamFold:
    """How a fit workflow folds in replies that a transport streams: ``accept(node, reply)``
    checks a reply's header and returns a sink per streamed array, ``commit(node, reply)``
    closes a reply all folded in, ``reset()`` forgets the round's sum."""

    accept: Callable[[str, Any], dict[msg.ArraySlot, msg.Sink]]
    commit: Callable[[str, Any], None]
    reset: Callable[[], None]
    dirty: bool = False  # part of a reply not yet committed has been folded in


@contextlib.contextmanager
def interruptible(stream: Any) -> Iterator[Any]:
    """Close a transport's reply stream when its collection ends. On Ctrl-C (a
    ``BaseException`` that is not an ``Exception``) the interrupt is raised inside the stream
    too, so that the transport stops its nodes' work at once instead of draining it as it does
    for a round that merely failed."""
    try:
        yield stream
    except BaseException as exc:
        if not isinstance(exc, Exception) and hasattr(stream, "throw"):
            with contextlib.suppress(BaseException):
                stream.throw(exc)
        raise
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()


@dataclass
class Dispatch:
    """Sends an experiment's requests through its transport, under its failure policy."""

    experiment_id: str
    transport: Any
    nodes: list[str]
    on_node_failure: str
    min_nodes: int
    plan_ref: msg.PlanRef
    model_args: dict[str, Any]
    training_args: dict[str, Any]
    tags: list[str]

    def request(self, cls: type, index: int, params: Params, **extra: Any) -> list[Any]:
        """A train or evaluate request as buffers; the arrays travel from ``params``' memory."""
        return msg.encode_parts(
            cls(
                experiment_id=self.experiment_id,
                round_index=index,
                plan=self.plan_ref,
                model_args=self.model_args,
                training_args=self.training_args,
                tags=self.tags,
                params=params,
                **extra,
            )
        )

    def collect(
        self,
        payload: bytes | list[Any],
        index: int,
        expected: type,
        on_reply: Callable[[str, Any], None],
        nodes: list[str] | None = None,
        min_nodes: int | None = None,
        fold: StreamFold | None = None,
        on_header: Callable[[str, Any], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Dispatch ``payload``; pass each good reply to ``on_reply``; apply the failure policy.

        With ``fold``, and a transport that streams replies, a reply is folded in while it
        arrives (``fold`` instead of ``on_reply``, after ``on_header`` checked its header):
        never held whole."""
        nodes = self.nodes if nodes is None else nodes
        min_nodes = self.min_nodes if min_nodes is None else min_nodes
        replies: dict[str, Any] = {}
        failures: dict[str, str] = {}
        streaming = fold is not None and getattr(self.transport, "streams_replies", False)
        options = {"streams": True} if streaming else {}
        folded: list[tuple[str, Any]] = []  # streamed replies folded in, to fold them again
        # closing(): a round that fails stops the dispatch at once and lets the transport clean up
        with interruptible(self.transport.dispatch(payload, nodes, **options)) as stream:
            for node, raw in stream:
                try:
                    if isinstance(raw, NodeError):
                        raise raw
                    if isinstance(raw, BaseException):
                        raise NodeError(node, f"did not answer: {type(raw).__name__}: {raw}")
                    if streaming:
                        reply = self._receive(node, raw, index, expected, fold, on_header)
                        folded.append((node, raw))
                    else:
                        reply = msg.decode(
                            raw,
                            (expected, msg.ErrorReply),
                            max_header_bytes=msg.REPLY_HEADER_BYTES,
                        )
                        self.check_reply(node, reply, index)
                        on_reply(node, reply)
                    if isinstance(reply, msg.TrainReply):  # folded: let its memory go
                        reply.params, reply.aux_vars, reply.secagg = {}, {}, None
                    replies[node] = reply
                except Exception as exc:  # one node's reply, whatever went wrong: its failure
                    if not isinstance(exc, FedplugError):
                        exc = MessageError(
                            f"its reply could not be handled: {type(exc).__name__}: {inert(exc)}"
                        )
                    if self.on_node_failure == "fail":
                        raise NodeError(
                            node,
                            f"{failure_text(exc)} (round {index}; the global model is unchanged; "
                            f"{node_failure_advice(exc)})",
                        ) from None
                    failures[node] = failure_text(exc)
                    if streaming and fold.dirty:
                        self._refold(folded, replies, failures, index, expected, fold, on_header)
                raw = reply = None  # its buffer goes before the next reply is received
        if len(replies) < min_nodes:
            raise NodeError(
                ",".join(sorted(failures)) or "-",
                f"only {len(replies)} of {len(nodes)} nodes replied in round {index} "
                f"(min_nodes={min_nodes}); failures: {failures}; the global model is unchanged",
            )
        return replies, failures

    def check_reply(self, node: str, reply: Any, index: int) -> None:
        """A reply must come from ``node``, for this experiment and round, and not be an error."""
        if reply.node != node:
            raise MessageError(f"reply from {node!r} claims to come from {inert(reply.node)!r}")
        unread = (reply.experiment_id, reply.round_index) == ("", -1)
        if isinstance(reply, msg.ErrorReply) and (
            unread or (reply.experiment_id == self.experiment_id and reply.round_index == index)
        ):
            # the node's words, shown, never obeyed (no experiment id: the node could not read
            # the request far enough to learn it)
            raise NodeError(node, f"{inert(reply.error)}: {inert(reply.message)}")
        if reply.experiment_id != self.experiment_id or reply.round_index != index:
            raise MessageError(
                f"reply from {node!r} is for experiment {inert(reply.experiment_id)!r} round "
                f"{reply.round_index}, expected {self.experiment_id!r} round {index}"
            )
        if getattr(reply, "n_samples", 0) < 0:
            raise MessageError(f"reply from {node!r} reports {reply.n_samples} samples")

    def _receive(
        self,
        node: str,
        stream: Any,
        index: int,
        expected: type,
        fold: StreamFold,
        on_header: Callable[[str, Any], None] | None,
    ) -> Any:
        """Decode a streamed reply, folding its parameters in piece by piece as they arrive."""

        def header(reply: Any) -> dict[msg.ArraySlot, msg.Sink]:
            self.check_reply(node, reply, index)  # before any of its arrays is read
            if on_header is not None:
                on_header(node, reply)
            sinks = fold.accept(node, reply)
            return {slot: _marking(fold, sink) for slot, sink in sinks.items()}

        reply = msg.decode_stream(
            stream,
            stream.size,
            (expected, msg.ErrorReply),
            max_header_bytes=msg.REPLY_HEADER_BYTES,
            on_header=header,
        )
        fold.commit(node, reply)
        fold.dirty = False
        return reply

    def _refold(
        self,
        folded: list[tuple[str, Any]],
        replies: dict[str, Any],
        failures: dict[str, str],
        index: int,
        expected: type,
        fold: StreamFold,
        on_header: Callable[[str, Any], None] | None,
    ) -> None:
        """A reply failed after part of it was folded in: fold the round again from zero with
        the replies accepted so far, which their nodes send again (a node keeps its reply until
        the round ends). A node that cannot send it again fails too. The sum is then the same,
        bit for bit, as if the failed nodes had never replied."""
        log.warning(
            "a reply failed after part of it was folded in; folding round %d again from the "
            "replies of %s",
            index,
            [node for node, _ in folded],
        )
        while True:
            fold.reset()
            fold.dirty = False
            for position, (node, stream) in enumerate(folded):
                try:
                    self._receive(node, stream.replay(), index, expected, fold, on_header)
                except Exception as exc:
                    reason = failure_text(exc) if isinstance(exc, FedplugError) else inert(exc)
                    failures[node] = f"{reason} (while its reply was received again)"
                    replies.pop(node, None)
                    del folded[position]
                    break
            else:
                return


class TrainingRound:
    """One training round, as a fit workflow runs it.

    :meth:`train` sends the global parameters to nodes and hands each good reply to the
    workflow's fold; :meth:`exchange` runs a step of the workflow's own protocol
    (``SecAggRequest``/``SecAggReply``); :meth:`fail` records a node that dropped out of it.
    Auxiliary variables (Scaffold's) are checked and summed here, for every workflow."""

    def __init__(
        self,
        dispatch: Dispatch,
        index: int,
        global_params: Params,
        agg_optimizer: Optimizer | None,
        plugin_manager: Any,
    ) -> None:
        self.dispatch = dispatch
        self.experiment_id = dispatch.experiment_id
        self.index = index
        #: the nodes selected for the experiment
        self.nodes = list(dispatch.nodes)
        self.global_params = global_params
        self.spec = params_spec(global_params)
        self.replies: dict[str, msg.TrainReply] = {}
        self.failures: dict[str, str] = {}
        #: auxiliary variables summed over the replies, per module (for the researcher optimizer)
        self.aux_sum: dict[str, Any] = {}
        #: when the last :meth:`train` had every reply in (``time.perf_counter()``)
        self.trained_at: float | None = None
        self._optimizer = agg_optimizer
        self._expected_aux = set(agg_optimizer.aux_modules) if agg_optimizer else set()
        self._pm = plugin_manager

    def train(
        self,
        nodes: list[str],
        fold: Callable[[str, msg.TrainReply], None],
        *,
        secagg: msg.SecAggData | None = None,
        stream: StreamFold | None = None,
    ) -> dict[str, msg.TrainReply]:
        """Train on ``nodes``: ``fold(node, reply)`` takes each good reply (with ``stream``, and
        a transport that streams, replies are folded while they arrive instead, unless
        auxiliary variables are exchanged). ``secagg`` is the workflow's context for every
        node. Returns the replies, their arrays let go once folded."""
        extra: dict[str, Any] = {}
        if self._expected_aux:
            extra["aux_vars"] = pack_aux_vars(self._optimizer.collect_aux_var())
        if secagg is not None:
            extra["secagg"] = secagg

        def on_reply(node: str, reply: msg.TrainReply) -> None:
            aux = self._received_aux_vars(node, reply.aux_vars)
            fold(node, reply)
            for key, value in aux.items():
                self.aux_sum[key] = value if key not in self.aux_sum else self.aux_sum[key] + value

        def on_header(node: str, reply: Any) -> None:
            if reply.aux_vars:  # streamed only when none are expected
                self._received_aux_vars(node, reply.aux_vars)  # raises
                raise NodeError(
                    node,
                    f"returned auxiliary variables for {sorted(reply.aux_vars)}, which no module "
                    f"of the researcher's optimizer {self._optimizer.module_names} uses",
                )

        payload = self.dispatch.request(msg.TrainRequest, self.index, self.global_params, **extra)
        replies, failures = self.dispatch.collect(
            payload,
            self.index,
            msg.TrainReply,
            on_reply,
            nodes=nodes,
            fold=None if self._expected_aux else stream,
            on_header=on_header,
        )
        self.replies.update(replies)
        self.failures.update(failures)
        self.trained_at = time.perf_counter()
        return replies

    def exchange(
        self, data: msg.SecAggData, nodes: list[str]
    ) -> tuple[dict[str, msg.SecAggData], dict[str, str]]:
        """Send ``data`` to ``nodes`` in a ``SecAggRequest``: each answering node's data, and
        why each other node did not answer (with ``on_node_failure="fail"`` the first failure
        stops the round instead)."""
        payload = msg.encode(msg.SecAggRequest(self.experiment_id, self.index, data))
        replies, failures = self.dispatch.collect(
            payload, self.index, msg.SecAggReply, lambda n, r: None, nodes=nodes, min_nodes=0
        )
        return {node: reply.data for node, reply in replies.items()}, failures

    def fail(self, node: str, reason: str) -> None:
        """Record that ``node`` dropped out of the round (the first reason given is kept)."""
        self.failures.setdefault(node, reason)

    def _received_aux_vars(self, node: str, aux_vars: dict[str, msg.AuxVarData]) -> dict:
        if aux_vars and self._optimizer is None:
            raise NodeError(
                node,
                f"returned auxiliary variables for {sorted(aux_vars)}, but the experiment has no "
                "agg_optimizer to process them; set agg_optimizer=Optimizer(lr=1.0, "
                f"modules=[{', '.join(repr(m) for m in self._partners(aux_vars))}])",
            )
        missing = sorted(self._expected_aux - set(aux_vars))
        if missing:
            raise NodeError(
                node,
                f"returned no auxiliary variables for {missing}, which the researcher's "
                f"optimizer modules {self._optimizer.module_names} need; the plan's "
                "fedplug.Optimizer must include the node-side partner module",
            )
        return self._optimizer.unpack_aux_vars(aux_vars) if aux_vars else {}

    def _partners(self, aux_vars: dict[str, Any]) -> list[str]:
        """Registered declearn modules that share an auxiliary-variable name with ``aux_vars``
        and hold the aggregated side (they declare ``auxvar_cls``): what a researcher uses."""
        return sorted(
            name
            for name, cls in Optimizer.available_modules(self._pm).items()
            if getattr(cls, "aux_name", None) in aux_vars and getattr(cls, "auxvar_cls", None)
        )


class PlainAggregation:
    """Core's fit workflow: every node sends its trained parameters and the aggregator folds
    them in as they arrive (while they arrive, when the transport streams and the aggregator
    can), so the researcher's memory stays O(model)."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def run_round(self, round: TrainingRound) -> Params:
        aggregator, spec = self.aggregator, round.spec
        aggregator.begin(round.global_params)

        def check_spec(node: str, params: Any) -> None:
            if params_spec(params) != spec:
                raise MessageError(
                    f"node {node!r} returned parameters {params_spec(params)}, expected {spec}"
                )

        def fold(node: str, reply: msg.TrainReply) -> None:
            check_spec(node, reply.params)
            try:
                aggregator.add(node, reply.params, reply.n_samples)
            except AggregationError as exc:
                raise NodeError(node, str(exc)) from None

        def accept(node: str, reply: Any) -> dict[msg.ArraySlot, msg.Sink]:
            """A streamed reply's header: the same checks as ``fold``, before any array."""
            check_spec(node, reply.params)
            try:
                aggregator.check(node, reply.params, reply.n_samples)
            except AggregationError as exc:
                raise NodeError(node, str(exc)) from None
            n_samples = int(reply.n_samples)
            return {
                slot: functools.partial(aggregator.add_part, name, n_samples=n_samples)
                for name, slot in reply.params.items()
            }

        stream = None
        if aggregator.streams:
            stream = StreamFold(
                accept=accept,
                commit=lambda node, reply: aggregator.commit(node, reply.n_samples),
                reset=lambda: aggregator.begin(round.global_params),
            )
        round.train(round.nodes, fold, stream=stream)
        return aggregator.result()


def _marking(fold: StreamFold, sink: msg.Sink) -> msg.Sink:
    def marked(start: int, values: np.ndarray) -> None:
        fold.dirty = True
        sink(start, values)

    return marked


def failure_text(exc: FedplugError) -> str:
    return exc.detail if isinstance(exc, NodeError) else f"{type(exc).__name__}: {exc}"
