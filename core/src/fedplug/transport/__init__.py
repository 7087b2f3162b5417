"""How messages travel between the researcher and nodes.

A transport knows which nodes exist and what tags their datasets carry, and delivers one request
payload to several nodes, yielding replies one at a time (so that the researcher folds them in
without holding them all). ``local`` keeps nodes on this machine (threads or worker processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class Transport(Protocol):
    def node_tags(self) -> dict[str, list[list[str]]]:
        """Every reachable node and the tags of each of its datasets."""

    def dispatch(
        self, payload: bytes, nodes: list[str]
    ) -> Iterator[tuple[str, bytes | BaseException]]:
        """Send ``payload`` to ``nodes``; yield ``(node, reply bytes or the failure)`` per node.

        Replies are yielded as they become available; the local transport keeps request order so
        that aggregation is reproducible.
        """

    def close(self) -> None:
        """Release workers and connections."""
