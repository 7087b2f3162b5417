"""FLamby's baselines as training plans: registered per dataset, or shipped as source with a
fedplug.Optimizer, evaluated with the dataset's own metric on a center's whole test split."""

import inspect
import json
import subprocess
import sys
import textwrap

import flamby.datasets.fed_tcga_brca as fed_tcga_brca
import numpy as np
import pytest
import torch
from flamby_double_support import synthetic_downloaded
from torch import nn

import fedplug
from fedplug import Experiment, Node, Optimizer, get_plugin_manager
from fedplug.errors import ConfigError, NodeError, PluginError
from fedplug.messages import PlanRef
from fedplug.plan import TrainingArgs
from fedplug.planref import load_plan_class, make_plan_ref, source_hash
from fedplug_flamby import (
    DATASETS,
    FlambyTrainingPlan,
    flamby_experiment,
    flamby_nodes,
    flamby_plan,
    load_flamby,
)
from fedplug_flamby.plan import DATASET_PLANS, FedTcgaBrcaPlan

TCGA_IMPORT = "from flamby.datasets.fed_tcga_brca import Baseline, BaselineLoss, metric"


def test_the_registered_plan_of_a_dataset(tcga_license):
    pm = get_plugin_manager()
    plan_cls = flamby_plan("fed_tcga_brca")
    assert plan_cls is pm.training_plans["flamby-fed_tcga_brca"]
    assert pm.training_plans.name_of(plan_cls) == "flamby-fed_tcga_brca"
    assert pm.training_plans.owner("flamby-fed_tcga_brca") == "flamby"
    assert plan_cls.__name__ == "FedTcgaBrcaPlan" and issubclass(plan_cls, FlambyTrainingPlan)
    assert plan_cls.flamby_dataset == "fed_tcga_brca"
    for name in DATASETS:  # one registered plan per FLamby dataset
        assert pm.training_plans.name_of(DATASET_PLANS[name]) == f"flamby-{name}"
    # flamby_plan checks at once that the dataset can be used here (the double lacks this one)
    with pytest.raises(PluginError, match=r"pip install 'flamby\[heart\] @ git\+https://"):
        flamby_plan("fed_heart_disease")
    assert pm.training_plans["flamby"] is FlambyTrainingPlan
    # a registered plan travels by name
    ref = make_plan_ref(plan_cls, [], pm.training_plans)
    assert ref.name == "flamby-fed_tcga_brca" and ref.source is None


def test_the_plan_is_flamby_baseline_loss_and_optimizer():
    plan = flamby_plan("fed_tcga_brca")()
    assert isinstance(plan.model, fed_tcga_brca.Baseline)
    linear = plan.model.fc
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (39, 1)
    assert [name for name, _ in plan.model.named_parameters()] == ["fc.weight", "fc.bias"]
    assert isinstance(plan.loss, fed_tcga_brca.BaselineLoss)  # Adam: FLamby's own operations
    assert type(plan.optimizer) is torch.optim.Adam
    assert [group["lr"] for group in plan.optimizer.param_groups] == [0.1]
    optimized = {id(p) for group in plan.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in plan.model.parameters()}
    assert plan.flamby is fed_tcga_brca
    assert (plan.dataset_name, plan.metric_name) == ("fed_tcga_brca", "c_index")
    assert plan.dependencies == [TCGA_IMPORT, "from fedplug import Optimizer"]
    assert set(plan.get_parameters()) == {"fc.weight", "fc.bias"}


def test_the_generic_plan_takes_the_dataset_from_model_args(tcga_license):
    plan = FlambyTrainingPlan({"dataset": "fed_tcga_brca"})
    assert isinstance(plan.model, fed_tcga_brca.Baseline)
    exp = Experiment(
        nodes=flamby_nodes("fed_tcga_brca", centers=[4, 5]),
        tags=["fed_tcga_brca"],
        training_plan="flamby",
        model_args={"dataset": "fed_tcga_brca"},
        training_args={"batch_size": 8, "num_updates": 5},
        round_limit=1,
        validate=True,
        seed=0,
    )
    row = exp.run()[-1]
    assert set(row["validation"]) == {"center4", "center5"}
    assert set(row["validation_mean"]) == {"c_index", "loss"}


@pytest.mark.parametrize(
    ("plan", "model_args", "match"),
    [
        ("tcga", {"layers": [39, 1]}, "unknown model_args key 'layers' for a FLamby plan; known: "),
        ("tcga", {"dataset": "fed_synthetic"}, "FedTcgaBrcaPlan trains fed_tcga_brca, but model_"),
        ("tcga", {"dataset": "fed_nope"}, "FedTcgaBrcaPlan trains fed_tcga_brca, but model_args"),
        ("generic", {}, r"needs model_args=\{'dataset': \.\.\.\}, or use flamby_plan"),
        ("generic", {"dataset": "fed_nope"}, "unknown FLamby dataset 'fed_nope'; FLamby's data"),
        ("generic", {"dataset": 3}, "unknown FLamby dataset 3"),
        ("generic", {"dataset": "fed_tcga_brca", "lr": 1}, "unknown model_args key 'lr'"),
    ],
)
def test_model_args_are_checked(plan, model_args, match):
    cls = flamby_plan("fed_tcga_brca") if plan == "tcga" else FlambyTrainingPlan
    with pytest.raises(ConfigError, match=match):
        cls(model_args)


def test_a_matching_dataset_in_model_args_and_an_optimizer_spec_are_accepted():
    spec = fedplug.Optimizer(lr=0.02).to_dict()
    plan = flamby_plan("fed_tcga_brca")({"dataset": "fed_tcga_brca", "optimizer": spec})
    assert isinstance(plan.optimizer, fedplug.Optimizer)
    assert plan.optimizer.to_dict() == spec


def test_flamby_plan_refuses_unknown_datasets_and_torch_optimizers():
    with pytest.raises(ConfigError, match="unknown FLamby dataset 'fed_nope'"):
        flamby_plan("fed_nope")
    with pytest.raises(ConfigError, match=r"must be a fedplug\.Optimizer or its spec, got SGD"):
        flamby_plan("fed_tcga_brca", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


# --- With a fedplug.Optimizer: a generated plan shipped as source -------------------------------


def test_with_a_fedplug_optimizer_the_plan_is_a_subclass_shipped_as_source():
    optimizer = fedplug.Optimizer(lr=0.05, modules=["adam"])
    plan_cls = flamby_plan("fed_tcga_brca", optimizer)
    base = flamby_plan("fed_tcga_brca")
    assert issubclass(plan_cls, base) and plan_cls is not base
    assert plan_cls.optimizer_spec == optimizer.to_dict()
    # the same optimizer (or its spec) gives the same class; another one another class
    assert flamby_plan("fed_tcga_brca", optimizer.to_dict()) is plan_cls
    assert flamby_plan("fed_tcga_brca", fedplug.Optimizer(lr=0.05, modules=["adam"])) is plan_cls
    assert flamby_plan("fed_tcga_brca", fedplug.Optimizer(lr=0.06)) is not plan_cls

    source = inspect.getsource(plan_cls)
    assert source.startswith(f"class {plan_cls.__name__}(FedTcgaBrcaPlan):")
    plan = plan_cls()
    assert isinstance(plan.optimizer, fedplug.Optimizer)
    assert plan.optimizer.to_dict() == optimizer.to_dict()

    pm = get_plugin_manager()
    assert pm.training_plans.name_of(plan_cls) is None
    ref = make_plan_ref(plan_cls, plan.dependencies, pm.training_plans)
    assert isinstance(ref, PlanRef) and ref.name is None
    assert ref.class_name == plan_cls.__name__
    assert ref.sha256 == source_hash(ref.source)
    lines = ref.source.splitlines()
    assert TCGA_IMPORT in lines  # the plan's FLamby dependency ...
    assert "from fedplug_flamby.plan import FedTcgaBrcaPlan" in lines  # ... and its base class
    assert lines.index(TCGA_IMPORT) < lines.index(f"class {plan_cls.__name__}(FedTcgaBrcaPlan):")

    # what a node rebuilds from the source alone
    rebuilt = load_plan_class(ref, pm.training_plans)
    assert rebuilt is not plan_cls and rebuilt.__name__ == plan_cls.__name__
    assert issubclass(rebuilt, base)
    assert rebuilt().optimizer.to_dict() == optimizer.to_dict()


def test_a_node_that_requires_approval_runs_the_generated_plan_once_approved(tcga_license):
    plan_cls = flamby_plan("fed_tcga_brca", fedplug.Optimizer(lr=0.05, modules=["adam"]))
    nodes = [
        Node(f"hospital-{c}", load_flamby(dataset="fed_tcga_brca", center=c), approval=True)
        for c in (0, 5)
    ]
    exp = Experiment(
        nodes=nodes,
        tags=["fed_tcga_brca"],
        training_plan=plan_cls,
        training_args={"batch_size": 8, "num_updates": 10},
        round_limit=2,
        validate=True,
        seed=0,
    )
    sha = exp.plan_ref.sha256
    assert exp.plan_ref.name is None and TCGA_IMPORT in exp.plan_ref.source
    before = {name: value.copy() for name, value in exp.global_params.items()}
    with pytest.raises(
        NodeError, match="is not approved on this node; its code was not run"
    ) as info:
        exp.run_once()
    assert info.value.node == "hospital-0"
    assert f"node.approve_plan({sha!r})" in str(info.value)
    assert exp.history == [] and exp.round_index == 0
    for name, value in before.items():
        np.testing.assert_array_equal(exp.global_params[name], value)

    for node in nodes:
        node.approve_plan(sha)
    history = exp.run()
    assert len(history) == 2
    assert history[-1]["nodes"] == ["hospital-0", "hospital-5"]
    assert history[-1]["samples"] == {"hospital-0": 248, "hospital-5": 40}
    assert set(history[-1]["validation"]) == {"hospital-0", "hospital-5"}
    assert not np.array_equal(exp.global_params["fc.weight"], before["fc.weight"])


class RidgeCoxPlan(FedTcgaBrcaPlan):
    """Subclassed by hand (defined in this module, registered nowhere): travels as source."""

    optimizer_spec = {"lr": 0.1}

    def training_step(self, data, target):
        penalty = 0.01 * self.model.fc.weight.pow(2).sum()
        return self.loss(self.model(data), target) + penalty


class OptimizerInClassBodyPlan(FedTcgaBrcaPlan):
    """``Optimizer`` in a shipped subclass is fedplug's, on the nodes as on the researcher (FLamby's
    is the plan's ``self.flamby.Optimizer``)."""

    optimizer_spec = Optimizer(lr=0.1).to_dict()


def subclass_experiment(plan_cls) -> Experiment:
    return Experiment(
        nodes=flamby_nodes("fed_tcga_brca", centers=[3, 5]),
        tags=["fed_tcga_brca"],
        training_plan=plan_cls,
        training_args={"batch_size": 8, "num_updates": 10},
        round_limit=1,
        validate=True,
        seed=0,
    )


def test_a_subclass_of_the_dataset_plan_ships_with_its_flamby_imports(tcga_license):
    exp = subclass_experiment(RidgeCoxPlan)
    ref = exp.plan_ref
    assert ref.name is None and ref.class_name == "RidgeCoxPlan"
    lines = ref.source.splitlines()
    assert TCGA_IMPORT in lines
    assert "from fedplug_flamby.plan import FedTcgaBrcaPlan" in lines
    assert "class RidgeCoxPlan(FedTcgaBrcaPlan):" in lines
    assert isinstance(exp.training_plan.optimizer, Optimizer)
    row = exp.run()[-1]
    assert row["nodes"] == ["center3", "center5"]
    assert set(row["validation_mean"]) == {"c_index", "loss"}


def test_optimizer_in_a_shipped_class_body_is_fedplug_optimizer_on_the_nodes(tcga_license):
    exp = subclass_experiment(OptimizerInClassBodyPlan)
    assert "from fedplug import Optimizer" in exp.plan_ref.source.splitlines()
    assert exp.training_plan.optimizer.to_dict() == Optimizer(lr=0.1).to_dict()
    row = exp.run()[-1]
    assert row["nodes"] == ["center3", "center5"]
    for node in exp.transport.nodes.values():
        (session,) = node._sessions.values()
        assert session.plan.optimizer.to_dict() == Optimizer(lr=0.1).to_dict()


def test_flamby_experiment_with_an_optimizer_keeps_the_registered_plan(tcga_license):
    """The optimizer travels in model_args: nodes requiring approval build the plan by name."""
    adam = fedplug.Optimizer(lr=0.01, modules=["adam"])
    nodes = [
        Node(f"hospital-{c}", load_flamby(dataset="fed_tcga_brca", center=c), approval=True)
        for c in (1, 2)
    ]
    exp = flamby_experiment("fed_tcga_brca", 10, optimizer=adam, nodes=nodes, round_limit=1, seed=0)
    assert exp.plan_ref.name == "flamby-fed_tcga_brca" and exp.plan_ref.source is None
    assert exp.model_args == {"optimizer": adam.to_dict()}
    row = exp.run()[-1]
    assert row["nodes"] == ["hospital-1", "hospital-2"]
    (session,) = nodes[0]._sessions.values()
    assert isinstance(session.plan.optimizer, fedplug.Optimizer)
    assert session.plan.optimizer.to_dict() == adam.to_dict()


def test_a_generated_plan_survives_a_cleared_line_cache(tmp_path, child_env):
    """``flamby_plan`` with an optimizer keeps the generated class (in ``sys.modules``) but its
    source only in ``linecache``; a cleared line cache must not make it unshippable."""
    code = textwrap.dedent(
        """
        import json, linecache
        import fedplug
        from fedplug import get_plugin_manager
        from fedplug.planref import make_plan_ref
        from fedplug_flamby import flamby_plan

        registry = get_plugin_manager().training_plans
        optimizer = fedplug.Optimizer(lr=0.05, modules=["adam"])
        first = flamby_plan("fed_tcga_brca", optimizer)
        sha = make_plan_ref(first, first().dependencies, registry).sha256
        linecache.clearcache()  # any library may call it
        again = flamby_plan("fed_tcga_brca", optimizer)
        try:
            ref = make_plan_ref(again, again().dependencies, registry)
            print(json.dumps({"same": again is first, "sha": ref.sha256 == sha, "error": None}))
        except Exception as exc:
            print(json.dumps({"same": again is first, "sha": False, "error": str(exc)}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report["error"]
    assert report["sha"]


# --- Evaluation with FLamby's metric ------------------------------------------------------------


def test_evaluate_is_flamby_metric_on_the_whole_test_split(tcga_license):
    data = load_flamby(dataset="fed_tcga_brca", center=0)
    plan = flamby_plan("fed_tcga_brca")()
    result = plan.train(
        data, TrainingArgs.from_dict({"batch_size": 8, "num_updates": 30, "seed": 1})
    )
    assert (result.n_samples, result.n_steps) == (248, 30)

    metrics = plan.evaluate(data.test, TrainingArgs.from_dict({"batch_size": 8}))
    assert set(metrics) == {"c_index", "loss"}

    x = torch.stack([data.test.x[i][0] for i in range(len(data.test))])
    y = torch.stack([data.test.x[i][1] for i in range(len(data.test))])
    with torch.no_grad():
        scores = plan.model(x)
    expected = fed_tcga_brca.metric(y.numpy(), scores.numpy())
    assert metrics["c_index"] == pytest.approx(expected, abs=1e-12)
    assert metrics["loss"] == pytest.approx(
        float(fed_tcga_brca.BaselineLoss()(scores, y)), rel=1e-5
    )
    assert 0.5 < metrics["c_index"] <= 1.0  # trained: better than chance
    # one value over the 63 records, not an average of per-batch C-indices: the batch size of
    # the evaluation does not change it
    for batch_size in (1, 5, 64):
        again = plan.evaluate(data.test, TrainingArgs.from_dict({"batch_size": batch_size}))
        assert again["c_index"] == pytest.approx(metrics["c_index"], abs=1e-12)
    assert plan.model.training  # back in training mode


def test_a_tcga_plan_refuses_a_center_of_another_flamby_dataset(tmp_path, tcga_license):
    with synthetic_downloaded(tmp_path / "synthetic"):
        synthetic = load_flamby(dataset="fed_synthetic", center=0, tags=["fed_tcga_brca"])
    plan = flamby_plan("fed_tcga_brca")()
    args = TrainingArgs.from_dict({"batch_size": 8, "num_updates": 2})
    expected = (
        "this plan trains FLamby's fed_tcga_brca, but the node's dataset "
        "'fed_synthetic-center0' is center 0 of fed_synthetic"
    )
    with pytest.raises(ConfigError, match=expected):
        plan.train(synthetic, args)
    with pytest.raises(ConfigError, match=expected.replace("center0'", "center0:test'")):
        plan.evaluate(synthetic.test, args)

    # through a node: the node answers with the error and the round fails, naming the node
    nodes = [
        Node("tcga", load_flamby(dataset="fed_tcga_brca", center=5)),
        Node("synthetic", synthetic),
    ]
    exp = Experiment(
        nodes=nodes,
        tags=["fed_tcga_brca"],
        training_plan="flamby-fed_tcga_brca",
        training_args={"batch_size": 8, "num_updates": 2},
        round_limit=1,
        seed=0,
    )
    with pytest.raises(NodeError, match=f"ConfigError: {expected}") as info:
        exp.run()
    assert info.value.node == "synthetic"


def test_flamby_experiment_takes_a_subclass_and_keeps_flamby_defaults(tcga_license):
    exp = flamby_experiment("fed_tcga_brca", training_plan=RidgeCoxPlan, seed=0, round_limit=1)
    assert exp.plan_class is RidgeCoxPlan and exp.plan_ref.class_name == "RidgeCoxPlan"
    assert exp.training_args.batch_size == 8 and exp.training_args.num_updates == 100
    assert len(exp.nodes) == 6
    row = exp.run()[-1]
    assert set(row["validation_mean"]) == {"c_index", "loss"}
