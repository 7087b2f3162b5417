"""fedplug-secagg's plugin module (entry point ``secagg``): secure aggregation, wholly.

- the ``masking`` scheme (``fedplug_register_secagg_schemes``), which runs each training round
  of an experiment with ``secagg=...`` in place of the plain aggregation;
- the researcher-side checks, before any node is contacted (``fedplug_validate_experiment``):
  no auxiliary-variable optimizer module on either side, a weighted-sum aggregator;
- the node side (``fedplug_node_request``): the scheme's own steps, and a wrapper around
  training that refuses what secure aggregation cannot protect and masks the trained
  parameters.

Importing this module is cheap: the cryptography package is imported when a scheme is used.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fedplug import hookimpl
from fedplug import messages as msg
from fedplug.errors import SecAggError
from fedplug.hookspecs import Register
from fedplug_secagg.guard import refuse_aux_modules, refuse_aux_request

#: where a node keeps its scheme states, in ``node.plugin_state(experiment_id)``
STATE_KEY = "fedplug-secagg"


@hookimpl
def fedplug_register_secagg_schemes(register: Register) -> None:
    register("masking", "fedplug_secagg.masking:MaskingScheme")


@hookimpl
def fedplug_validate_experiment(config: Any) -> None:
    """With secure aggregation on, refuse any optimizer module that exchanges auxiliary
    variables, and an aggregator that needs each node's update."""
    if getattr(config, "secagg", None) is None:
        return
    pm = config.plugin_manager
    refuse_aux_modules(config.node_optimizer, "node side (the training plan's optimizer)", pm)
    refuse_aux_modules(config.agg_optimizer, "researcher side (the experiment's agg_optimizer)", pm)
    if not config.aggregator.weighted_sum:
        raise SecAggError(
            f"secure aggregation computes only a weighted sum of the nodes' updates, but "
            f"aggregator {config.aggregator.name!r} needs each update (robust aggregators see "
            "individual models); use aggregator='fedavg' or turn secagg off"
        )


def node_scheme(node: Any, experiment_id: str, scheme: str, create: bool) -> Any:
    """The node-side state of ``scheme`` for one experiment on ``node``."""
    states = node.plugin_state(experiment_id).setdefault(STATE_KEY, {})
    if scheme not in states:
        if not create:
            raise SecAggError(
                f"node {node.name!r} has no secure-aggregation keys for experiment "
                f"{experiment_id!r}; the researcher must run the scheme's key exchange first"
            )
        states[scheme] = node.pm.secagg_schemes[scheme].node_side(node.name, experiment_id)
    return states[scheme]


@hookimpl(specname="fedplug_node_request")
def serve_scheme_step(node: Any, request: Any) -> Any:
    """A step of a scheme's own protocol (key exchange, unmasking)."""
    if not isinstance(request, msg.SecAggRequest):
        return None
    state = node_scheme(node, request.experiment_id, request.data.scheme, create=True)
    return msg.SecAggReply(
        experiment_id=request.experiment_id,
        round_index=request.round_index,
        node=node.name,
        data=state.handle(request.round_index, request.data),
    )


@hookimpl(specname="fedplug_node_request", wrapper=True)
def secure_training(node: Any, request: Any) -> Generator[None, Any, Any]:
    """Around training: refuse what secure aggregation cannot protect (and, on a node whose
    administrator requires it, plain training), then send the masked update instead of the
    parameters."""
    if not isinstance(request, msg.TrainRequest):
        return (yield)
    if request.secagg is None:
        if node.settings.get("require_secagg"):
            raise SecAggError(
                f"node {node.name!r} requires secure aggregation and refuses a plain training "
                "request; run the experiment with secagg=True"
            )
        return (yield)
    refuse_aux_request(node.name, request.aux_vars, None)  # before the plan is even looked at
    refuse_aux_request(node.name, {}, node.session(request).plan.node_optimizer())
    state = node_scheme(node, request.experiment_id, request.secagg.scheme, create=False)
    reply = yield
    if isinstance(reply, msg.TrainReply):
        reply.secagg = state.mask(
            request.round_index, request.secagg, reply.params, reply.n_samples
        )
        reply.params = {}
    return reply
