"""Saving and resuming an experiment's researcher-side state."""

import numpy as np
import pytest

from fedplug import ConfigError, Dataset, Experiment, LogisticRegressionPlan, Node, Optimizer


def nodes(tag: str) -> list[Node]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(3):
        x = rng.normal(size=(90, 4)) + i * 0.5
        out.append(Node(f"{tag}-{i}", Dataset(x, (x[:, 0] > i * 0.5).astype(np.int64), tags=[tag])))
    return out


def experiment(tag: str, agg_optimizer=None) -> Experiment:
    return Experiment(
        nodes=nodes(tag),
        tags=[tag],
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        training_args={"batch_size": 10, "test_ratio": 0.2},
        round_limit=4,
        seed=9,
        agg_optimizer=agg_optimizer,
    )


def fedadam() -> Optimizer:
    return Optimizer(lr=0.05, modules=["adam"])


def test_a_resumed_experiment_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = experiment("straight", fedadam())
    straight.run()
    first = experiment("first", fedadam())
    first.run(rounds=2)
    first.save_state(tmp_path / "state.npz")
    resumed = experiment("resumed", fedadam())
    resumed.load_state(tmp_path / "state.npz")
    assert resumed.round_index == 2 and len(resumed.history) == 2
    resumed.run()
    assert resumed.round_index == 4
    for name, value in straight.global_params.items():
        np.testing.assert_array_equal(resumed.global_params[name], value)
    # the researcher's Adam moments came back: without them the end differs
    fresh = experiment("fresh", fedadam())
    fresh.run(rounds=2)
    fresh.agg_optimizer = fedadam()
    fresh.run()
    assert any(
        not np.array_equal(fresh.global_params[k], v) for k, v in straight.global_params.items()
    )


def test_a_state_only_loads_into_a_matching_experiment(tmp_path):
    saved = experiment("saved", fedadam())
    saved.run(rounds=1)
    saved.save_state(tmp_path / "state.npz")
    with pytest.raises(ConfigError, match="saved with an agg_optimizer"):
        experiment("plain").load_state(tmp_path / "state.npz")
    with pytest.raises(ConfigError, match="optimizer state does not match"):
        experiment("momentum", Optimizer(lr=1.0, modules=["momentum"])).load_state(
            tmp_path / "state.npz"
        )
    saved.save_model(tmp_path / "model.npz")
    with pytest.raises(ConfigError, match="not a fedplug experiment state"):
        experiment("model", fedadam()).load_state(tmp_path / "model.npz")


class ScaffoldPlan(LogisticRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = Optimizer(lr=0.1, modules=["scaffold-client"])
        self.add_dependency("from fedplug import Optimizer")


def test_resuming_continues_the_node_side_sessions_of_running_nodes(tmp_path):
    federation = nodes("resume-nodes")

    def build() -> Experiment:
        return Experiment(
            nodes=federation,
            training_plan=ScaffoldPlan,
            model_args={"n_features": 4},
            training_args={"batch_size": 10},
            agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
            round_limit=4,
            seed=2,
        )

    first = build()
    first.run(rounds=2)
    first.save_state(tmp_path / "state.npz")
    client = federation[0]._sessions[first.id].plan.optimizer.declearn.modules[0]
    resumed = build()
    resumed.load_state(tmp_path / "state.npz")
    assert resumed.id == first.id
    resumed.run()
    assert federation[0]._sessions[resumed.id].plan.optimizer.declearn.modules[0] is client
    assert len(resumed.agg_optimizer.declearn.modules[0].clients) == 3  # same clients, no new ones


def test_a_checkpoint_folder_belongs_to_one_experiment(tmp_path):
    """A new experiment refuses a folder holding another's checkpoints (it would prune them,
    and a later resume would pick the wrong experiment); the owner resumes from it."""
    first = Experiment(
        nodes=nodes("owner"),
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        training_args={"batch_size": 10},
        round_limit=3,
        seed=9,
        checkpoint_dir=tmp_path,
    )
    first.run()
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == [
        "round-00002.npz",
        "round-00003.npz",
    ]
    with pytest.raises(ConfigError, match=f"holds checkpoints of another experiment.*{first.id}"):
        Experiment(
            nodes=nodes("other"),
            training_plan="numpy-logreg",
            model_args={"n_features": 4},
            round_limit=1,
            checkpoint_dir=tmp_path,
        )
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == [  # nothing pruned
        "round-00002.npz",
        "round-00003.npz",
    ]
    resumed = Experiment.load_checkpoint(tmp_path, nodes=nodes("owner"), round_limit=4)
    assert resumed.id == first.id and resumed.round_index == 3
    resumed.run()
    assert resumed.round_index == 4


class ShippedPlan(LogisticRegressionPlan):
    """Registered nowhere: it travels, and is checkpointed, as source."""


def test_resuming_a_plan_saved_as_source_needs_trust(tmp_path):
    """A checkpoint stores a shipped plan's source, and resuming runs it: like a plan, it is
    code, so it takes the caller's word (or the caller's own copy of the plan)."""
    settings = {
        "nodes": nodes("trust"),
        "training_plan": ShippedPlan,
        "model_args": {"n_features": 4},
        "round_limit": 2,
        "seed": 9,
    }
    first = Experiment(**settings, checkpoint_dir=tmp_path)
    assert first.plan_ref.source is not None
    first.run(rounds=1)
    with pytest.raises(ConfigError, match=r"holds the source of plan ShippedPlan.*trust=True"):
        Experiment.load_checkpoint(tmp_path, nodes=settings["nodes"])
    trusted = Experiment.load_checkpoint(tmp_path, nodes=settings["nodes"], trust=True)
    assert trusted.plan_ref == first.plan_ref and trusted.round_index == 1
    own = Experiment.load_checkpoint(tmp_path, nodes=settings["nodes"], training_plan=ShippedPlan)
    assert own.plan_class is ShippedPlan and own.round_index == 1
