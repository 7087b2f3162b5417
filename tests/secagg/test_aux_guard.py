"""What secure aggregation cannot protect is refused before any round: optimizer modules that
exchange auxiliary variables (Scaffold's or a third party's), on either side, on the node as well,
and robust aggregators; and the same through ``fedplug demo --secagg``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from declearn.optimizer.modules import AuxVar, OptiModule, ScaffoldAuxVar

from fedplug import (
    ConfigError,
    Dataset,
    Experiment,
    LogisticRegressionPlan,
    Node,
    Optimizer,
    hookimpl,
)
from fedplug import messages as msg
from fedplug.errors import SecAggError
from fedplug.optimizer import pack_aux_vars
from fedplug.planref import make_plan_ref
from fedplug.plugins import get_plugin_manager

TAG = "secagg-aux-guard"
MODEL_ARGS = {"n_features": 4}
TRAINING_ARGS = {"batch_size": 10, "epochs": 1, "test_ratio": 0.25}


class ScaffoldPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.5, modules=["scaffold-client"])
        self.add_dependency("from fedplug import Optimizer")


class PlainOptimizerPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.5, modules=["adam"])
        self.add_dependency("from fedplug import Optimizer")


# A third party's pair of declearn modules exchanging auxiliary variables, registered with
# declearn under names of its own (nothing Scaffold-specific for the guard to recognise).
@dataclasses.dataclass
class SecAggGuardTestAuxVar(AuxVar):
    steps: float = 0.0


class _CountingModule(OptiModule, register=False):
    aux_name = "secagg-guard-test-counting"
    auxvar_cls = SecAggGuardTestAuxVar

    def __init__(self):
        self.steps = 0.0

    def run(self, gradients):
        self.steps += 1.0
        return gradients

    def collect_aux_var(self):
        return SecAggGuardTestAuxVar(steps=self.steps)

    def process_aux_var(self, aux_var):
        self.received = aux_var


class CountingClientModule(_CountingModule):
    name = "secagg-guard-test-counting-client"


class CountingServerModule(_CountingModule):
    name = "secagg-guard-test-counting-server"


class CountingPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.5, modules=["secagg-guard-test-counting-client"])
        self.add_dependency("from fedplug import Optimizer")


class CountingPlugin:
    """A third party's plugin providing the pair (``fedplug_register_optimizer_modules``)."""

    @hookimpl
    def fedplug_register_optimizer_modules(self, register):
        register(CountingClientModule.name, CountingClientModule)
        register(CountingServerModule.name, CountingServerModule)


def plugin_manager():
    """Every installed plugin, and the counting pair's."""
    pm = get_plugin_manager()
    pm.register(CountingPlugin(), name="counting")
    return pm


def counted_nodes(n=3, pm=None):
    """Nodes whose ``serve`` counts the requests they receive (``node.calls``)."""
    rng = np.random.default_rng(0)
    nodes = []
    for i in range(n):
        x = rng.normal(size=(40, 4))
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
        node = Node(f"{TAG}-{i}", Dataset(x, y, tags=[TAG]), plugin_manager=pm)
        node.calls = []

        def serve(payload, size=None, _node=node, _serve=node.serve):
            _node.calls.append(type(msg.decode(payload)).__name__)
            return _serve(payload, size)

        node.serve = serve
        nodes.append(node)
    return nodes


def experiment(nodes, plan, **kwargs):
    return Experiment(
        nodes=nodes,
        tags=[TAG],
        training_plan=plan,
        model_args=MODEL_ARGS,
        training_args=TRAINING_ARGS,
        round_limit=2,
        seed=0,
        progress=False,
        **kwargs,
    )


ALTERNATIVES = (
    "Either turn secure aggregation off (secagg=False), or use an optimizer without auxiliary "
    "variables"
)


# -- the guard at Experiment construction -------------------------------------------------------


def test_scaffold_with_secagg_is_refused_before_any_request():
    nodes = counted_nodes()
    with pytest.raises(SecAggError) as info:
        experiment(
            nodes,
            ScaffoldPlan,
            agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
            secagg=True,
        )
    text = str(info.value)
    assert "module 'scaffold-client' on the node side (the training plan's optimizer)" in text
    assert "auxiliary variables ('scaffold')" in text
    assert "comes from plugin 'fedplug.builtin.optimizers'" in text
    assert ALTERNATIVES in text
    assert all(node.calls == [] for node in nodes)
    # without secagg the same set-up is valid and runs
    exp = experiment(
        nodes, ScaffoldPlan, agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"])
    )
    exp.run_once()
    assert exp.history[0]["nodes"] == [node.name for node in nodes]


def test_a_researcher_side_aux_module_alone_is_refused_by_the_secagg_guard():
    """Core alone would refuse the unpaired module with a ConfigError; the secagg guard runs
    first (pluggy calls later-registered plugins first) and names the researcher side."""
    nodes = counted_nodes()
    server = Optimizer(lr=1.0, modules=["scaffold-server"])
    with pytest.raises(SecAggError) as info:
        experiment(nodes, PlainOptimizerPlan, agg_optimizer=server, secagg=True)
    text = str(info.value)
    assert (
        "optimizer module 'scaffold-server' on the researcher side (the experiment's "
        "agg_optimizer)" in text
    )
    assert ALTERNATIVES in text
    with pytest.raises(ConfigError, match="needs its node-side partner"):
        experiment(nodes, PlainOptimizerPlan, agg_optimizer=server)
    assert all(node.calls == [] for node in nodes)


def test_a_node_side_aux_module_alone_is_refused_by_the_secagg_guard():
    nodes = counted_nodes()
    with pytest.raises(SecAggError, match=r"module 'scaffold-client' on the node side"):
        experiment(nodes, ScaffoldPlan, secagg=True)
    assert all(node.calls == [] for node in nodes)


def test_a_third_party_module_with_auxiliary_variables_is_refused_too():
    pm = plugin_manager()
    assert Optimizer.available_modules(pm)[CountingClientModule.name] is CountingClientModule
    nodes = counted_nodes(pm=pm)
    server = Optimizer(lr=1.0, modules=[CountingServerModule.name], plugin_manager=pm)
    assert server.aux_modules == {"secagg-guard-test-counting": CountingServerModule.name}
    with pytest.raises(SecAggError) as info:
        experiment(nodes, CountingPlan, agg_optimizer=server, secagg="masking", plugin_manager=pm)
    text = str(info.value)
    assert (
        "optimizer module 'secagg-guard-test-counting-client' on the node side (the training "
        "plan's optimizer)" in text
    )
    assert "auxiliary variables ('secagg-guard-test-counting')" in text
    assert "comes from plugin 'counting'" in text
    assert ALTERNATIVES in text
    assert all(node.calls == [] for node in nodes)
    # what the guard protects: without secagg, each node's variables reach the researcher
    server = Optimizer(lr=1.0, modules=[CountingServerModule.name], plugin_manager=pm)
    exp = experiment(nodes, CountingPlan, agg_optimizer=server, plugin_manager=pm)
    exp.run_once()
    module = exp.agg_optimizer.declearn.modules[0]
    assert module.received.steps == 3 * 3.0  # summed over 3 nodes, 3 steps each


def test_a_robust_aggregator_is_refused_with_secagg():
    nodes = counted_nodes()
    with pytest.raises(SecAggError) as info:
        experiment(nodes, LogisticRegressionPlan, aggregator="median", secagg=True)
    text = str(info.value)
    assert "aggregator 'median' needs each update" in text
    assert "use aggregator='fedavg' or turn secagg off" in text
    assert all(node.calls == [] for node in nodes)


# -- the node's own check -----------------------------------------------------------------------


def secagg_train_request(plan_ref, aux_vars=None):
    """A secure-aggregation TrainRequest, built by hand as a careless researcher could."""
    params = LogisticRegressionPlan(MODEL_ARGS).get_parameters()
    return msg.encode(
        msg.TrainRequest(
            experiment_id="hand-made",
            round_index=0,
            plan=plan_ref,
            model_args=MODEL_ARGS,
            training_args=TRAINING_ARGS,
            tags=[TAG],
            params=params,
            aux_vars=aux_vars or {},
            secagg=msg.SecAggData("masking", "mask", {"round": 0, "participants": []}),
        )
    )


def test_a_node_refuses_a_secagg_request_carrying_auxiliary_variables():
    node = counted_nodes(1)[0]
    aux = pack_aux_vars({"scaffold": ScaffoldAuxVar(state=0.0)})
    request = secagg_train_request(msg.PlanRef(name="numpy-logreg"), aux)
    reply = msg.decode(b"".join(node.serve(request)))
    assert isinstance(reply, msg.ErrorReply)
    assert reply.error == "SecAggError"
    assert reply.message == (
        f"node '{TAG}-0' refuses a secure-aggregation request whose optimizer exchanges "
        "auxiliary variables (['scaffold']): secure aggregation cannot protect them"
    )
    assert not node._plugin_state  # no scheme state was created, nothing was masked


def test_a_node_refuses_a_secagg_request_for_a_plan_with_an_aux_var_optimizer():
    node = counted_nodes(1)[0]
    plan = ScaffoldPlan(MODEL_ARGS)
    ref = make_plan_ref(ScaffoldPlan, plan.dependencies, get_plugin_manager().training_plans)
    assert ref.source is not None  # shipped as source, run by the node
    reply = msg.decode(b"".join(node.serve(secagg_train_request(ref))))
    assert isinstance(reply, msg.ErrorReply)
    assert reply.error == "SecAggError"
    assert "exchanges auxiliary variables (['scaffold-client'])" in reply.message
    assert not node._plugin_state
    assert all(s.trained_round is None for s in node._sessions.values())


# -- the CLI ------------------------------------------------------------------------------------


def fedplug_command():
    script = shutil.which("fedplug", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def child_env():
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FEDPLUG_DISABLE_PLUGINS", "FEDPLUG_STRICT_PLUGINS")
    }
    env["MPLBACKEND"] = "Agg"
    return env


def test_cli_demo_secagg_scaffold_exits_2_before_any_round(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [fedplug_command(), "demo", "--secagg", "--algorithm", "scaffold", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    # what the demo prepares, then the error: no round, no progress bar, no traceback
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("preparing the experiment:"), result.stderr
    assert lines[1].startswith(
        "fedplug: error: secure aggregation cannot be used with optimizer module "
        "'scaffold-client' on the node side (the training plan's optimizer)"
    )
    assert ALTERNATIVES in lines[1]
    assert not out.exists()  # no results were written


def test_cli_demo_secagg_json_matches_the_plain_demo(tmp_path):
    def start(*extra):
        return subprocess.Popen(
            [fedplug_command(), "demo", "--json", "--rounds", "5", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**child_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            cwd=tmp_path,
        )

    # the two runs go side by side, one thread each
    secure = start("--secagg", "--out", str(tmp_path / "secure"))
    plain = start("--out", str(tmp_path / "plain"))
    results = {}
    for key, process in (("secure", secure), ("plain", plain)):
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        results[key] = json.loads(stdout.strip().splitlines()[-1])
    assert results["secure"]["secagg"] is True and results["plain"]["secagg"] is False
    assert results["secure"]["rounds"] == results["plain"]["rounds"] == 5
    assert abs(results["secure"]["global_accuracy"] - results["plain"]["global_accuracy"]) < 0.01
    assert results["secure"]["global_accuracy"] > 0.9
    assert (tmp_path / "secure" / "results.json").exists()
