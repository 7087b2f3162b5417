"""The contract between core and a secure-aggregation scheme (``fedplug_register_secagg_schemes``).

A scheme lets the researcher learn only the sample-weighted average of the nodes' parameters.
Core runs the round and carries the scheme's data in messages (:class:`~fedplug.messages.SecAggData`
inside ``TrainRequest``/``TrainReply``, and :class:`~fedplug.messages.SecAggRequest`/``SecAggReply``
for the scheme's own steps); the scheme does the cryptography on both sides:

Researcher side, one :class:`SecAggScheme` per experiment:

1. :meth:`SecAggScheme.begin_round` runs the steps the round needs before training (key exchange
   when the node set changed, through ``exchange``) and returns the context that goes to every
   node in the ``TrainRequest``;
2. :meth:`SecAggScheme.add` folds each node's masked reply as it arrives;
3. :meth:`SecAggScheme.result` runs the steps after training (unmasking, dropout recovery) and
   returns the weighted average, or raises :class:`~fedplug.errors.SecAggError`, in which case
   the round fails and the global model is unchanged.

Node side, one :class:`SecAggNode` per node and experiment (made by :meth:`SecAggScheme.node_side`):
:meth:`SecAggNode.handle` answers the scheme's steps and :meth:`SecAggNode.mask` turns the node's
trained parameters into what it sends.

``exchange(data, nodes)`` sends ``data`` to ``nodes`` in a ``SecAggRequest`` and returns
``(replies, failures)``: each answering node's ``SecAggData``, and a reason for each node that did
not answer (with ``on_node_failure="fail"`` the first failure stops the round instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from fedplug.messages import SecAggData
from fedplug.plan import Params

Exchange = Callable[[SecAggData, list[str]], tuple[dict[str, SecAggData], dict[str, str]]]


class SecAggNode:
    """The node side of a scheme, for one experiment on one node."""

    def handle(self, round_index: int, data: SecAggData) -> SecAggData:
        """Answer one step of the scheme (e.g. key exchange, unmasking)."""
        raise NotImplementedError

    def mask(
        self, round_index: int, context: SecAggData, params: Params, n_samples: int
    ) -> SecAggData:
        """What the node sends instead of ``params`` (trained on ``n_samples`` samples)."""
        raise NotImplementedError


class SecAggScheme:
    """The researcher side of a scheme. ``config`` is the scheme's settings object, or None for
    its defaults."""

    #: The name the scheme is registered under.
    name: ClassVar[str] = "secagg"

    def __init__(self, config: Any = None) -> None:
        self.config = config
        #: why nodes dropped out of the current round's secure-aggregation steps (node -> reason)
        self.failures: dict[str, str] = {}

    @classmethod
    def node_side(cls, node: str, experiment_id: str) -> SecAggNode:
        """A fresh node-side state for ``node`` in experiment ``experiment_id``."""
        raise NotImplementedError

    def begin_round(
        self,
        experiment_id: str,
        round_index: int,
        nodes: list[str],
        spec: dict[str, tuple[tuple[int, ...], str]],
        exchange: Exchange,
    ) -> tuple[list[str], SecAggData]:
        """Prepare a round among ``nodes`` for a model of ``spec`` (name -> shape, dtype); return
        the nodes that take part (those that completed the set-up) and the round's context."""
        raise NotImplementedError

    def add(self, node: str, n_samples: int, data: SecAggData) -> None:
        """Fold one node's masked reply."""
        raise NotImplementedError

    def result(self, round_index: int, exchange: Exchange) -> Params:
        """Unmask (recovering from nodes that failed) and return the weighted average."""
        raise NotImplementedError
