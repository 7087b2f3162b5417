"""Fed-BioMed-style torch plans shipped to nodes as source, and how nodes treat them.

The plan classes below live in this test module, so no plugin registers them: an experiment sends
their source (with the imports declared through ``add_dependency``) and each node rebuilds the
class from it. They must therefore be self-contained (no module-level helpers).
"""

import numpy as np
import pytest
import torch
from torch import nn

import fedplug
from fedplug import messages as msg
from fedplug.plan import TrainingArgs
from fedplug.planref import make_plan_ref, source_hash
from fedplug_torch import TorchTrainingPlan


class AdamSourcePlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        self.add_dependency(["import torch", "from torch import nn"])

    def training_step(self, data, target):
        return self.loss(self.model(data), target)


class UndeclaredNnPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        self.add_dependency(["import torch"])  # uses nn without declaring it

    def training_step(self, data, target):
        return self.loss(self.model(data), target)


class VectorLossPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss(reduction="none")
        self.add_dependency(["import torch", "from torch import nn"])

    def training_step(self, data, target):
        return self.loss(self.model(data), target)  # one loss per sample: not a scalar


def _experiment(nodes, tags, plan, rounds=4, **kwargs):
    kwargs.setdefault("training_args", {"epochs": 1, "batch_size": 16, "test_ratio": 0.2})
    return fedplug.Experiment(
        nodes=nodes,
        tags=tags,
        training_plan=plan,
        round_limit=rounds,
        seed=0,
        progress=False,
        **kwargs,
    )


def _request(plan_cls, tags, params=None, training_args=None, experiment_id="exp-1"):
    plan = plan_cls()
    pm = fedplug.get_plugin_manager()
    return msg.encode(
        msg.TrainRequest(
            experiment_id=experiment_id,
            round_index=0,
            plan=make_plan_ref(plan_cls, plan.dependencies, pm.training_plans),
            model_args={},
            training_args=TrainingArgs.from_dict(training_args or {"epochs": 1}).to_dict(),
            tags=tags,
            params=plan.get_parameters() if params is None else params,
        )
    )


def _reply(node, payload):
    return msg.decode(b"".join(node.serve(payload)), (msg.TrainReply, msg.ErrorReply))


def test_fedbiomed_style_plan_is_shipped_as_source_and_learns(make_nodes, tags):
    nodes = make_nodes(3, n_samples=200)
    exp = _experiment(nodes, tags, AdamSourcePlan, rounds=4)

    assert exp.plan_ref.name is None
    assert exp.plan_ref.source is not None
    assert exp.plan_ref.sha256 == source_hash(exp.plan_ref.source)
    for line in ("import torch", "from torch import nn", "class AdamSourcePlan"):
        assert line in exp.plan_ref.source

    _, before = exp.evaluate()
    history = exp.run()

    assert [row["round"] for row in history] == [0, 1, 2, 3]
    assert history[-1]["samples"] == {f"node-{i}": 160 for i in range(3)}
    final = history[-1]["validation_global"]
    assert final["n_samples"] == 3 * 40
    assert final["accuracy"] >= 0.9
    assert final["accuracy"] > before["accuracy"] + 0.15
    assert history[-1]["train_loss_mean"] < history[0]["train_loss_mean"]

    for node in nodes:
        session = node._sessions[exp.id]
        rebuilt = type(session.plan)
        assert rebuilt is not AdamSourcePlan
        assert rebuilt.__name__ == "AdamSourcePlan"
        assert rebuilt.__module__.startswith("fedplug_plan_")
        assert isinstance(session.plan.optimizer, torch.optim.Adam)


def test_undeclared_import_is_a_node_error_that_names_add_dependency(make_nodes, tags):
    exp = _experiment(make_nodes(2), tags, UndeclaredNnPlan, rounds=1)

    with pytest.raises(fedplug.NodeError) as info:
        exp.run()

    text = str(info.value)
    assert "NameError" in text
    assert "'nn'" in text
    assert "add_dependency" in text
    assert exp.history == []


def test_non_scalar_training_step_is_a_plan_error_reply(make_nodes, tags):
    node = make_nodes(1)[0]

    reply = _reply(node, _request(VectorLossPlan, tags))

    assert isinstance(reply, msg.ErrorReply)
    assert reply.error == "PlanError"
    assert "scalar" in reply.message


def test_non_scalar_training_step_fails_the_experiment_without_touching_the_model(make_nodes, tags):
    exp = _experiment(make_nodes(2), tags, VectorLossPlan, rounds=1)
    initial = {name: value.copy() for name, value in exp.global_params.items()}

    with pytest.raises(fedplug.NodeError, match="PlanError"):
        exp.run()

    for name, value in exp.global_params.items():
        np.testing.assert_array_equal(value, initial[name])


def test_wrong_shape_parameters_get_an_error_reply_and_the_node_keeps_serving(make_nodes, tags):
    node = make_nodes(1)[0]
    params = AdamSourcePlan().get_parameters()
    bad = dict(params, **{"0.weight": np.zeros((3, 3), dtype=np.float32)})

    reply = _reply(node, _request(AdamSourcePlan, tags, params=bad))

    assert isinstance(reply, msg.ErrorReply)
    assert reply.error == "NodeError"
    assert "0.weight" in reply.message
    assert "(3, 3)" in reply.message

    good = _reply(node, _request(AdamSourcePlan, tags, params=params))

    assert isinstance(good, msg.TrainReply)
    assert good.n_samples == 200
    assert good.n_steps == 7  # ceil(200 / 32) with the default batch size
    assert set(good.params) == set(params)


def test_missing_parameter_gets_an_error_reply(make_nodes, tags):
    node = make_nodes(1)[0]
    params = AdamSourcePlan().get_parameters()
    del params["2.bias"]

    reply = _reply(node, _request(AdamSourcePlan, tags, params=params))

    assert isinstance(reply, msg.ErrorReply)
    assert "2.bias" in reply.message


def test_unapproved_source_plan_is_not_run(make_nodes, tags):
    node = make_nodes(1, approval=True)[0]

    reply = _reply(node, _request(AdamSourcePlan, tags))

    assert isinstance(reply, msg.ErrorReply)
    assert "not approved" in reply.message
    assert node._sessions == {}
