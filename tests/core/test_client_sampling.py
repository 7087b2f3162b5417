"""``clients_per_round``: each round trains a seeded sample of the nodes (a count or a fraction),
the same in a run and in its resumption from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import Dataset, Experiment, Node

SETTINGS = {
    "tags": ["t"],
    "training_plan": "numpy-logreg",
    "model_args": {"n_features": 4, "n_classes": 2},
    "training_args": {"epochs": 1, "batch_size": 8, "lr": 0.1},
    "progress": False,
}


def federation(n=10):
    nodes = []
    for i in range(n):
        rng = np.random.default_rng(i)
        x = rng.normal(size=(24, 4)).astype(np.float32)
        nodes.append(Node(f"n{i:02d}", Dataset(x, (x[:, 0] > 0).astype(np.int64), ["t"])))
    return nodes


def trained(history):
    return [sorted(row["nodes"]) for row in history]


def test_each_round_trains_its_seeded_sample_in_node_order():
    with Experiment(
        nodes=federation(), round_limit=6, clients_per_round=3, seed=7, **SETTINGS
    ) as exp:
        history = exp.run()
        samples = [exp.round_nodes(r) for r in range(6)]
    assert trained(history) == [sorted(s) for s in samples]
    assert all(len(s) == 3 and s == sorted(s) for s in samples)  # the nodes' order
    assert len({tuple(s) for s in samples}) > 1  # rounds draw anew
    with Experiment(
        nodes=federation(), round_limit=6, clients_per_round=3, seed=7, **SETTINGS
    ) as again:
        assert [again.round_nodes(r) for r in range(6)] == samples  # the seed decides
    with Experiment(nodes=federation(), clients_per_round=3, seed=8, **SETTINGS) as other:
        assert [other.round_nodes(r) for r in range(6)] != samples


def test_a_fraction_rounds_up_and_none_asks_everyone():
    with Experiment(nodes=federation(), clients_per_round=0.25, seed=1, **SETTINGS) as exp:
        assert len(exp.round_nodes(0)) == 3  # 2.5 nodes, rounded up
    with Experiment(nodes=federation(), seed=1, **SETTINGS) as exp:
        assert exp.round_nodes(0) == exp.nodes
    with Experiment(nodes=federation(), clients_per_round=1.0, seed=1, **SETTINGS) as exp:
        assert exp.round_nodes(4) == exp.nodes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "a count \\(int >= 1\\) or a fraction"),
        (1.5, "a count \\(int >= 1\\) or a fraction"),
        (True, "a count \\(int >= 1\\) or a fraction"),
        ("10%", "a count \\(int >= 1\\) or a fraction"),
        (11, "asks 11 nodes per round, but the experiment has 10"),
    ],
)
def test_impossible_samples_are_refused_before_any_round(value, message):
    with pytest.raises(Exception, match=message):
        Experiment(nodes=federation(), clients_per_round=value, **SETTINGS)


def test_a_sample_smaller_than_min_nodes_is_refused():
    with pytest.raises(Exception, match="fewer than min_nodes=5: no round could succeed"):
        Experiment(nodes=federation(), clients_per_round=0.3, min_nodes=5, **SETTINGS)


@pytest.mark.parametrize("seed", [5, None])
def test_a_resumed_run_draws_the_samples_of_the_uninterrupted_one(tmp_path, seed):
    with Experiment(
        nodes=federation(), round_limit=4, clients_per_round=4, seed=seed,
        checkpoint_dir=tmp_path / "a", **SETTINGS,
    ) as whole:  # fmt: skip
        history = whole.run()
        final = {k: np.array(v) for k, v in whole.global_params.items()}
    with Experiment(
        nodes=federation(), round_limit=2, clients_per_round=4, seed=seed,
        checkpoint_dir=tmp_path / "b", experiment_id=whole.id, **SETTINGS,
    ) as first:  # fmt: skip
        first.run()
    with Experiment.load_checkpoint(tmp_path / "b", nodes=federation(), round_limit=4) as rest:
        assert rest.clients_per_round == 4
        resumed = rest.run()
        assert trained(resumed) == trained(history)  # the restored rounds and the new ones
        if seed is not None:  # with a seed, the very same model
            for key, value in final.items():
                np.testing.assert_array_equal(np.array(rest.global_params[key]), value)
