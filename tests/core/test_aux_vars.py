"""Auxiliary variables (Scaffold): their flow, their wire form, and the errors around them."""

import numpy as np
import pytest

from fedplug import (
    ConfigError,
    Dataset,
    Experiment,
    LogisticRegressionPlan,
    MessageError,
    Node,
    NodeError,
    Optimizer,
)
from fedplug import messages as msg
from fedplug.optimizer import pack_aux_vars


class PlainPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.5)
        self.add_dependency("from fedplug import Optimizer")


class ScaffoldPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.5, modules=["scaffold-client"])
        self.add_dependency("from fedplug import Optimizer")


class BuiltinSgdPlan(LogisticRegressionPlan):
    """No fedplug.Optimizer: the plan's own update rule."""


def drifting_nodes(tag: str) -> list[Node]:
    """Four clients whose features are shifted apart and whose labels are 98 % one class: local
    training drifts towards each client's own optimum (the case Scaffold corrects)."""
    rng = np.random.default_rng(0)
    w = np.ones(5) / np.sqrt(5)
    nodes = []
    for i in range(4):
        offset = rng.normal(size=5) * 2.0
        x = rng.normal(size=(400, 5)) + offset
        y = (x @ w - offset @ w + 0.5 * rng.normal(size=400) > 0).astype(np.int64)
        keep = (y == i % 2) | (rng.random(400) > 0.98)
        nodes.append(Node(f"{tag}-{i}", Dataset(x[keep][:150], y[keep][:150], tags=[tag])))
    return nodes


def drift_experiment(plan, agg_optimizer=None, rounds=20) -> Experiment:
    return Experiment(
        nodes=drifting_nodes(plan.__name__),
        tags=[plan.__name__],
        training_plan=plan,
        model_args={"n_features": 5},
        training_args={"batch_size": 10, "epochs": 10, "test_ratio": 0.3},
        round_limit=rounds,
        seed=0,
        agg_optimizer=agg_optimizer,
    )


def test_scaffold_corrects_client_drift_that_fedavg_suffers():
    plain = drift_experiment(PlainPlan)
    plain.run()
    scaffold = drift_experiment(ScaffoldPlan, Optimizer(lr=1.0, modules=["scaffold-server"]))
    scaffold.run()
    plain_val = plain.history[-1]["validation_global"]
    scaffold_val = scaffold.history[-1]["validation_global"]
    assert scaffold_val["loss"] < 0.7 * plain_val["loss"]
    assert scaffold_val["accuracy"] > plain_val["accuracy"] + 0.05


def test_scaffold_states_persist_across_rounds_on_nodes_and_researcher():
    exp = drift_experiment(ScaffoldPlan, Optimizer(lr=1.0, modules=["scaffold-server"]), rounds=1)
    node = exp.transport.nodes[exp.nodes[0]]
    exp.run_once()
    client = node._sessions[exp.id].plan.optimizer.declearn.modules[0]
    first = {k: np.array(v) for k, v in client.state.coefs.items()}
    exp.run_once()
    client_after = node._sessions[exp.id].plan.optimizer.declearn.modules[0]
    assert client_after is client  # the node kept its optimizer (and the module's state)
    assert any(not np.allclose(first[k], client.state.coefs[k]) for k in first)
    server = exp.agg_optimizer.declearn.modules[0]
    assert len(server.clients) == 4  # one local state per node, remembered by the researcher
    state = exp.agg_optimizer.get_state()
    assert state["modules"][0][0] == "scaffold-server"


def test_aux_vars_cross_the_wire_as_arrays_and_come_back_as_declearn_objects():
    from declearn.model.sklearn import NumpyVector
    from declearn.optimizer.modules import ScaffoldAuxVar

    sent = {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": np.arange(4.0)}), clients={"a"})}
    reply = msg.TrainReply("e", 0, "n", {}, 1, 1, 0.0, 0.0, aux_vars=pack_aux_vars(sent))
    received = msg.decode(msg.encode(reply)).aux_vars
    assert received["scaffold"].cls == "ScaffoldAuxVar"
    rebuilt = Optimizer(lr=1.0, modules=["scaffold-server"]).unpack_aux_vars(received)
    aux = rebuilt["scaffold"]
    assert isinstance(aux, ScaffoldAuxVar)
    assert aux.clients == {"a"}
    np.testing.assert_array_equal(aux.delta.coefs["w"], np.arange(4.0))
    assert aux.delta.coefs["w"].flags.writeable


def test_only_registered_aux_var_types_for_known_modules_are_rebuilt():
    optimizer = Optimizer(lr=1.0, modules=["scaffold-server"])
    with pytest.raises(MessageError, match="not a registered declearn AuxVar"):
        optimizer.unpack_aux_vars({"scaffold": msg.AuxVarData(cls="os.system")})
    with pytest.raises(MessageError, match="exchange none under that name"):
        optimizer.unpack_aux_vars({"momentum": msg.AuxVarData(cls="ScaffoldAuxVar")})
    with pytest.raises(MessageError, match="malformed"):
        optimizer.unpack_aux_vars({"scaffold": msg.AuxVarData(cls="ScaffoldAuxVar")})


@pytest.mark.parametrize(
    ("plan", "agg_optimizer", "match"),
    [
        (ScaffoldPlan, None, r"'scaffold-client'.*agg_optimizer is None.*\['scaffold-server'\]"),
        (
            ScaffoldPlan,
            Optimizer(lr=1.0, modules=["momentum"]),
            r"has modules \['momentum'\].*\['scaffold-server'\]",
        ),
        (
            PlainPlan,
            Optimizer(lr=1.0, modules=["scaffold-server"]),
            r"partner \['scaffold-client'\]",
        ),
        (
            BuiltinSgdPlan,
            Optimizer(lr=1.0, modules=["scaffold-server"]),
            "built-in update rule, which declearn modules cannot see",
        ),
    ],
)
def test_unpaired_aux_var_modules_are_refused_before_any_round(plan, agg_optimizer, match):
    nodes = drifting_nodes(f"unpaired-{plan.__name__}")
    with pytest.raises(ConfigError, match=match):
        Experiment(
            nodes=nodes,
            training_plan=plan,
            model_args={"n_features": 5},
            round_limit=1,
            agg_optimizer=agg_optimizer,
        )
    assert all(not node._sessions for node in nodes)  # no node was contacted


class FedProxPlan(LogisticRegressionPlan):
    REGULARIZERS: list = []

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.1, regularizers=self.REGULARIZERS)


def test_fedprox_needs_an_explicit_strength(monkeypatch):
    nodes = drifting_nodes("fedprox")
    monkeypatch.setattr(FedProxPlan, "REGULARIZERS", ["fedprox"])
    with pytest.raises(ConfigError, match=r"'fedprox' was given without its strength"):
        Experiment(nodes=nodes, training_plan=FedProxPlan, model_args={"n_features": 5})
    monkeypatch.setattr(FedProxPlan, "REGULARIZERS", [("fedprox", {"alpha": 0.1})])
    Experiment(nodes=nodes, training_plan=FedProxPlan, model_args={"n_features": 5})


def request(plan_ref, aux_vars=None) -> bytes:
    x = np.zeros((5, 2))
    return msg.encode(
        msg.TrainRequest(
            "exp",
            0,
            plan_ref,
            {"n_features": 5},
            {"batch_size": 10},
            ["direct"],
            {"weight": x, "bias": np.zeros(2)},
            aux_vars or {},
        )
    )


def direct_node() -> Node:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5))
    return Node("direct", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=["direct"]))


def test_a_node_refuses_aux_vars_its_plan_cannot_use():
    from declearn.optimizer.modules import ScaffoldAuxVar

    node = direct_node()
    ref = msg.PlanRef(name="numpy-logreg")
    aux = pack_aux_vars({"scaffold": ScaffoldAuxVar(state=0.0)})
    reply = msg.decode(b"".join(node.serve(request(ref, aux))))
    assert isinstance(reply, msg.ErrorReply)
    assert "declearn modules" in reply.message
    assert "scaffold-client" in reply.message


def test_a_node_whose_plan_needs_aux_vars_refuses_a_request_without_them():
    from fedplug.planref import make_plan_ref

    node = direct_node()
    ref = make_plan_ref(ScaffoldPlan, ["from fedplug import Optimizer"], node.pm.training_plans)
    reply = msg.decode(b"".join(node.serve(request(ref))))
    assert isinstance(reply, msg.ErrorReply)
    assert "['scaffold-client'] need auxiliary variables ['scaffold']" in reply.message


class AuxForgingNode(Node):
    """Adds Scaffold auxiliary variables to an otherwise normal reply."""

    def serve(self, request, size=None):
        from declearn.model.sklearn import NumpyVector
        from declearn.optimizer.modules import ScaffoldAuxVar

        reply = msg.decode(b"".join(super().serve(request, size)))
        if isinstance(reply, msg.TrainReply):
            delta = NumpyVector({k: np.zeros_like(v) for k, v in reply.params.items()})
            reply.aux_vars = pack_aux_vars({"scaffold": ScaffoldAuxVar(delta=delta)})
        return [msg.encode(reply)]


def test_unexpected_aux_vars_from_a_node_name_the_missing_agg_optimizer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5))
    node = AuxForgingNode("forger", Dataset(x, (x[:, 1] > 0).astype(np.int64), tags=["forge"]))
    exp = Experiment(
        nodes=[node], training_plan="numpy-logreg", model_args={"n_features": 5}, round_limit=1
    )
    with pytest.raises(NodeError, match=r"no agg_optimizer.*modules=\['scaffold-server'\]"):
        exp.run_once()
