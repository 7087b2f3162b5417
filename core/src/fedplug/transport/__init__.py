"""How messages travel between the researcher and nodes.

A transport knows which nodes exist and what tags their datasets carry, and delivers one request
payload to several nodes, yielding each reply as soon as it arrives (so that the researcher folds
replies in without holding them all). ``local`` keeps nodes in this process.
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
        """Send ``payload`` to ``nodes``; yield ``(node, reply bytes or the failure)`` as they come."""

    def close(self) -> None:
        """Release workers and connections."""
