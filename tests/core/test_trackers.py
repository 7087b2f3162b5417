"""Trackers come from plugins (``fedplug_register_trackers``) and are turned on by name:
``Experiment(tracking=...)``. They see every applied round and the final model; a tracker that
fails while logging is turned off with a warning, and training goes on."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import ConfigError, Experiment, PluginError, hookimpl
from fedplug.plugins import get_plugin_manager

MODEL_ARGS = {"n_features": 4}


class Recorder:
    """A tracker that records what it is told."""

    made: list[Recorder] = []

    def __init__(self, experiment, prefix="run", fail_at=None):
        self.experiment_id, self.prefix, self.fail_at = experiment.id, prefix, fail_at
        self.rounds: list[tuple[int, float]] = []
        self.final: dict[str, np.ndarray] | None = None
        self.closed = 0
        Recorder.made.append(self)

    def round_finished(self, round_index, summary, experiment):
        if round_index == self.fail_at:
            raise OSError("disk full")
        self.rounds.append((round_index, summary["train_loss"]))

    def experiment_finished(self, experiment):
        self.final = {k: v.copy() for k, v in experiment.global_params.items()}

    def close(self):
        self.closed += 1


class TrackerPlugin:
    @hookimpl
    def fedplug_register_trackers(self, register):
        register("recorder", Recorder)
        register("useless", lambda experiment: object())


@pytest.fixture
def pm():
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(TrackerPlugin(), name="tracker-plugin")
    Recorder.made.clear()
    return pm


def experiment(nodes, pm, **kwargs):
    return Experiment(
        nodes=nodes,
        training_plan="numpy-logreg",
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20},
        round_limit=3,
        seed=0,
        plugin_manager=pm,
        **kwargs,
    )


def test_hook_fedplug_register_trackers(make_nodes, pm):
    assert pm.trackers.owner("recorder") == "tracker-plugin"
    with experiment(make_nodes(), pm, tracking={"recorder": {"prefix": "tcga"}}) as exp:
        [tracker] = Recorder.made
        assert tracker.prefix == "tcga" and tracker.experiment_id == exp.id
        exp.run()
        assert [index for index, _ in tracker.rounds] == [0, 1, 2]
        assert [loss for _, loss in tracker.rounds] == [row["train_loss"] for row in exp.history]
        assert tracker.final is not None
        for name, value in exp.global_params.items():
            assert np.array_equal(tracker.final[name], value)
    assert tracker.closed == 1


@pytest.mark.parametrize("tracking", ["recorder", ["recorder"], {"recorder": None}])
def test_a_tracker_is_named_alone_in_a_list_or_with_options(make_nodes, pm, tracking):
    experiment(make_nodes(), pm, tracking=tracking).close()
    assert len(Recorder.made) == 1


def test_no_tracker_runs_unless_named(make_nodes, pm):
    experiment(make_nodes(), pm).run()
    assert Recorder.made == []


def test_unknown_trackers_and_options_are_refused_before_any_round(make_nodes, pm):
    nodes = make_nodes()
    with pytest.raises(PluginError, match=r"'tensorbord'.*recorder"):
        experiment(nodes, pm, tracking="tensorbord")
    with pytest.raises(ConfigError, match=r"tracker 'recorder': .*colour"):
        experiment(nodes, pm, tracking={"recorder": {"colour": "red"}})
    with pytest.raises(ConfigError, match="tracking must be a tracker's name"):
        experiment(nodes, pm, tracking=42)
    with pytest.raises(ConfigError, match="has none of round_finished"):
        experiment(nodes, pm, tracking="useless")


def test_a_failing_tracker_is_turned_off_and_training_goes_on(make_nodes, pm):
    exp = experiment(make_nodes(), pm, tracking={"recorder": {"fail_at": 1}})
    with pytest.warns(
        RuntimeWarning, match=r"tracker 'recorder' failed in round_finished.*disk full"
    ):
        exp.run()
    [tracker] = Recorder.made
    assert len(exp.history) == 3  # every round applied
    assert [index for index, _ in tracker.rounds] == [0]  # off after its failure
    assert tracker.final is None and tracker.closed == 1
    exp.close()
    assert tracker.closed == 1
