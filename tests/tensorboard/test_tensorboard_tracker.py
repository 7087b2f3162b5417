"""fedplug-tensorboard: ``Experiment(tracking="tensorboard")`` writes event files that
TensorBoard's own reader (``EventAccumulator``) reads back with the experiment's values."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedplug import ConfigError, load_params
from fedplug.plugins import get_plugin_manager
from fedplug_tensorboard.tracker import round_scalars

SIZES = {"scalars": 0, "tensors": 0}  # keep every event


def read(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance=SIZES)
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def text(events: EventAccumulator, tag: str) -> str:
    [event] = events.Tensors(tag)
    return event.tensor_proto.string_val[0].decode()


def test_every_round_and_the_final_model_are_read_back(make_tracked_experiment, tmp_path):
    log_dir = tmp_path / "tb"
    with make_tracked_experiment({"tensorboard": {"log_dir": str(log_dir)}}) as exp:
        history = exp.run()
        final = {name: value.copy() for name, value in exp.global_params.items()}
    events = read(log_dir)
    f32 = np.float32

    # the headline series, value by value (TensorBoard keeps scalars as float32)
    assert scalars(events, "train/loss") == [
        (i, f32(r["train_loss_mean"])) for i, r in enumerate(history)
    ]
    for metric in ("accuracy", "loss"):
        assert scalars(events, f"validation/{metric}/global") == [
            (i, f32(row["validation_global"][metric])) for i, row in enumerate(history)
        ]
        assert scalars(events, f"validation/{metric}/mean") == [
            (i, f32(row["validation_mean"][metric])) for i, row in enumerate(history)
        ]
        for node in exp.nodes:
            assert scalars(events, f"validation/{metric}/{node}") == [
                (i, f32(row["validation"][node][metric])) for i, row in enumerate(history)
            ]
    for name in ("train_s", "aggregate_s", "validate_s", "round_s"):
        assert scalars(events, f"durations/{name}") == [
            (i, f32(row["durations"][name])) for i, row in enumerate(history)
        ]
    for node in exp.nodes:
        assert scalars(events, f"train/node_loss/{node}") == [
            (i, f32(row["train_loss"][node])) for i, row in enumerate(history)
        ]
    assert scalars(events, "nodes") == [(i, 3.0) for i in range(3)]
    assert scalars(events, "failures") == [(i, 0.0) for i in range(3)]
    # and nothing else: every tag written is one of round_scalars', with all its values
    expected: dict[str, list[tuple[int, float]]] = {}
    for index, row in enumerate(history):
        for tag, value in round_scalars(row).items():
            expected.setdefault(tag, []).append((index, f32(value)))
    assert {tag: scalars(events, tag) for tag in events.Tags()["scalars"]} == expected
    assert "validation/n_samples/global" not in expected

    # the settings (HParams and a text table), the final summary, the final model
    assert "_hparams_/session_start_info" in events.Tags()["tensors"]
    settings = text(events, "experiment/settings")
    assert "| aggregator | fedavg |" in settings and "| round_limit | 3 |" in settings
    assert "| training_args.batch_size | 20 |" in settings
    assert f"| nodes | {','.join(exp.nodes)} |" in settings
    summary = text(events, "experiment/final")
    assert "| rounds | 3 |" in summary and str(log_dir / "model.npz") in summary
    saved = load_params(log_dir / "model.npz")
    assert saved.keys() == final.keys()
    for name, value in final.items():
        assert np.array_equal(saved[name], value)


def test_the_default_log_dir_is_runs_slash_the_experiment_id(
    make_tracked_experiment, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with make_tracked_experiment("tensorboard", round_limit=1) as exp:
        exp.run()
    log_dir = tmp_path / "runs" / exp.id
    assert [p.name for p in log_dir.glob("events.out.tfevents.*")] != []
    assert (log_dir / "model.npz").is_file()
    assert scalars(read(log_dir), "train/loss") == [
        (0, np.float32(exp.history[0]["train_loss_mean"]))
    ]


def test_a_round_without_validation_has_no_validation_scalars(make_tracked_experiment, tmp_path):
    with make_tracked_experiment({"tensorboard": {"log_dir": str(tmp_path)}}, validate=2) as exp:
        exp.run()
    events = read(tmp_path)
    assert [step for step, _ in scalars(events, "validation/accuracy/global")] == [1, 2]
    assert [step for step, _ in scalars(events, "durations/validate_s")] == [1, 2]
    assert [step for step, _ in scalars(events, "train/loss")] == [0, 1, 2]


def test_an_unusable_log_dir_is_refused_before_any_round(make_tracked_experiment, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"tracker 'tensorboard': cannot create log_dir"):
        make_tracked_experiment({"tensorboard": {"log_dir": str(tmp_path / "file" / "tb")}})
    with pytest.raises(ConfigError, match=r"tracker 'tensorboard': .*log_directory"):
        make_tracked_experiment({"tensorboard": {"log_directory": str(tmp_path)}})


def test_a_node_named_global_does_not_hide_the_global_metrics():
    row = {
        "train_loss_mean": 0.5,
        "validation": {"global": {"accuracy": 0.1}},
        "validation_global": {"accuracy": 0.9, "n_samples": 10},
    }
    assert round_scalars(row) == {
        "train/loss": 0.5,
        "validation/accuracy/global": 0.9,
        "validation/accuracy/node-global": 0.1,
        "nodes": 0.0,
        "failures": 0.0,
    }


def test_the_installed_plugin_registers_it_and_imports_tensorboard_only_when_used():
    assert get_plugin_manager().trackers.owner("tensorboard") == "tensorboard"
    code = (
        "import sys\n"
        "from fedplug.plugins import get_plugin_manager\n"
        "assert 'tensorboard' in get_plugin_manager().trackers\n"
        "assert 'tensorboard' not in sys.modules, 'imported at registration'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
