"""The ``mlflow`` tracker: an experiment as one MLflow run.

The run is created when the experiment is built (a tracking store that cannot be reached or an
experiment name that cannot be used is a :class:`ConfigError` then, before any round). The first
round logs the experiment's settings as parameters; each applied round logs its metrics
(:func:`round_metrics`) in one batch at ``step = round_index``; :meth:`Experiment.run`'s end logs
the final model (``model/model.npz``, :meth:`Experiment.save_model`'s file) and the history
(``history.json``) as artifacts and ends the run FINISHED. An experiment closed before its run
ends leaves the run FAILED (closed while an exception goes up) or KILLED (interrupted, or
closed early), never RUNNING; so does one never closed, when the interpreter exits.

It talks to the store through its own ``MlflowClient``, never through MLflow's global active run:
experiments tracked at once in one process each keep their run.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import re
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedplug.errors import ConfigError
from fedplug.experiment.tracking import experiment_settings
from fedplug.experiment.tracking import round_metrics as core_round_metrics

#: MLflow's batch limits (mlflow.utils.validation)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


def _segment(name: Any) -> str:
    """``name`` as one segment of an MLflow metric name: alphanumerics, ``_ - .`` and spaces
    only (no slash: a node's name is one segment), never ``.`` or ``..``."""
    text = re.sub(r"[^\w\-. ]", "_", str(name))
    return "_" * len(text) if text.strip(".") == "" else text


def round_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A round's history row as ``{metric: value}``: core's :func:`round_metrics` names (those
    fedplug-tensorboard gives its scalars), each part taken from the row made a valid MLflow
    name segment."""
    return core_round_metrics(row, _segment)


def experiment_params(experiment: Any) -> dict[str, str]:
    """The experiment's settings (core's :func:`experiment_settings`) as MLflow parameters:
    JSON for anything nested."""
    settings = experiment_settings(experiment, _segment)
    return {key: _text(value) for key, value in settings.items()}


def _text(value: Any) -> str:
    if isinstance(value, numbers.Number) and not isinstance(value, bool):  # NumPy's too
        value = value.item() if hasattr(value, "item") else value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_LENGTH]


def _end_run(client: MlflowClient, run_id: str, state: dict[str, bool], status: str) -> None:
    if not state["ended"]:
        client.set_terminated(run_id, status)
        state["ended"] = True


def _end_abandoned(client: MlflowClient, run_id: str, state: dict[str, bool]) -> None:
    """A tracker never closed (its experiment dropped, or the interpreter exiting)."""
    with contextlib.suppress(Exception):  # at exit, the store may be gone: nothing more to do
        _end_run(client, run_id, state, "KILLED")


class MlflowTracker:
    """``Experiment(tracking="mlflow")`` or ``tracking={"mlflow": {options}}``.

    :param tracking_uri: the tracking store: a server (``http://...``), ``databricks``, a local
        database (``sqlite:///mlflow.db``) or file store (``file:./mlruns``, which MLflow 3
        accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``). Default: MLflow's own
        (``mlflow.set_tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
        in the current directory).
    :param experiment_name: the MLflow experiment the run goes to, created when missing.
    :param run_name: the run's name (default: the fedplug experiment's id).
    :param tags: more tags for the run (``{name: value}``); the run is always tagged
        ``fedplug.experiment_id``.
    """

    def __init__(
        self,
        experiment: Any,
        tracking_uri: str | None = None,
        experiment_name: str = "fedplug",
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> None:
        self.tracking_uri = str(tracking_uri) if tracking_uri else mlflow.get_tracking_uri()
        tags = {
            "fedplug.experiment_id": experiment.id,
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        try:
            self.client = MlflowClient(self.tracking_uri)
            self.experiment_id = self._experiment(experiment_name)
            run = self.client.create_run(
                self.experiment_id, run_name=run_name or experiment.id, tags=tags
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"tracker 'mlflow': cannot start a run in experiment {experiment_name!r} of "
                f"tracking store {self.tracking_uri!r}: {type(exc).__name__}: {exc}"
            ) from None
        self.run_id: str = run.info.run_id
        self._state = {"ended": False}
        self._params_logged = False
        self._finalizer = weakref.finalize(
            self, _end_abandoned, self.client, self.run_id, self._state
        )

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # made meanwhile by another process
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise ConfigError(
                f"tracker 'mlflow': experiment {name!r} is deleted in {self.tracking_uri!r}; "
                "restore it (mlflow experiments restore) or choose another experiment_name"
            )
        return found.experiment_id

    @property
    def status(self) -> str:
        """The run's status in the store (RUNNING, FINISHED, FAILED, KILLED)."""
        return self.client.get_run(self.run_id).info.status

    def _log_params(self, experiment: Any) -> None:
        if self._params_logged:
            return
        params = [Param(k, v) for k, v in experiment_params(experiment).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
        self._params_logged = True

    def round_finished(self, round_index: int, summary: dict[str, Any], experiment: Any) -> None:
        if self._state["ended"]:  # run() again after a finished run(): the run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            self._state["ended"] = False
        self._log_params(experiment)
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, round_index) for name, value in round_metrics(summary).items()
        ]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH]
            )

    def experiment_finished(self, experiment: Any) -> None:
        self._log_params(experiment)
        with tempfile.TemporaryDirectory(prefix="fedplug-mlflow-") as tmp:
            path = experiment.save_model(Path(tmp) / "model.npz")
            self.client.log_artifact(self.run_id, str(path), artifact_path="model")
        history = json.dumps(experiment.history, indent=1, default=str)
        self.client.log_text(self.run_id, history, "history.json")
        self.client.set_tag(self.run_id, "fedplug.rounds", str(experiment.round_index))
        _end_run(self.client, self.run_id, self._state, "FINISHED")

    def close(self) -> None:
        """End the run if :meth:`experiment_finished` did not: FAILED when an exception is going
        up (the experiment closed by ``with`` or ``finally``), KILLED otherwise (Ctrl-C, or the
        experiment closed before its run ended)."""
        if not self._state["ended"]:
            error = sys.exc_info()[1]
            status = "FAILED" if isinstance(error, Exception) else "KILLED"
            _end_run(self.client, self.run_id, self._state, status)
        self._finalizer.detach()
