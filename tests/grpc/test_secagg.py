"""Secure aggregation over gRPC, with real node processes (the session's cluster, see
support.py): the key exchange, the masked updates and the dropout recovery cross the wire, and
give the model of plain FedAvg."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedplug import Experiment, Optimizer
from fedplug.errors import SecAggError
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug_grpc import transport as grpc_transport_module

pytest.importorskip("grpc")
pytest.importorskip("fedplug_secagg")

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_secagg", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)

HEALTHY = ["alpha", "beta", "slow"]  # the cluster's nodes with a dataset tagged support.TAGS


def experiment(cluster, secagg: bool, plan=LogisticRegressionPlan, **model_args) -> Experiment:
    return Experiment(
        nodes=cluster.transport,
        tags=support.TAGS,
        training_plan=plan,
        model_args={"n_features": support.N_FEATURES, **model_args},
        training_args={"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
        round_limit=3,
        seed=0,
        progress=False,
        secagg=secagg,
        on_node_failure="skip",
    )


def assert_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0)


def test_secagg_rounds_over_grpc_give_the_plain_model(cluster):
    runs = {}
    for secagg in (False, True):
        exp = experiment(cluster, secagg)
        assert exp.nodes == HEALTHY
        for _ in range(2):
            row = support.run_round(exp)
            assert row["nodes"] == HEALTHY and row["failures"] == {}
        runs[secagg] = exp
    secure, plain = runs[True], runs[False]
    assert secure.secagg is not None and plain.secagg is None
    assert_close(secure.global_params, plain.global_params)
    # the masked sum is not the plain one bit for bit (fixed-point encoding), yet close to it
    assert any(
        not np.array_equal(secure.global_params[k], v) for k, v in plain.global_params.items()
    )
    assert [r["samples"] for r in secure.history] == [r["samples"] for r in plain.history]


def test_a_node_killed_after_the_key_exchange_is_recovered_from(cluster, tmp_path):
    """The slow node is killed while it trains, after it took part in the key exchange: the
    survivors' shares of its keys cross the wire and unmask the sum of their updates, which is
    the plain FedAvg of the survivors (the same kill without secagg)."""
    runs = {}
    for secagg in (False, True):
        cluster.ensure()
        control = tmp_path / f"secagg-{secagg}"
        control.mkdir()
        exp = experiment(cluster, secagg, support.SlowPlan, control=str(control))
        assert exp.nodes == HEALTHY
        future = support.in_thread(exp.run_once)
        support.wait_until(
            lambda c=control, f=future: (c / "started").exists() or f.done(),
            support.STARTUP_S,
            "the slow node to start training",
        )
        assert not future.done(), future
        cluster.deployment.kill("slow")
        row = future.result(timeout=60)
        assert row["nodes"] == ["alpha", "beta"], row
        assert "disconnected" in row["failures"]["slow"], row["failures"]
        if secagg:
            assert exp.secagg.dropped == ["slow"]
        runs[secagg] = exp
    assert_close(runs[True].global_params, runs[False].global_params)


class ScaffoldPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.1, modules=["scaffold-client"])


def test_scaffold_with_secagg_over_grpc_is_refused_before_the_server_starts(monkeypatch):
    """The validation runs before the transport is built: no server listens, no node is
    waited for (wait_timeout is two minutes), and the refusal is the SecAggError."""
    started = []
    monkeypatch.setattr(
        grpc_transport_module.GrpcTransport, "__init__", lambda *a, **k: started.append(1)
    )
    server = Optimizer(lr=1.0, modules=["scaffold-server"])  # declearn imported: not timed
    start = time.perf_counter()
    with pytest.raises(SecAggError, match=r"module 'scaffold-client' on the node side"):
        Experiment(
            tags=support.TAGS,
            training_plan=ScaffoldPlan,
            model_args={"n_features": support.N_FEATURES},
            agg_optimizer=server,
            transport="grpc",
            transport_options={"server": "127.0.0.1:0", "wait_timeout": 120.0},
            secagg=True,
        )
    assert time.perf_counter() - start < 1.0
    assert started == []
