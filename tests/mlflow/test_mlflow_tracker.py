"""fedplug-mlflow: ``Experiment(tracking="mlflow")`` makes one MLflow run per experiment, which
MLflow's own client (``MlflowClient``) reads back from the store: the settings, every round's
metrics with the experiment's values, the final model and the history, and a final status that
is never RUNNING."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fedplug import ConfigError, load_params
from fedplug.plugins import get_plugin_manager
from fedplug_mlflow.tracker import round_metrics

# SQLAlchemy's notice about MLflow's own code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store (MLflow 3's default kind) for the module: creating its tables
    takes seconds. Its artifacts go to ``./mlruns`` as the store resolves it: in its folder."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with contextlib.chdir(folder):
        MlflowClient(uri).search_experiments()  # creates the tables here, once
    return uri


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """MLflow's defaults are relative to the current directory (``./mlflow.db``, ``./mlruns``):
    each test runs in its own folder, never in the repository."""
    monkeypatch.chdir(tmp_path)


def the_run(uri: str, experiment_id: str, experiment_name: str = "fedplug"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment_name)
    [run] = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`fedplug.experiment_id` = '{experiment_id}'"
    )
    return client, run


def history_of(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def test_a_run_holds_the_settings_every_round_and_the_final_model(
    make_tracked_experiment, store, tmp_path
):
    tracking = {"mlflow": {"tracking_uri": store, "experiment_name": "tcga"}}
    with make_tracked_experiment(tracking) as exp:
        history = exp.run()
        final = {name: value.copy() for name, value in exp.global_params.items()}
    client, run = the_run(store, exp.id, "tcga")
    assert run.info.status == "FINISHED" and run.info.run_name == exp.id

    params = run.data.params
    assert params["plan"] == "LogisticRegressionPlan" and params["aggregator"] == "fedavg"
    assert params["round_limit"] == "3" and params["nodes"] == ",".join(exp.nodes)
    assert params["n_nodes"] == "3" and params["seed"] == "0"
    assert params["training_args.batch_size"] == "20"
    assert params["training_args.test_ratio"] == "0.25"
    assert params["model_args.n_features"] == "4"
    assert params["experiment_id"] == exp.id

    # the headline series, value by value, at step = round index
    run_id = run.info.run_id
    assert history_of(client, run_id, "train/loss") == [
        (i, row["train_loss_mean"]) for i, row in enumerate(history)
    ]
    for node in exp.nodes:
        assert history_of(client, run_id, f"validation/accuracy/{node}") == [
            (i, row["validation"][node]["accuracy"]) for i, row in enumerate(history)
        ]
    assert history_of(client, run_id, "validation/loss/global") == [
        (i, row["validation_global"]["loss"]) for i, row in enumerate(history)
    ]
    assert history_of(client, run_id, "durations/round_s") == [
        (i, row["durations"]["round_s"]) for i, row in enumerate(history)
    ]
    # and every metric: round_metrics' names, each with all its values
    expected: dict[str, list[tuple[int, float]]] = {}
    for index, row in enumerate(history):
        for name, value in round_metrics(row).items():
            expected.setdefault(name, []).append((index, value))
    assert set(run.data.metrics) == set(expected)
    assert {name: history_of(client, run_id, name) for name in expected} == expected

    # the artifacts: the final model as save_model writes it, and the history
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["history.json", "model"]
    model = client.download_artifacts(run_id, "model/model.npz", str(tmp_path))
    saved = load_params(model)
    assert saved.keys() == final.keys()
    for name, value in final.items():
        assert np.array_equal(saved[name], value)
    logged = json.loads(
        Path(client.download_artifacts(run_id, "history.json", str(tmp_path))).read_text()
    )
    assert logged == json.loads(json.dumps(history))
    assert run.data.tags["fedplug.rounds"] == "3"


def test_the_defaults_are_mlflows_store_experiment_fedplug_and_the_experiment_id(
    make_tracked_experiment, store, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with make_tracked_experiment("mlflow", round_limit=1) as exp:
        exp.run()
    _, run = the_run(store, exp.id)  # experiment "fedplug"
    assert run.info.run_name == exp.id and run.info.status == "FINISHED"
    with make_tracked_experiment(
        {"mlflow": {"run_name": "baseline", "tags": {"site": "lyon"}}}, round_limit=1
    ) as exp:
        exp.run()
    _, run = the_run(store, exp.id)
    assert run.info.run_name == "baseline" and run.data.tags["site"] == "lyon"


def test_a_file_store_is_written_and_read_back_when_mlflow_allows_it(
    make_tracked_experiment, tmp_path, monkeypatch
):
    uri = (tmp_path / "mlruns").as_uri()  # file:///.../mlruns
    with pytest.raises(ConfigError, match=r"tracker 'mlflow': .*MLFLOW_ALLOW_FILE_STORE"):
        make_tracked_experiment({"mlflow": {"tracking_uri": uri}})
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with make_tracked_experiment({"mlflow": {"tracking_uri": uri}}, round_limit=2) as exp:
        history = exp.run()
    client, run = the_run(uri, exp.id)
    assert run.info.status == "FINISHED"
    assert history_of(client, run.info.run_id, "validation/accuracy/global") == [
        (i, row["validation_global"]["accuracy"]) for i, row in enumerate(history)
    ]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.npz"]


@pytest.mark.parametrize(
    ("stop", "status"),
    [(RuntimeError("power cut"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (None, "KILLED")],
)
def test_a_run_stopped_before_its_end_is_failed_or_killed(
    make_tracked_experiment, store, stop, status
):
    expected = pytest.raises(type(stop)) if stop is not None else contextlib.nullcontext()
    with expected, make_tracked_experiment({"mlflow": {"tracking_uri": store}}) as exp:
        exp.run_once()
        if stop is not None:
            raise stop
    client, run = the_run(store, exp.id)
    assert run.info.status == status
    assert history_of(client, run.info.run_id, "train/loss") == [
        (0, exp.history[0]["train_loss_mean"])
    ]
    assert client.list_artifacts(run.info.run_id) == []  # no final model


def test_an_experiment_never_closed_leaves_its_run_killed(make_tracked_experiment, store):
    exp = make_tracked_experiment({"mlflow": {"tracking_uri": store}})
    exp.run_once()
    experiment_id = exp.id
    del exp
    gc.collect()
    _, run = the_run(store, experiment_id)
    assert run.info.status == "KILLED"


def test_running_on_after_a_finished_run_reopens_it(make_tracked_experiment, store):
    with make_tracked_experiment({"mlflow": {"tracking_uri": store}}) as exp:
        exp.run(2)
        assert the_run(store, exp.id)[1].info.status == "FINISHED"
        exp.run(1)
    client, run = the_run(store, exp.id)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in history_of(client, run.info.run_id, "train/loss")] == [0, 1, 2]


def test_an_unusable_store_experiment_or_option_is_refused_before_any_round(
    make_tracked_experiment, store
):
    with pytest.raises(ConfigError, match=r"tracker 'mlflow': cannot start a run .*'bogus://x'"):
        make_tracked_experiment({"mlflow": {"tracking_uri": "bogus://x"}})
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ConfigError, match=r"experiment 'gone' is deleted .*restore it"):
        make_tracked_experiment({"mlflow": {"tracking_uri": store, "experiment_name": "gone"}})
    with pytest.raises(ConfigError, match=r"tracker 'mlflow': .*experiment"):
        make_tracked_experiment({"mlflow": {"experiment": "tcga"}})


def test_node_and_metric_names_become_valid_mlflow_names(store):
    row = {
        "train_loss_mean": 0.5,
        "train_loss": {"lyon/a:b": 0.4, "..": 0.6, "global": 0.7},
        "validation_global": {"f1:macro": 0.8, "n_samples": 3},
    }
    metrics = round_metrics(row)
    assert metrics == {
        "train/loss": 0.5,
        "train/node_loss/lyon_a_b": 0.4,
        "train/node_loss/__": 0.6,
        "train/node_loss/node-global": 0.7,
        "validation/f1_macro/global": 0.8,
        "nodes": 0.0,
        "failures": 0.0,
    }
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("names"))
    for name, value in metrics.items():
        client.log_metric(run.info.run_id, name, value, step=0)  # MLflow accepts each name
    assert client.get_run(run.info.run_id).data.metrics == metrics


def test_the_installed_plugin_registers_it_and_imports_mlflow_only_when_used():
    assert get_plugin_manager().trackers.owner("mlflow") == "mlflow"
    code = (
        "import sys\n"
        "from fedplug.plugins import get_plugin_manager\n"
        "assert 'mlflow' in get_plugin_manager().trackers\n"
        "assert 'mlflow' not in sys.modules, 'imported at registration'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
