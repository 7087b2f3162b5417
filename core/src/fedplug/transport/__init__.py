"""How messages travel between the researcher and nodes.

A transport knows which nodes exist and what tags their datasets carry, and delivers one request
payload to several nodes, yielding replies one at a time (so that the researcher folds them in
without holding them all). ``local`` keeps nodes on this machine (threads or worker
processes); ``grpc`` serves nodes that connect from other processes or machines
(:mod:`fedplug.transport.grpc`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Transport(Protocol):
    def node_tags(self) -> dict[str, list[list[str]]]:
        """Every reachable node and the tags of each of its datasets."""

    def dispatch(
        self, payload: bytes | list[Any], nodes: list[str]
    ) -> Iterator[tuple[str, bytes | memoryview | BaseException]]:
        """Send ``payload`` (message bytes, or their parts from ``messages.encode_parts``) to
        ``nodes``; yield ``(node, reply bytes or the failure)`` per node.

        Both transports yield replies in ``nodes`` order, so that aggregation sums in the same
        order every run. A reply's memory may be reused once the caller asks for the next one.

        A transport whose ``streams_replies`` attribute is true also accepts ``streams=True``:
        it then yields, for each reply, an object with ``size``, iteration over the reply's
        bytes in pieces as they arrive, and ``replay()`` (the same reply again, until the
        dispatch ends), as :class:`fedplug.transport.grpc.ReplyStream` does. The Experiment
        uses it to fold replies in without holding them whole.
        """

    def close(self) -> None:
        """Release workers and connections."""
