"""The exception hierarchy of fedplug: one subclass per concern, all rooted at `FedplugError`.

Messages say what was wrong, with which value, and what to do about it.
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """``Type: message (at file:line in function)``: an exception from user code (a plan), told
    in one line with the innermost frame, instead of a traceback from deep inside."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ""
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" (at {code.co_filename}:{tb.tb_lineno} in {code.co_name})"
    return f"{type(exc).__name__}: {exc}{where}"


class FedplugError(Exception):
    """Base class of every error fedplug raises on purpose."""


class PluginError(FedplugError):
    """A plugin failed to load, registered a duplicate name, or a name is not registered."""


class ConfigError(FedplugError):
    """An experiment, node, optimizer or training-argument configuration is invalid."""


class MessageError(FedplugError):
    """A message could not be decoded or does not match what the receiver expects."""


class NodeError(FedplugError):
    """A node refused or failed a request; carries the node's name."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node!r}: {message}")
        self.node = node
        self.detail = message


class PlanError(FedplugError):
    """A training plan could not be built, is malformed, or failed while training."""


class PlanCodeError(PlanError):
    """The plan's own code raised an exception (a bug in the plan, not a node's data or setup):
    it usually fails alike on every node, which skipping nodes does not help."""


def node_failure_advice(exc: BaseException) -> str:
    """What to do about a node failure that stopped a round under ``on_node_failure="fail"``:
    fix the plan when its own code failed (every node runs that code alike), else skip nodes."""
    kind = (exc.detail if isinstance(exc, NodeError) else "").partition(":")[0]
    if isinstance(exc, PlanCodeError) or kind == PlanCodeError.__name__:
        return (
            "fix the plan's code: an error in it usually fails on every node, which skipping "
            "failed nodes does not help"
        )
    return "use on_node_failure='skip' to continue without failing nodes"


class AggregationError(FedplugError):
    """Replies could not be aggregated (no replies, zero samples, mismatched parameters)."""


class SecAggError(FedplugError):
    """Secure aggregation is misconfigured or could not complete."""
