"""The seed's workflow end to end: ``flamby_experiment`` and the seed's hand-written
``FLambyTrainingPlan`` against deployed nodes (``fedplug node start`` processes) tagged as their
administrators chose, and the trained model loaded and evaluated on those nodes with the
dataset's metric, without the data on the researcher's side."""

from __future__ import annotations

import contextlib
import socket

import flamby.datasets.fed_tcga_brca as fed_tcga_brca
import numpy as np
import pytest
import torch
from flamby.datasets.fed_tcga_brca import Baseline, BaselineLoss, Optimizer

import fedplug_flamby.experiment as flamby_experiment_module
from fedplug import Experiment, FedAverage, LocalTransport, Node, load_params
from fedplug.errors import ConfigError
from fedplug_flamby import flamby_experiment, flamby_nodes, load_flamby
from fedplug_torch import TorchTrainingPlan

CENTERS = [f"center{c}" for c in range(6)]
STARTUP_S = 120.0  # six node processes import torch on a busy machine


class FLambyTrainingPlan(TorchTrainingPlan):
    """The seed's plan (Fed-BioMed's FLamby tutorial), only its imports changed: no metric of its
    own, so it evaluates with what the node's dataset brings."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = Baseline()
        self.loss = BaselineLoss()
        self.optimizer = Optimizer(self.parameters(), lr=0.001)
        self.add_dependency(
            ["from flamby.datasets.fed_tcga_brca import Baseline, BaselineLoss, Optimizer"]
        )

    def training_step(self, data, target):
        output = self.model.forward(data)
        return self.loss(output, target)


SEED_ARGS = {"num_updates": 10, "batch_size": 8}


def flamby_metric_of(params, center):
    """FLamby's metric of ``params`` on center ``center``'s test split, computed here directly."""
    plan = FLambyTrainingPlan()
    plan.set_parameters(params)
    test = load_flamby(dataset="fed_tcga_brca", center=center).test
    x = torch.stack([test.x[i][0] for i in range(len(test))])
    y = torch.stack([test.x[i][1] for i in range(len(test))])
    with torch.no_grad():
        return float(fed_tcga_brca.metric(y.numpy(), plan.model(x).numpy()))


# --- in this process ----------------------------------------------------------------------------


def test_the_seeds_plan_reports_the_flamby_metric_of_a_loaded_model(tcga_license, tmp_path):
    def seed_experiment():
        return Experiment(
            nodes=flamby_nodes("fed_tcga_brca", tags=["tcga"]),
            tags=["tcga"],
            model_class=FLambyTrainingPlan,
            training_args=SEED_ARGS,
            round_limit=2,
            aggregator=FedAverage(),
            seed=0,
            progress=False,
        )

    exp = seed_experiment()
    history = exp.run()
    assert "validation" not in history[-1]  # the seed's experiment validates nothing itself
    exp.save_model(tmp_path / "seed.npz")

    exp = seed_experiment()
    exp.load_model(tmp_path / "seed.npz")
    per_node, weighted = exp.evaluate()
    assert sorted(per_node) == CENTERS
    params = load_params(tmp_path / "seed.npz")
    for center, name in enumerate(CENTERS):
        assert set(per_node[name]) == {"c_index", "loss", "n_samples"}
        assert per_node[name]["c_index"] == pytest.approx(
            flamby_metric_of(params, center), abs=1e-9
        )
    assert set(weighted) == {"c_index", "loss", "n_samples"}


def test_flamby_experiment_selects_the_nodes_by_the_tags_given(tcga_license):
    exp = flamby_experiment("fed_tcga_brca", tags="tcga", round_limit=1, num_updates=2, seed=0)
    assert exp.tags == ["tcga"] and exp.nodes == CENTERS
    assert set(exp.run()[-1]["validation"]["center5"]) == {"c_index", "loss", "n_samples"}
    # nodes tagged otherwise are not the federation of the default tags, the dataset's name
    nodes = flamby_nodes("fed_tcga_brca", centers=[0, 1], tags=["tcga"])
    with pytest.raises(ConfigError, match=r"no node has a dataset with tags \['fed_tcga_brca'\]"):
        flamby_experiment("fed_tcga_brca", nodes=nodes)
    with pytest.raises(ConfigError, match="tags must be a non-empty list"):
        flamby_experiment("fed_tcga_brca", tags=[])


def test_a_transport_object_is_the_federation_and_no_local_node_is_built(tcga_license, monkeypatch):
    nodes = [
        Node(f"hospital-{c}", load_flamby(dataset="fed_tcga_brca", center=c, tags=["tcga"]))
        for c in (0, 3)
    ]

    def no_local_nodes(*args, **kwargs):
        raise AssertionError("flamby_experiment built local nodes")

    monkeypatch.setattr(flamby_experiment_module, "flamby_nodes", no_local_nodes)
    with LocalTransport(nodes) as federation:
        exp = flamby_experiment(
            "fed_tcga_brca", tags=["tcga"], transport=federation, round_limit=1, num_updates=2
        )
        assert exp.nodes == ["hospital-0", "hospital-3"]
        assert sorted(exp.run()[-1]["validation"]) == ["hospital-0", "hospital-3"]


def test_a_remote_transport_refuses_local_node_options_before_starting_a_server():
    with pytest.raises(ConfigError, match="centers picks the in-process nodes"):
        flamby_experiment("fed_tcga_brca", centers=[0, 1], transport="grpc")
    with pytest.raises(ConfigError, match="give either nodes or transport='grpc'"):
        flamby_experiment("fed_tcga_brca", nodes=[], transport="grpc")


def test_over_grpc_it_waits_for_deployed_nodes_instead_of_building_local_ones(monkeypatch):
    """The issue's call: no "give wait_nodes instead of nodes" any more; with nobody connecting,
    the server's own wait, for nodes with the tags given, is what fails."""
    monkeypatch.setattr(fed_tcga_brca, "FedClass", None)  # the researcher reads no data
    options = {"server": "127.0.0.1:0", "wait_nodes": 6, "wait_timeout": 0.3}
    with pytest.raises(ConfigError) as info:
        flamby_experiment(
            "fed_tcga_brca", tags=["tcga"], transport="grpc", transport_options=options
        )
    assert "instead of nodes" not in str(info.value)
    assert "waited 0.3 s for 6 node(s) with a dataset tagged ['tcga']" in str(info.value)
    # without wait_nodes, it waits for every center of the dataset
    with pytest.raises(ConfigError, match=r"for 6 node\(s\) with a dataset tagged \['tcga'\]"):
        flamby_experiment(
            "fed_tcga_brca",
            tags="tcga",
            transport="grpc",
            transport_options={"server": "127.0.0.1:0", "wait_timeout": 0.3},
        )


# --- against `fedplug node start` processes ---------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def hospitals(workdir, child_env, monkeypatch, tags):
    """Six node processes, one per center, whose administrators added their center with
    ``--tags`` ``tags`` and ``--accept-license``, and that run plans shipped as source
    (``approval = false``). Yields the researcher's address and certs directory."""
    from fedplug_grpc.deploy import NodeSpec, make_certs, prepare_nodes

    specs = [
        NodeSpec(
            f"center{c}",
            [(f"tcga-{c}", "flamby", tags, {"dataset": "fed_tcga_brca", "center": c})],
            node={"approval": False},
            researcher={"reconnect_s": 0.2, "max_reconnect_s": 1.0},
        )
        for c in range(6)
    ]
    for spec in specs:  # as `fedplug node dataset add ... --accept-license` records it
        spec.datasets[0][3]["accept_license"] = True
    certs = make_certs(workdir, [spec.name for spec in specs])
    port = free_port()
    deployment = prepare_nodes(workdir / "nodes", specs, f"localhost:{port}", certs)
    env = child_env(OMP_NUM_THREADS="1")
    for key in ("PYTHONPATH", "MPLBACKEND", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, env[key])
    deployment.start_all()  # the nodes retry until the researcher's server is up
    try:
        yield f"127.0.0.1:{port}", certs
    finally:
        deployment.stop()


@pytest.mark.slow
def test_deployed_nodes_train_and_evaluate_the_seeds_experiment(
    tmp_path, child_env, monkeypatch, tcga_license
):
    # the same experiment with the centers in this process, for reference
    local = flamby_experiment("fed_tcga_brca", num_updates=10, round_limit=2, seed=0)
    reference = local.run()[-1]["validation"]

    with (
        hospitals(tmp_path, child_env, monkeypatch, ["tcga"]) as (server, certs),
        monkeypatch.context() as researcher,
    ):
        # the researcher's machine has FLamby but none of the data: reading it fails here
        researcher.setattr(fed_tcga_brca, "FedClass", None)
        researcher.setattr(flamby_experiment_module, "flamby_nodes", None)

        # the call, as written: Experiment's deprecated keyword still forwarded
        with pytest.warns(DeprecationWarning, match="transport_options="):
            exp = flamby_experiment(
                "fed_tcga_brca",
                num_updates=10,
                round_limit=2,
                seed=0,
                tags=["tcga"],
                transport="grpc",
                transport_options={"server": server, "tls": certs, "wait_timeout": STARTUP_S},
                wait_nodes=6,
                progress=False,
            )
        with exp:
            assert sorted(exp.nodes) == CENTERS
            deployed = exp.run()[-1]["validation"]
        for name in CENTERS:  # the per-center results of the in-process run
            assert deployed[name]["c_index"] == pytest.approx(reference[name]["c_index"], abs=1e-6)

        # the seed's experiment and plan, then its model loaded and evaluated on the nodes
        options = {"server": server, "tls": certs, "wait_nodes": 6, "wait_timeout": STARTUP_S}

        def seed_experiment():
            return Experiment(
                tags=["tcga"],
                model_class=FLambyTrainingPlan,
                training_args=SEED_ARGS,
                round_limit=2,
                aggregator=FedAverage(),
                seed=0,
                transport="grpc",
                transport_options=options,
                progress=False,
            )

        with seed_experiment() as exp:
            exp.run()
            exp.save_model(tmp_path / "seed.npz")
        with seed_experiment() as exp:
            exp.load_model(tmp_path / "seed.npz")
            per_node, weighted = exp.evaluate()

    params = load_params(tmp_path / "seed.npz")
    assert sorted(per_node) == CENTERS
    for center, name in enumerate(CENTERS):
        assert set(per_node[name]) == {"c_index", "loss", "n_samples"}, per_node[name]
        assert per_node[name]["c_index"] == pytest.approx(
            flamby_metric_of(params, center), abs=1e-9
        )
    assert np.isfinite(weighted["c_index"])
