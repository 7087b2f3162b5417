"""Experiment trackers: what ``Experiment(tracking=...)`` turns on by name.

A tracker is contributed by a plugin through ``fedplug_register_trackers`` as a factory
``factory(experiment, **options)``; the tracker it returns may have ``round_finished``,
``experiment_finished`` and ``close``. Logging is a side effect, so a tracker that fails while
logging is reported once and turned off: the experiment and its model never wait on it.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from fedplug.errors import ConfigError, FedplugError

log = logging.getLogger("fedplug.tracking")

TRACKER_METHODS = ("round_finished", "experiment_finished", "close")


def tracking_request(tracking: Any) -> dict[str, dict[str, Any]]:
    """``tracking`` as {name: options}: from a name, a list of names, or a dict."""
    if tracking is None:
        return {}
    if isinstance(tracking, str):
        return {tracking: {}}
    if isinstance(tracking, (list, tuple)) and all(isinstance(n, str) for n in tracking):
        return {name: {} for name in tracking}
    if isinstance(tracking, dict) and all(isinstance(n, str) for n in tracking):
        request = {}
        for name, options in tracking.items():
            if options is not None and not isinstance(options, dict):
                raise ConfigError(
                    f"tracking[{name!r}] must be a dict of the tracker's options, got {options!r}"
                )
            request[name] = dict(options or {})
        return request
    raise ConfigError(
        "tracking must be a tracker's name, a list of names, or {name: {options}}, e.g. "
        f"tracking='tensorboard' or tracking={{'mlflow': {{'experiment_name': 'tcga'}}}}; got "
        f"{tracking!r}"
    )


class Trackers:
    """The experiment's trackers, called after each applied round and at the end."""

    def __init__(self, pm: Any, request: dict[str, dict[str, Any]], experiment: Any) -> None:
        self.active: dict[str, Any] = {}
        try:
            for name, options in request.items():
                factory = pm.trackers[name]
                try:
                    tracker = factory(experiment, **options)
                except TypeError as exc:
                    raise ConfigError(f"tracker {name!r}: {exc}") from None
                if not any(callable(getattr(tracker, m, None)) for m in TRACKER_METHODS):
                    raise ConfigError(
                        f"tracker {name!r} (plugin {pm.trackers.owner(name)!r}) returned "
                        f"{tracker!r}, which has none of {', '.join(TRACKER_METHODS)}"
                    )
                self.active[name] = tracker
        except BaseException:
            self.close()
            raise

    def __bool__(self) -> bool:
        return bool(self.active)

    def _call(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            function = getattr(tracker, method, None)
            if not callable(function):
                continue
            try:
                function(*args)
            except Exception as exc:
                del self.active[name]
                text = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, FedplugError):
                    text = str(exc)
                warnings.warn(
                    f"tracker {name!r} failed in {method} and is turned off for this "
                    f"experiment (training goes on): {text}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                with_close = getattr(tracker, "close", None)
                if callable(with_close):
                    try:
                        with_close()
                    except Exception:  # already failing: the warning says enough
                        log.debug("tracker %r failed to close", name, exc_info=True)

    def round_finished(self, index: int, row: dict[str, Any], experiment: Any) -> None:
        self._call("round_finished", index, row, experiment)

    def experiment_finished(self, experiment: Any) -> None:
        self._call("experiment_finished", experiment)

    def close(self) -> None:
        self._call("close")
        self.active.clear()


#: names a node cannot take in a tracker's metric names (they name the averages)
RESERVED_NODE_NAMES = ("global", "mean")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def round_metrics(row: dict[str, Any], part: Callable[[str], str] = str) -> dict[str, float]:
    """A round's history row as the ``{name: value}`` every tracker logs: ``train/loss`` (the
    sample-weighted mean) and ``train/node_loss/<node>``, ``validation/<metric>/global``,
    ``validation/<metric>/mean`` and ``validation/<metric>/<node>`` (when the round was
    validated), ``durations/<name>`` and ``durations/node_train_s/<node>``, ``nodes`` (that
    trained) and ``failures``. ``part`` maps each name part taken from the row (a node, a
    metric, a duration) to what the tracker accepts; a node named ``global`` or ``mean`` is
    logged as ``node-global``/``node-mean``."""

    def node(name: str) -> str:
        return part(f"node-{name}" if name in RESERVED_NODE_NAMES else name)

    metrics: dict[str, float | None] = {"train/loss": _number(row.get("train_loss_mean"))}
    for name, loss in (row.get("train_loss") or {}).items():
        metrics[f"train/node_loss/{node(name)}"] = _number(loss)
    for where, values in (
        ("global", row.get("validation_global")),
        ("mean", row.get("validation_mean")),
        *((node(name), m) for name, m in (row.get("validation") or {}).items()),
    ):
        for metric, value in (values or {}).items():
            if metric != "n_samples":
                metrics[f"validation/{part(metric)}/{where}"] = _number(value)
    for name, seconds in (row.get("durations") or {}).items():
        metrics[f"durations/{part(name)}"] = _number(seconds)
    for name, seconds in (row.get("node_train_s") or {}).items():
        metrics[f"durations/node_train_s/{node(name)}"] = _number(seconds)
    metrics["nodes"] = float(len(row.get("nodes") or ()))
    metrics["failures"] = float(len(row.get("failures") or ()))
    return {name: value for name, value in metrics.items() if value is not None}


def experiment_settings(experiment: Any, part: Callable[[str], str] = str) -> dict[str, Any]:
    """The experiment's settings, flat, as trackers log them: plan, aggregator, rounds, nodes,
    tags, seed, researcher optimizer, secure aggregation, transport, and the training and model
    arguments (``training_args.<name>``, ``model_args.<part(name)>``); unset ones left out."""
    optimizer = getattr(experiment, "agg_optimizer", None)
    secagg = getattr(experiment, "secagg", None)
    config = getattr(experiment, "config", None)
    nodes = getattr(experiment, "nodes", None) or ()
    settings: dict[str, Any] = {
        "experiment_id": experiment.id,
        "plan": experiment.plan_class.__qualname__,
        "aggregator": getattr(experiment.aggregator, "name", type(experiment.aggregator).__name__),
        "round_limit": experiment.round_limit,
        "nodes": ",".join(nodes),
        "n_nodes": len(nodes),
        "tags": ",".join(experiment.tags),
        "seed": experiment.seed,
        "agg_optimizer": optimizer.to_dict() if optimizer is not None else None,
        "secagg": getattr(secagg, "name", None),
        "transport": getattr(config, "transport", None),
    }
    for key, value in experiment.training_args.to_dict().items():
        settings[f"training_args.{key}"] = value
    for key, value in experiment.model_args.items():
        settings[f"model_args.{part(key)}"] = value
    return {key: value for key, value in settings.items() if value is not None}
