"""The transport contract: how messages travel between the researcher and nodes.

A transport knows which nodes exist and what tags their datasets carry, and delivers one request
payload to several nodes, yielding replies one at a time (so that the researcher folds them in
without holding them all). Transports are contributed by plugins through
``fedplug_register_transports``: core's ``local`` keeps nodes on this machine
(:mod:`fedplug.transport.local`), ``fedplug-grpc``'s ``grpc`` serves nodes that connect from other
processes or machines. ``Experiment(transport=name, transport_options={...})`` builds one with its
registered factory; ``Experiment(transport=obj)`` takes one made by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Transport(Protocol):
    """What the researcher needs of a transport."""

    #: True when :meth:`dispatch` accepts ``streams=True`` (see there); optional, default False
    streams_replies: bool

    def node_tags(self) -> dict[str, list[list[str]]]:
        """Every reachable node and the tags of each of its datasets."""

    def dispatch(
        self, payload: bytes | list[Any], nodes: list[str], **options: Any
    ) -> Iterator[tuple[str, Any]]:
        """Send ``payload`` (message bytes, or their parts from ``messages.encode_parts``) to
        ``nodes``; yield ``(node, reply bytes or the failure)`` per node.

        Replies are yielded in ``nodes`` order, so that aggregation sums in the same order every
        run. A reply's memory may be reused once the caller asks for the next one. A failure is
        an exception object (a :class:`~fedplug.errors.NodeError` naming why), never raised.

        With ``streams=True`` (only when :attr:`streams_replies`), each reply is an object with
        ``size``, iteration over the reply's bytes in pieces as they arrive, and ``replay()`` (the
        same reply again, until the dispatch ends): the researcher folds it in without holding
        it whole. Closing the iterator early stops the dispatch and lets the transport clean up.
        """

    def close(self) -> None:
        """Release workers and connections."""


class TransportFactory(Protocol):
    """What ``fedplug_register_transports`` registers: builds a transport for an experiment."""

    def __call__(
        self, *, nodes: Sequence[Any] | None, tags: list[str], min_nodes: int, **options: Any
    ) -> Transport:
        """A transport connected to the federation, ready to :meth:`Transport.dispatch`.

        :param nodes: the in-process nodes the experiment was given (None when nodes are found
            otherwise, e.g. connect over the network); a factory that cannot use them refuses
            them with a :class:`~fedplug.errors.ConfigError`.
        :param tags: the tags the experiment's nodes must have a dataset for.
        :param min_nodes: the fewest nodes the experiment runs with.
        :param options: the transport's own settings (``transport_options``); an unknown one is a
            :class:`~fedplug.errors.ConfigError` naming the known ones.
        """


def is_transport(obj: Any) -> bool:
    """Whether ``obj`` has what the researcher uses of a :class:`Transport`."""
    return all(callable(getattr(obj, name, None)) for name in ("node_tags", "dispatch", "close"))
