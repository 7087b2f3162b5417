"""Experiments end to end on in-process nodes: history, configuration, plans as source, failures."""

from __future__ import annotations

import inspect
import re
import time
import uuid
from dataclasses import replace

import numpy as np
import pytest

from fedplug import (
    ConfigError,
    Dataset,
    Experiment,
    LogisticRegressionPlan,
    Node,
    NodeError,
    PlanError,
    PluginError,
    load_params,
)
from fedplug import messages as msg
from fedplug.planref import source_hash
from fedplug.transport.local import LocalTransport

MODEL_ARGS = {"n_features": 4}
TRAINING_ARGS = {"batch_size": 16, "epochs": 1, "test_ratio": 0.25}


def experiment(nodes, **kwargs) -> Experiment:
    settings = {
        "training_plan": LogisticRegressionPlan,
        "model_args": MODEL_ARGS,
        "training_args": TRAINING_ARGS,
        "round_limit": 3,
        "seed": 0,
    }
    return Experiment(nodes=nodes, **{**settings, **kwargs})


def copy_params(params: dict) -> dict:
    return {name: value.copy() for name, value in params.items()}


def assert_params_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


class ShippedPlan(LogisticRegressionPlan):
    """Defined in this test module and registered nowhere: it travels to nodes as source."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency("import numpy as np")

    def evaluate(self, dataset, args):
        metrics = super().evaluate(dataset, args)
        x = np.asarray(dataset.x, dtype=np.float64)
        metrics["mean_margin"] = float(np.mean(np.abs(self.model.logits(x))))
        return metrics


class ExplodingPlan(LogisticRegressionPlan):
    """Crashes while training on datasets larger than 70 samples."""

    def train(self, dataset, args):
        if len(dataset) > 70:
            raise RuntimeError(f"kaboom on {len(dataset)} samples")
        return super().train(dataset, args)


class FailingEvaluationPlan(LogisticRegressionPlan):
    """Trains fine, crashes while evaluating on test splits larger than 20 samples."""

    def evaluate(self, dataset, args):
        if len(dataset) > 20:
            raise RuntimeError("evaluation kaboom")
        return super().evaluate(dataset, args)


# -- end to end ---------------------------------------------------------------------------------


def test_three_nodes_end_to_end(make_nodes):
    sizes = (60, 80, 100)
    nodes = make_nodes(sizes)
    names = [node.name for node in nodes]
    exp = experiment(nodes)
    history = exp.run()

    assert history is exp.history
    assert [row["round"] for row in history] == [0, 1, 2]
    assert exp.round_index == 3
    for row in history:
        assert row["nodes"] == names
        assert row["failures"] == {}
        assert row["samples"] == {
            name: size - round(size * 0.25) for name, size in zip(names, sizes, strict=True)
        }
        assert set(row["train_loss"]) == set(names)
        assert all(np.isfinite(loss) and loss > 0 for loss in row["train_loss"].values())
        weighted = sum(row["train_loss"][n] * row["samples"][n] for n in names)
        assert row["train_loss_mean"] == pytest.approx(weighted / sum(row["samples"].values()))

        assert list(row["validation"]) == names
        test_sizes = {name: row["validation"][name]["n_samples"] for name in names}
        assert test_sizes == {
            name: round(size * 0.25) for name, size in zip(names, sizes, strict=True)
        }
        total = sum(test_sizes.values())
        overall = row["validation_global"]
        assert overall["n_samples"] == total
        for metric in ("accuracy", "loss"):
            per_node = [row["validation"][n][metric] for n in names]
            expected = sum(v * test_sizes[n] for v, n in zip(per_node, names, strict=True))
            assert overall[metric] == pytest.approx(expected / total)
            assert min(per_node) <= overall[metric] <= max(per_node)

        durations = row["durations"]
        assert set(durations) == {"train_s", "aggregate_s", "validate_s", "round_s"}
        assert all(value >= 0 for value in durations.values())
        assert durations["round_s"] >= durations["train_s"] + durations["validate_s"]

    assert history[-1]["validation_global"]["accuracy"] >= 0.85
    assert history[-1]["train_loss_mean"] < history[0]["train_loss_mean"]
    assert_params_equal(exp.training_plan.get_parameters(), exp.global_params)
    per_node, overall = exp.evaluate()
    assert overall == pytest.approx(history[-1]["validation_global"])
    assert set(per_node) == set(names)


@pytest.mark.parametrize(
    ("validate", "test_ratio", "validated"),
    [
        (True, 0.25, [0, 1, 2]),
        (None, 0.25, [0, 1, 2]),
        (2, 0.25, [1, 2]),
        (False, 0.25, []),
        (None, 0.0, []),
        (True, 0.0, [0, 1, 2]),  # asked for: nodes without held-out data report 0 samples
    ],
)
def test_which_rounds_are_validated(make_nodes, validate, test_ratio, validated):
    exp = experiment(
        make_nodes(),
        validate=validate,
        training_args={**TRAINING_ARGS, "test_ratio": test_ratio},
    )
    history = exp.run()
    assert [row["round"] for row in history if "validation" in row] == validated


def test_run_in_steps_continues_the_round_count(make_nodes):
    exp = experiment(make_nodes(), round_limit=4)
    exp.run(rounds=1)
    exp.run_once()
    exp.run()  # the rest of round_limit
    assert [row["round"] for row in exp.history] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="rounds must be a positive int"):
        exp.run(rounds=0)


def test_model_class_is_another_name_for_training_plan(make_nodes):
    nodes = make_nodes()
    exp = Experiment(nodes=nodes, model_class=LogisticRegressionPlan, model_args=MODEL_ARGS)
    assert exp.plan_class is LogisticRegressionPlan
    assert exp.run(rounds=1)[0]["nodes"] == [node.name for node in nodes]
    same = Experiment(
        nodes=nodes,
        training_plan=LogisticRegressionPlan,
        model_class=LogisticRegressionPlan,
        model_args=MODEL_ARGS,
    )
    assert same.plan_class is LogisticRegressionPlan
    with pytest.raises(ConfigError, match="either training_plan or model_class"):
        Experiment(nodes=nodes, training_plan=LogisticRegressionPlan, model_class=ShippedPlan)


def test_a_local_federation_serves_experiments_that_select_nodes_by_tags(make_nodes):
    """Nodes are not found through a process-wide registry: an experiment is given its
    federation (here a LocalTransport shared by two studies) and selects by tags within it."""
    tag = f"study-{uuid.uuid4().hex}"
    mine = make_nodes((60, 70), tags=[tag, "extra"])
    others = make_nodes((50,))  # another study, in the same federation
    with LocalTransport([*mine, *others]) as federation:
        exp = Experiment(
            nodes=federation, tags=[tag], model_class=LogisticRegressionPlan, model_args=MODEL_ARGS
        )
        assert exp.nodes == [node.name for node in mine]
        assert exp.run(rounds=1)[0]["nodes"] == exp.nodes
        exp.close()  # the federation is its maker's: still open
        other = Experiment(
            nodes=federation,
            tags=others[0].datasets[0].tags,
            model_class=LogisticRegressionPlan,
            model_args=MODEL_ARGS,
        )
        assert other.nodes == [others[0].name]
        with pytest.raises(ConfigError, match=tag):
            Experiment(
                nodes=federation,
                tags=[tag, "missing"],
                model_class=LogisticRegressionPlan,
                model_args=MODEL_ARGS,
            )
    with pytest.raises(ConfigError, match=r"pass nodes=\[Node\(\.\.\.\), \.\.\.\]"):
        Experiment(tags=[tag], model_class=LogisticRegressionPlan, model_args=MODEL_ARGS)


def test_a_node_trains_on_the_dataset_its_tags_select(make_data, make_nodes):
    x, y = make_data(60, 1)
    wanted = Dataset(x, y, tags=["wanted"], name="wanted")
    other = Dataset(x[:10], y[:10], tags=["other"], name="other")
    [node] = make_nodes(datasets=[wanted])
    node.add_dataset(other)
    row = experiment([node], tags=["wanted"], validate=False).run(rounds=1)[0]
    assert row["samples"] == {node.name: 45}
    with pytest.raises(NodeError, match="2 datasets match tags"):
        experiment([node], tags=[], validate=False).run(rounds=1)


# -- the model file -----------------------------------------------------------------------------


def test_save_and_load_model(make_nodes, tmp_path):
    nodes = make_nodes()
    trained = experiment(nodes, round_limit=2)
    trained.run()
    path = trained.save_model(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as data:  # no pickle inside
        assert {"__meta__", "param:weight", "param:bias"} <= set(data.files)
    assert_params_equal(load_params(path), trained.global_params)

    fresh = experiment(nodes, seed=5)
    assert not np.array_equal(fresh.global_params["weight"], trained.global_params["weight"])
    fresh.load_model(path)
    assert_params_equal(fresh.global_params, trained.global_params)
    assert_params_equal(fresh.training_plan.get_parameters(), trained.global_params)
    fresh.run(rounds=1)  # and training continues from there


def test_load_model_refuses_a_mismatched_model(make_nodes, tmp_path):
    nodes = make_nodes()
    path = experiment(nodes, model_args={"n_features": 4, "n_classes": 3}).save_model(
        tmp_path / "three-classes.npz"
    )
    exp = experiment(nodes)
    before = copy_params(exp.global_params)
    with pytest.raises(ConfigError, match="do not match this experiment's model"):
        exp.load_model(path)
    assert_params_equal(exp.global_params, before)


def test_load_model_refuses_files_that_are_not_fedplug_models(make_nodes, tmp_path):
    exp = experiment(make_nodes())
    np.savez(tmp_path / "plain.npz", weight=np.zeros((4, 2)))
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("not a model")
    with pytest.raises(ConfigError, match="not a fedplug model file"):
        exp.load_model(tmp_path / "plain.npz")
    for name in ("text.npz", "missing.npz", "array.npy"):
        with pytest.raises(ConfigError, match=name):
            exp.load_model(tmp_path / name)


# -- configuration errors -----------------------------------------------------------------------


def test_an_experiment_needs_a_plan(make_nodes):
    with pytest.raises(ConfigError, match="needs a training_plan"):
        Experiment(nodes=make_nodes())


@pytest.mark.parametrize("plan", [42, LogisticRegressionPlan(MODEL_ARGS), Node])
def test_a_plan_must_be_a_training_plan_class_or_name(make_nodes, plan):
    with pytest.raises(ConfigError, match="TrainingPlan subclass or a registered plan name"):
        experiment(make_nodes(), training_plan=plan)


def test_unknown_plan_and_aggregator_names_list_what_exists(make_nodes):
    nodes = make_nodes()
    with pytest.raises(PluginError, match="no training plan named 'logreg'") as info:
        experiment(nodes, training_plan="logreg")
    assert "(did you mean 'numpy-logreg'?)" in str(info.value)
    assert "training_plans" not in str(info.value)
    with pytest.raises(PluginError, match="no aggregator named 'fedavgg'") as info:
        experiment(nodes, aggregator="fedavgg")
    assert "(did you mean 'fedavg'?)" in str(info.value)
    assert "fedavg, median" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aggregator": 42}, "aggregator must be a registered name or a fedplug Aggregator"),
        ({"round_limit": 0}, "round_limit must be a positive int, got 0"),
        ({"round_limit": -2}, "round_limit must be a positive int"),
        ({"round_limit": 2.5}, "round_limit must be a positive int"),
        ({"round_limit": True}, "round_limit must be a positive int"),
        ({"round_limit": "3"}, "round_limit must be a positive int"),
        ({"agg_optimizer": "momentum"}, "agg_optimizer must be a fedplug.Optimizer, got str"),
        ({"agg_optimizer": object()}, "agg_optimizer must be a fedplug.Optimizer"),
        ({"on_node_failure": "ignore"}, "on_node_failure must be one of"),
        ({"min_nodes": 0}, "min_nodes must be a positive int"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"seed": 1.5}, "seed must be a non-negative int"),
        ({"validate": -1}, "validate must be a bool or a non-negative int"),
        ({"validate": "yes"}, "validate must be a bool or a non-negative int"),
        ({"training_args": {"epochs": 0}}, "'epochs' must be a positive int"),
        ({"model_args": {"n_features": 0}}, "n_features"),
        ({"workers": 0}, "workers must be a positive int"),
    ],
)
def test_configuration_errors(make_nodes, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        experiment(make_nodes(), **kwargs)


def test_a_declearn_optimizer_is_not_an_agg_optimizer(make_nodes):
    from declearn.optimizer import Optimizer as DeclearnOptimizer

    with pytest.raises(ConfigError, match="got Optimizer"):
        experiment(make_nodes(), agg_optimizer=DeclearnOptimizer(lrate=1.0))


def test_no_node_matching_the_tags_lists_nodes_and_tags(make_nodes):
    nodes = make_nodes((30, 30), tags=["cardiology"])
    with pytest.raises(
        ConfigError, match=r"no node has a dataset with tags \['oncology'\]"
    ) as info:
        experiment(nodes, tags=["oncology"])
    for node in nodes:
        assert node.name in str(info.value)
    assert "cardiology" in str(info.value)


@pytest.mark.parametrize("nodes", ["node-a", 42, [object()]])
def test_nodes_must_be_nodes_or_a_transport(nodes):
    with pytest.raises(ConfigError, match="Node"):
        experiment(nodes)


def test_node_names_must_be_unique(make_data):
    data = Dataset(*make_data(30, 0))
    twins = [Node("twin", data), Node("twin", data)]
    try:
        with pytest.raises(ConfigError, match="two nodes are named 'twin'"):
            experiment(twins)
    finally:
        for node in twins:
            node.stop()


def test_run_needs_a_round_count(make_nodes):
    exp = experiment(make_nodes(), round_limit=None)
    with pytest.raises(ConfigError, match="set round_limit"):
        exp.run()
    assert len(exp.run(rounds=1)) == 1


# -- plans shipped as source, and approval ------------------------------------------------------


def test_an_unregistered_plan_travels_as_source_and_runs_on_nodes(make_nodes):
    nodes = make_nodes()
    exp = experiment(nodes, training_plan=ShippedPlan)
    ref = exp.plan_ref
    assert ref.name is None
    assert ref.class_name == "ShippedPlan"
    assert "class ShippedPlan(LogisticRegressionPlan):" in ref.source
    assert "import numpy as np" in ref.source
    assert "from fedplug.numpy_plan import LogisticRegressionPlan" in ref.source
    assert ref.sha256 == source_hash(ref.source) and len(ref.sha256) == 64
    exp.run()
    # the nodes ran the shipped code: only ShippedPlan reports this metric
    for metrics in exp.history[-1]["validation"].values():
        assert metrics["mean_margin"] > 0
    node_plan = nodes[0]._sessions[exp.id].plan
    assert type(node_plan) is not ShippedPlan
    assert type(node_plan).__name__ == "ShippedPlan"
    assert type(node_plan).__module__ == f"fedplug_plan_{ref.sha256[:16]}"


def test_an_unapproved_plan_is_refused_until_approved(make_nodes):
    nodes = make_nodes(approval=True)
    exp = experiment(nodes, training_plan=ShippedPlan)
    sha = exp.plan_ref.sha256
    with pytest.raises(NodeError, match="not approved") as info:
        exp.run_once()
    assert sha in str(info.value)
    assert f"approve_plan({sha!r})" in str(info.value)
    assert exp.history == [] and exp.round_index == 0

    for node in nodes:
        node.approve_plan(sha)
    assert len(exp.run()) == 3


def test_approval_applies_to_source_plans_only(make_nodes):
    assert len(experiment(make_nodes(approval=True)).run()) == 3  # a registered plan
    sha = experiment(make_nodes(), training_plan=ShippedPlan).plan_ref.sha256
    preapproved = make_nodes(approval=True, approved_plans=[sha])
    assert len(experiment(preapproved, training_plan=ShippedPlan).run()) == 3


def test_an_unapproved_node_is_skipped_under_the_skip_policy(make_nodes):
    nodes = make_nodes((60, 60))
    strict = make_nodes((60,), tags=nodes[0].datasets[0].tags, approval=True)
    exp = experiment(nodes + strict, training_plan=ShippedPlan, on_node_failure="skip")
    row = exp.run_once()
    assert row["nodes"] == [node.name for node in nodes]
    assert "not approved" in row["failures"][strict[0].name]


# -- failing nodes ------------------------------------------------------------------------------


def _nan_nodes(make_nodes, make_data):
    """Three nodes; the last one's data contains NaN, so its training loss is NaN."""
    healthy = make_nodes((60, 80))
    x, y = make_data(70, 7)
    x[3, 1] = np.nan
    # a NaN is refused when a Dataset is made, unless its owner says the plan handles them
    sick_data = Dataset(x, y, tags=healthy[0].datasets[0].tags, check_finite=False)
    [sick] = make_nodes(datasets=[sick_data])
    return healthy, sick


def test_a_diverging_node_fails_the_round_and_keeps_the_model(make_nodes, make_data, tmp_path):
    healthy, sick = _nan_nodes(make_nodes, make_data)
    warm = experiment(healthy, validate=False, round_limit=1)
    warm.run()
    exp = experiment([*healthy, sick], validate=False)
    exp.load_model(warm.save_model(tmp_path / "warm.npz"))  # a trained global model
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match="diverged") as info:
        exp.run_once()
    assert info.value.node == sick.name
    assert "global model is unchanged" in str(info.value)
    # one node's data at fault, not the plan's code: skipping that node is the advice
    assert "use on_node_failure='skip'" in str(info.value)
    assert_params_equal(exp.global_params, before)
    assert exp.round_index == 0 and exp.history == []


def test_the_skip_policy_continues_without_a_diverging_node(make_nodes, make_data):
    healthy, sick = _nan_nodes(make_nodes, make_data)
    exp = experiment([*healthy, sick], validate=False, on_node_failure="skip")
    history = exp.run()
    for row in history:
        assert row["nodes"] == [node.name for node in healthy]
        assert sick.name not in row["samples"]
        assert list(row["failures"]) == [sick.name]
        assert "PlanError" in row["failures"][sick.name]
        assert "diverged" in row["failures"][sick.name]
    assert all(np.isfinite(value).all() for value in exp.global_params.values())


def test_a_plan_that_raises_fails_the_round_with_its_error(make_nodes):
    nodes = make_nodes((60, 100))  # the plan crashes on the 75-sample training split
    exp = experiment(nodes, training_plan=ExplodingPlan, validate=False)
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match="RuntimeError: kaboom on 75 samples") as info:
        exp.run_once()
    assert info.value.node == nodes[1].name
    # where it failed: this file and line, not the shipped copy's fedplug_plan/<hash>.py
    line = inspect.getsourcelines(ExplodingPlan.train)[1] + 2
    assert re.search(rf"\(at \S*test_experiment\.py:{line} in train\)", str(info.value))
    assert "fedplug_plan/" not in str(info.value)
    # a bug in the plan's code fails on every node: the advice is to fix it, not to skip nodes
    assert "PlanCodeError" in str(info.value) and "fix the plan's code" in str(info.value)
    assert "on_node_failure='skip'" not in str(info.value)
    assert_params_equal(exp.global_params, before)
    assert exp.history == []

    skipping = experiment(
        nodes, training_plan=ExplodingPlan, validate=False, on_node_failure="skip"
    )
    row = skipping.run_once()
    assert row["nodes"] == [nodes[0].name]
    assert "kaboom" in row["failures"][nodes[1].name]


def test_min_nodes_is_enforced(make_nodes, make_data):
    healthy, sick = _nan_nodes(make_nodes, make_data)
    nodes = [*healthy, sick]
    exp = experiment(nodes, validate=False, on_node_failure="skip", min_nodes=3)
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match=r"only 2 of 3 nodes replied in round 0 \(min_nodes=3\)"):
        exp.run_once()
    assert_params_equal(exp.global_params, before)
    assert exp.history == []
    row = experiment(nodes, validate=False, on_node_failure="skip", min_nodes=2).run_once()
    assert len(row["nodes"]) == 2


def test_a_failing_validation_leaves_the_experiment_consistent(make_nodes):
    nodes = make_nodes((60, 100))  # evaluation crashes on the 25-sample test split
    exp = experiment(nodes, training_plan=FailingEvaluationPlan)
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match="evaluation kaboom") as info:
        exp.run_once()
    assert "global model is unchanged" in str(info.value)
    # ...so it must be: the round is either recorded or not applied at all
    assert_params_equal(exp.global_params, before)
    assert exp.round_index == len(exp.history) == 0


# -- misbehaving nodes never crash the researcher -----------------------------------------------


class GarbageNode(Node):
    """Replies with bytes that are not a message."""

    def serve(self, request, size=None):
        return [b"\xc1\x00 definitely not msgpack"]


class VanishingNode(Node):
    """Its process went away: the transport gets an exception instead of bytes."""

    def serve(self, request, size=None):
        raise ConnectionResetError("node process exited")


class UnreadingNode(Node):
    """Cannot read the requests it gets (here: they reach it cut short): it answers an error
    that names no experiment, since it could not learn which."""

    def serve(self, request, size=None):
        return super().serve(b"\x00\x00\x00\x05junk!")


class ForgingNode(Node):
    """Trains honestly, then alters its reply with ``forge``."""

    forge = staticmethod(lambda reply: reply)

    def serve(self, request, size=None):
        reply = msg.decode(b"".join(super().serve(request, size)))
        return [msg.encode(self.forge(reply) if isinstance(reply, msg.TrainReply) else reply)]


def _with_bad_node(make_nodes, node_cls, forge=None):
    good = make_nodes((60, 80))
    if forge is not None:
        node_cls = type("Forger", (ForgingNode,), {"forge": staticmethod(forge)})
    [bad] = make_nodes((70,), tags=good[0].datasets[0].tags, node_cls=node_cls)
    return good, bad


BAD_NODES = [
    pytest.param(GarbageNode, None, "MessageError: malformed message", id="garbage"),
    pytest.param(VanishingNode, None, "did not answer: ConnectionResetError", id="vanishing"),
    pytest.param(  # the node's own words, not a complaint about the ids its error lacks
        UnreadingNode, None, "MessageError: malformed message: header of", id="unreading"
    ),
    pytest.param(
        None, lambda r: replace(r, node="someone-else"), "claims to come from", id="impostor"
    ),
    pytest.param(
        None, lambda r: replace(r, round_index=r.round_index + 7), "expected", id="stale-round"
    ),
    pytest.param(
        None,
        lambda r: replace(r, params={"weight": np.zeros((2, 2))}),
        "MessageError: node .* returned parameters",
        id="wrong-params",
    ),
    pytest.param(
        None,
        lambda r: replace(r, params={k: v.astype(np.float32) for k, v in r.params.items()}),
        "returned parameters",
        id="wrong-dtype",
    ),
    pytest.param(None, lambda r: replace(r, n_samples=0), "n_samples=0", id="no-samples"),
]


@pytest.mark.parametrize(("node_cls", "forge", "match"), BAD_NODES)
def test_a_misbehaving_node_fails_the_round_cleanly(make_nodes, node_cls, forge, match):
    good, bad = _with_bad_node(make_nodes, node_cls, forge)
    exp = experiment([*good, bad], validate=False)
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match=match) as info:
        exp.run_once()
    assert info.value.node == bad.name
    assert_params_equal(exp.global_params, before)


@pytest.mark.parametrize(("node_cls", "forge", "match"), BAD_NODES)
def test_a_misbehaving_node_is_skipped_under_the_skip_policy(make_nodes, node_cls, forge, match):
    good, bad = _with_bad_node(make_nodes, node_cls, forge)
    exp = experiment([*good, bad], validate=False, on_node_failure="skip")
    history = exp.run()
    for row in history:
        assert row["nodes"] == [node.name for node in good]
        assert list(row["failures"]) == [bad.name]
        assert re.search(match, row["failures"][bad.name])


def test_serve_replies_with_buffers_that_are_the_replys_bytes(make_nodes):
    """A reply comes as buffers (its header, then its arrays) whose concatenation decodes to it:
    a transport sends them one after the other, no copy of the model assembled."""
    [node] = make_nodes((40,))
    request = msg.TrainRequest(
        experiment_id="exp-1",
        round_index=0,
        plan=msg.PlanRef(name="numpy-logreg"),
        model_args=MODEL_ARGS,
        training_args=TRAINING_ARGS,
        tags=[],
        params={"weight": np.full((4, 2), 0.5), "bias": np.zeros(2)},
    )
    parts = node.serve(msg.encode(request))
    assert len(parts) > 1
    reply = msg.decode(b"".join(parts), msg.TrainReply)
    assert {k: v.shape for k, v in reply.params.items()} == {"weight": (4, 2), "bias": (2,)}
    assert reply.n_samples > 0 and not np.array_equal(
        reply.params["weight"], request.params["weight"]
    )
    assert msg.decode(b"".join(node.serve(b"garbage"))).error == "MessageError"


def test_a_node_answers_bad_requests_with_error_replies(make_nodes):
    [node] = make_nodes((40,))
    for payload in (b"garbage", msg.encode(msg.ErrorReply("e", 0, "x", "E", "m"))):
        reply = msg.decode(b"".join(node.serve(payload)))
        assert isinstance(reply, msg.ErrorReply)
        assert reply.error == "MessageError"
        assert reply.node == node.name

    request = msg.TrainRequest(
        experiment_id="exp-1",
        round_index=4,
        plan=msg.PlanRef(name="numpy-logreg"),
        model_args=MODEL_ARGS,
        training_args=TRAINING_ARGS,
        tags=[],
        params={"weight": np.zeros((3, 2)), "bias": np.zeros(2)},  # the plan has 4 features
    )
    reply = msg.decode(b"".join(node.serve(msg.encode(request))))
    assert reply.error == "NodeError"
    assert "received parameters do not match" in reply.message
    assert (reply.experiment_id, reply.round_index) == ("exp-1", 4)

    unknown = replace(request, experiment_id="exp-2", plan=msg.PlanRef(name="no-such-plan"))
    reply = msg.decode(b"".join(node.serve(msg.encode(unknown))))
    assert reply.error == "PluginError" and "no-such-plan" in reply.message

    tampered = replace(
        request,
        experiment_id="exp-3",
        plan=msg.PlanRef(source="class P: pass\n", class_name="P", sha256="0" * 64),
    )
    reply = msg.decode(b"".join(node.serve(msg.encode(tampered))))
    assert reply.error == "PlanError" and "does not match its hash" in reply.message


# -- reproducibility ----------------------------------------------------------------------------


class SlowNode(Node):
    """Answers after ``delay`` seconds, to control the order in which replies arrive."""

    delay = 0.0

    def serve(self, request, size=None):
        time.sleep(self.delay)
        return super().serve(request, size)


def _run_with_delays(make_nodes, delays, seed):
    nodes = make_nodes((60, 80, 100), node_cls=SlowNode)
    for node, delay in zip(nodes, delays, strict=True):
        node.delay = delay
    exp = experiment(nodes, seed=seed, workers=3)
    exp.run()
    return exp


def test_the_same_seed_gives_the_same_model_whatever_the_reply_order(make_nodes):
    first = _run_with_delays(make_nodes, (0.0, 0.015, 0.03), seed=3)
    second = _run_with_delays(make_nodes, (0.03, 0.015, 0.0), seed=3)
    assert_params_equal(second.global_params, first.global_params)
    # node names differ between the two federations; node i holds the same data in both
    for row, again in zip(first.history, second.history, strict=True):
        assert list(again["train_loss"].values()) == list(row["train_loss"].values())


def test_another_seed_gives_another_model(make_nodes):
    nodes = make_nodes()
    first = experiment(nodes, seed=3)
    first.run()
    other = experiment(nodes, seed=4)
    other.run()
    assert not np.array_equal(first.global_params["weight"], other.global_params["weight"])


class BrokenInitPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.width = self.model_args["width"]  # a user bug: no such model argument


def test_a_plan_that_fails_to_build_on_the_researcher_is_a_plan_error(make_nodes):
    with pytest.raises(
        PlanError, match=r"BrokenInitPlan.*KeyError: 'width' \(at .*test_experiment"
    ):
        experiment(make_nodes(), training_plan=BrokenInitPlan)
