"""Experiment trackers: what ``Experiment(tracking=...)`` turns on by name.

A tracker is contributed by a plugin through ``fedplug_register_trackers`` as a factory
``factory(experiment, **options)``; the tracker it returns may have ``round_finished``,
``experiment_finished`` and ``close``. Logging is a side effect, so a tracker that fails while
logging is reported once and turned off: the experiment and its model never wait on it.
"""

from __future__ import annotations

import logging
import warnings
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
