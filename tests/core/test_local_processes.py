"""The local transport's worker-process mode: same results as threads, and vanishing workers."""

import threading

import numpy as np
import pytest

from fedplug import Dataset, Experiment, Node, NodeError


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
