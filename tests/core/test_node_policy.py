"""What a node's administrator controls: limits on requests, approvals kept in the node's SQLite
registry (read on every request), and the rewind of node-side optimizer state when a round is
asked again (a researcher resumed from its checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import Experiment, LogisticRegressionPlan, NodeError, NodeLimits, Optimizer
from fedplug import messages as msg
from fedplug_grpc.nodestore import NodeStore

MODEL_ARGS = {"n_features": 4}


class RegistryPlan(LogisticRegressionPlan):
    """Defined here and registered nowhere: it travels as source and needs approval."""


class AdamPlan(LogisticRegressionPlan):
    """Node-side Adam: its moments persist across rounds in the node's session."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency("from fedplug import Optimizer")
        self.optimizer = Optimizer(lr=0.05, modules=["adam"])


def _experiment(nodes, **kwargs) -> Experiment:
    settings = {
        "training_plan": LogisticRegressionPlan,
        "model_args": MODEL_ARGS,
        "training_args": {"batch_size": 16, "epochs": 1},
        "round_limit": 2,
        "seed": 0,
    }
    return Experiment(nodes=nodes, **{**settings, **kwargs})


@pytest.mark.parametrize(
    ("limits", "training_args", "match"),
    [
        (NodeLimits(max_epochs=2), {"epochs": 3}, r"epochs=3 exceeds this node's limit of 2"),
        (NodeLimits(max_updates=10), {"num_updates": 50}, r"max_updates"),
        (NodeLimits(max_batch_size=8), {"batch_size": 16}, r"batch_size=16 .* max_batch_size"),
    ],
)
def test_a_node_refuses_requests_beyond_its_limits(make_nodes, limits, training_args, match):
    nodes = make_nodes(limits=limits)
    exp = _experiment(nodes, training_args={"batch_size": 4, **training_args})
    with pytest.raises(NodeError, match=match):
        exp.run_once()
    assert exp.round_index == 0
    # the node keeps serving: a request within its limits runs
    ok = {"epochs": 1, "num_updates": None, "batch_size": 4}
    assert len(_experiment(nodes, training_args=ok).run()) == 2


def test_allowed_plugins_restricts_registered_plans(make_nodes):
    nodes = make_nodes(limits=NodeLimits(allowed_plugins=("sklearn",)))
    with pytest.raises(
        NodeError,
        match=r"plugin 'fedplug.builtin.plans' \(distribution fedplug\).*allowed_plugins = \['sklearn'\]",
    ):
        _experiment(nodes, training_plan="numpy-logreg").run_once()
    allowed = make_nodes(limits=NodeLimits(allowed_plugins=("fedplug",)))
    assert len(_experiment(allowed, training_plan="numpy-logreg").run()) == 2


def test_a_plan_over_max_plan_mb_is_refused_before_training_and_not_kept(make_nodes):
    """A few bytes of model_args can ask for gigabytes: the plan is measured right after it is
    built and discarded with its session."""
    [node] = make_nodes((40,), limits=NodeLimits(max_plan_mb=1))
    big = {"n_features": 100_000}  # 100,000 x 2 float64 weights: 1.5 MiB
    request = msg.TrainRequest("exp-big", 0, msg.PlanRef(name="numpy-logreg"), big, {}, [], {})
    reply = msg.decode(b"".join(node.serve(msg.encode(request))))
    assert isinstance(reply, msg.ErrorReply), reply
    assert "1.5 MiB of parameters, over this node's limit of 1 MiB" in reply.message
    assert "max_plan_mb" in reply.message
    assert not node._sessions
    assert len(_experiment([node]).run()) == 2  # a plan within the limit runs


def test_a_refused_request_does_not_keep_the_session_it_made(make_nodes):
    [node] = make_nodes((40,))
    wrong = {"weight": np.zeros((3, 2)), "bias": np.zeros(2)}  # the plan has 4 features
    for index in range(10):  # more than max_sessions (8) refused experiments
        request = msg.TrainRequest(
            f"exp-{index}", 0, msg.PlanRef(name="numpy-logreg"), MODEL_ARGS, {}, [], wrong
        )
        reply = msg.decode(b"".join(node.serve(msg.encode(request))))
        assert "do not match the plan's model" in reply.message
    assert not node._sessions


def test_a_plan_is_recorded_pending_and_runs_once_approved_in_the_registry(make_nodes, tmp_path):
    store = NodeStore(tmp_path / "node.db")
    hint = "fedplug node plan approve {sha256} --config node.toml"
    nodes = make_nodes((60,), approval=True, plan_store=store, approve_hint=hint)
    exp = _experiment(nodes, training_plan=RegistryPlan)
    sha = exp.plan_ref.sha256
    with pytest.raises(NodeError, match="not approved") as info:
        exp.run_once()
    assert f"fedplug node plan approve {sha} --config node.toml" in str(info.value)
    (pending,) = store.plans()
    assert (pending.sha256, pending.status, pending.class_name) == (sha, "pending", "RegistryPlan")
    assert "class RegistryPlan" in pending.source

    NodeStore(tmp_path / "node.db").approve_plan(sha[:12])  # another process: the CLI
    assert exp.run_once()["nodes"] == [nodes[0].name]

    NodeStore(tmp_path / "node.db").reject_plan(sha[:12])  # withdrawn: the next round fails
    with pytest.raises(NodeError, match="was rejected"):
        exp.run_once()


def test_a_repeated_round_starts_from_the_optimizer_state_it_began_with(make_nodes):
    nodes = make_nodes((80,))
    exp = _experiment(nodes, training_plan=AdamPlan, round_limit=3)
    exp.run_once()
    before = {k: v.copy() for k, v in exp.global_params.items()}
    first = exp.run_once()
    after_first = {k: v.copy() for k, v in exp.global_params.items()}
    # the researcher "restarts" and repeats round 1 from the same global model
    exp._global, exp.round_index = before, 1
    exp.history.pop()
    second = exp.run_once()
    for name, value in after_first.items():
        np.testing.assert_array_equal(exp.global_params[name], value)
    assert second["train_loss"] == first["train_loss"]


def test_without_the_rewind_a_repeated_round_would_differ(make_nodes):
    """The check above can fail: Adam's moments do change what a round computes."""
    nodes = make_nodes((80,))
    exp = _experiment(nodes, training_plan=AdamPlan, round_limit=3)
    exp.run_once()
    before = {k: v.copy() for k, v in exp.global_params.items()}
    exp.run_once()
    after_first = {k: v.copy() for k, v in exp.global_params.items()}
    session = nodes[0]._sessions[exp.id]
    session.snapshot = None  # forget the state round 1 began with
    exp._global, exp.round_index = before, 1
    exp.run_once()
    assert any(
        not np.array_equal(exp.global_params[name], value) for name, value in after_first.items()
    )
