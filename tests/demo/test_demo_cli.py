"""``fedplug demo``, fedplug-demo's command: its arguments, and how its errors are reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedplug.cli import main


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--rounds", "0"], "--rounds: expected a positive integer, got '0'"),
        (["demo", "--rounds", "-3"], "--rounds: expected a positive integer"),
        (["demo", "--rounds", "many"], "--rounds: expected a positive integer, got 'many'"),
        (["demo", "--nodes", "0"], "--nodes: expected a positive integer"),
        (["demo", "--workers", "0"], "--workers: expected a positive integer"),
        (["demo", "--plan", "tensorflow"], "--plan: invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_a_fedplug_error_is_reported_with_exit_status_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", "sklearn")
    status = main(["demo", "--plan", "sklearn", "--rounds", "1", "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug: error: ")
    assert "sklearn-sgd" in err and "pip install fedplug-sklearn" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_command_exits_130(capsys, monkeypatch):
    import fedplug_demo.demo

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedplug_demo.demo, "run_demo", interrupted)
    assert main(["demo", "--rounds", "1"]) == 130
    assert "fedplug: interrupted" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")
def test_track_turns_on_trackers_by_name(capsys, monkeypatch, tmp_path):
    """``--track`` (repeatable) passes the names to ``Experiment(tracking=...)``: the demo's
    rounds land in TensorBoard's event files and in an MLflow run."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    mlruns = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlruns)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # quicker to create than SQLite
    argv = ["demo", "--plan", "sklearn", "--rounds", "2", "--json", "--out", "out"]
    assert main([*argv, "--track", "tensorboard", "--track", "mlflow"]) == 0
    capsys.readouterr()
    history = json.loads((tmp_path / "out" / "results.json").read_text())["history"]
    losses = [row["train_loss_mean"] for row in history]

    [log_dir] = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (0, np.float32(losses[0])),
        (1, np.float32(losses[1])),
    ]
    client = MlflowClient(mlruns)
    [run] = client.search_runs([client.get_experiment_by_name("fedplug").experiment_id])
    assert run.info.run_name == log_dir.name and run.info.status == "FINISHED"
    metric = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in metric) == [(0, losses[0]), (1, losses[1])]


def test_track_with_an_unknown_name_is_an_error(capsys, tmp_path):
    argv = ["demo", "--plan", "sklearn", "--rounds", "1", "--out", str(tmp_path / "o")]
    status = main([*argv, "--track", "tensorbord"])
    assert status == 2
    err = capsys.readouterr().err
    assert "'tensorbord'" in err and "tensorboard" in err and "Traceback" not in err


@pytest.mark.parametrize(("transport", "dist"), [("ray", "fedplug-ray"), ("grpc", "fedplug-grpc")])
def test_a_transport_of_fedplug_not_installed_says_how_to_install_it(
    capsys, monkeypatch, tmp_path, transport, dist
):
    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", transport)
    assert main(["demo", "--transport", transport, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"fedplug: error: --transport {transport} needs {dist}: pip install {dist}\n"
    assert not (tmp_path / "o").exists()
