"""How a node serves core's requests: training and evaluation (``fedplug_node_request``)."""

from __future__ import annotations

from typing import Any

from fedplug import messages as msg
from fedplug.hookspecs import hookimpl


@hookimpl
def fedplug_node_request(node: Any, request: Any) -> Any:
    if isinstance(request, msg.TrainRequest):
        return node.train(request)
    if isinstance(request, msg.EvaluateRequest):
        return node.evaluate(request)
    return None
