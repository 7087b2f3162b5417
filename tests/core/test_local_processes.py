"""The local transport's worker-process mode: same results as threads, and vanishing workers."""

import importlib
import threading
from pathlib import Path

import numpy as np
import pytest

from fedplug import (
    ConfigError,
    Dataset,
    Experiment,
    FedAverage,
    Node,
    NodeError,
    Optimizer,
    get_plugin_manager,
    hookimpl,
)


def make_nodes(prefix: str, n_nodes: int = 4) -> list[Node]:
    rng = np.random.default_rng(7)
    nodes = []
    for i in range(n_nodes):
        x = rng.normal(size=(80, 6))
        y = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
        nodes.append(Node(f"{prefix}-{i}", Dataset(x, y, tags=["proc"], name=f"d{i}")))
    return nodes


def experiment(nodes: list[Node], **kwargs) -> Experiment:
    return Experiment(
        nodes=nodes,
        tags=["proc"],
        training_plan="numpy-logreg",
        model_args={"n_features": 6},
        training_args={"batch_size": 8, "epochs": 1, "test_ratio": 0.25},
        round_limit=3,
        seed=11,
        **kwargs,
    )


def test_worker_processes_give_the_same_model_as_threads():
    threaded = experiment(make_nodes("t"))
    threaded.run()
    spawned = experiment(make_nodes("p"), processes=True, workers=2)
    spawned.run()
    assert spawned.transport._procs  # the workers (and their nodes' sessions) outlive run()
    spawned.close()
    for name, value in threaded.global_params.items():
        np.testing.assert_array_equal(spawned.global_params[name], value)
    assert spawned.history[-1]["validation_global"]["accuracy"] > 0.8
    assert not spawned.transport._procs  # close() stopped them


def test_a_worker_process_that_dies_fails_the_round_and_keeps_the_model():
    exp = experiment(make_nodes("k"), processes=True, workers=2)
    exp.run_once()
    before = {name: value.copy() for name, value in exp.global_params.items()}
    victim = exp.transport._procs[0]
    victim.process.kill()
    victim.process.join()
    with pytest.raises(NodeError, match="worker process died") as info:
        exp.run_once()
    assert info.value.node in victim.nodes
    for name, value in before.items():
        np.testing.assert_array_equal(exp.global_params[name], value)
    exp.transport.close()


def test_skip_policy_continues_without_the_dead_worker_nodes():
    exp = experiment(make_nodes("s"), processes=True, workers=2, on_node_failure="skip")
    exp.run_once()
    victim = exp.transport._procs[1]
    victim.process.kill()
    victim.process.join()
    row = exp.run_once()
    assert sorted(row["failures"]) == sorted(victim.nodes)
    assert sorted(row["nodes"]) == sorted(set(exp.nodes) - set(victim.nodes))
    exp.transport.close()


def test_large_messages_to_several_nodes_per_worker_do_not_deadlock():
    # 4 nodes on 2 workers, ~1 MB per message: far beyond a pipe's buffer in both directions
    rng = np.random.default_rng(3)
    nodes = []
    for i in range(4):
        x = rng.normal(size=(20, 60_000)).astype(np.float32)
        nodes.append(Node(f"big-{i}", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=["big"])))
    exp = Experiment(
        nodes=nodes,
        tags=["big"],
        training_plan="numpy-logreg",
        model_args={"n_features": 60_000},
        training_args={"batch_size": 20},
        round_limit=2,
        processes=True,
        workers=2,
        validate=False,
    )
    done = threading.Event()
    worker = threading.Thread(target=lambda: (exp.run(), done.set()), daemon=True)
    worker.start()
    finished = done.wait(timeout=90)
    if not finished:  # unblock the test process before failing
        for proc in exp.transport._procs:
            proc.process.kill()
    assert finished, "the process transport deadlocked on large messages"
    assert len(exp.history) == 2


def test_a_failed_round_leaves_no_stale_reply_for_the_next_one():
    nodes = make_nodes("stale")
    nodes[0].datasets[0].x[0, 0] = np.nan  # this node's training always fails (NaN loss)
    exp = Experiment(
        nodes=nodes,
        tags=["proc"],
        training_plan="numpy-logreg",
        model_args={"n_features": 6},
        training_args={"batch_size": 8},
        round_limit=3,
        processes=True,
        workers=2,
        validate=False,
    )
    outcome: dict = {}

    def two_rounds() -> None:
        with pytest.raises(NodeError, match="diverged"):
            exp.run_once()  # fails at the first node, with other requests still in flight
        exp.on_node_failure = "skip"
        outcome["row"] = exp.run_once()

    worker = threading.Thread(target=two_rounds, daemon=True)
    worker.start()
    worker.join(timeout=90)
    exp.close()
    assert "row" in outcome, "the round after a failed one did not complete"
    row = outcome["row"]
    # a reply left over from the failed round would be refused as another round's
    assert list(row["failures"]) == [nodes[0].name]
    assert sorted(row["nodes"]) == sorted(n.name for n in nodes[1:])


ACME = Path(__file__).resolve().parents[1] / "third_party" / "acme" / "src"


def test_plugins_registered_in_this_process_reach_the_worker_processes(monkeypatch):
    """A plugin registered on the nodes' manager in-process (here a module importable by name,
    not installed) is registered again in each worker: its plan and optimizer pair work there."""
    monkeypatch.syspath_prepend(str(ACME))  # spawned workers get this process's sys.path
    # imported once for the session: declearn refuses a second registration of its AuxVar
    plugin = importlib.import_module("fedplug_acme.plugin")
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="acme-in-process")
    nodes = make_nodes("a")
    for node in nodes:
        node.pm = pm
    server = {"lr": 1.0, "modules": ["acme-drift-server"]}

    def acme_experiment(nodes, **kwargs):
        return Experiment(
            nodes=nodes,
            tags=["proc"],
            training_plan="acme-logreg",
            model_args={
                "n_features": 6,
                "optimizer": {"lr": 0.1, "modules": ["acme-drift-client"]},
            },
            training_args={"batch_size": 8, "epochs": 1, "test_ratio": 0.25},
            agg_optimizer=Optimizer.from_dict(server, pm),
            round_limit=3,
            seed=11,
            plugin_manager=pm,
            **kwargs,
        )

    spawned = acme_experiment(nodes, processes=True, workers=2)
    with spawned:
        spawned.run()
    others = make_nodes("b")
    for node in others:
        node.pm = pm
    threaded = acme_experiment(others)
    threaded.run()
    assert threaded.agg_optimizer.declearn.modules[0].steps > 0
    for name, value in threaded.global_params.items():
        np.testing.assert_array_equal(spawned.global_params[name], value)


def test_a_plugin_that_cannot_reach_the_workers_is_refused_by_name():
    class Local:  # defined in a function: a worker process could not rebuild it
        @hookimpl
        def fedplug_register_aggregators(self, register):
            register("local-only", FedAverage)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Local(), name="local-only-plugin")
    nodes = make_nodes("r")
    for node in nodes:
        node.pm = pm
    with pytest.raises(ConfigError, match=r"plugin 'local-only-plugin' is registered in this "):
        experiment(nodes, processes=True, plugin_manager=pm)
    experiment(nodes, plugin_manager=pm).run(rounds=1)  # in this process it works
