"""An experiment's configuration: what ``fedplug_validate_experiment`` sees, and the checks and
look-ups that turn an :class:`~fedplug.experiment.Experiment`'s arguments into it.

Everything here happens before any transport is opened or any node contacted.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedplug.aggregators import Aggregator
from fedplug.errors import ConfigError
from fedplug.optimizer import Optimizer
from fedplug.plan import TrainingArgs, TrainingPlan
from fedplug.plugins import FedplugPluginManager
from fedplug.secagg import SecAggScheme

FAILURE_POLICIES = ("fail", "skip")

#: keywords Experiment took before transports came from plugins; they are forwarded to
#: ``transport_options`` with a DeprecationWarning for one release
LEGACY_TRANSPORT_KEYWORDS = (
    "server",
    "tls",
    "credentials",
    "node_auth",
    "client_ca",
    "wait_nodes",
    "wait_timeout",
    "request_timeout",
)


@dataclass
class ExperimentConfig:
    """An experiment's resolved configuration, as ``fedplug_validate_experiment`` sees it.

    ``nodes`` holds the names of the in-process nodes the experiment was given, or None when its
    transport finds them (validation runs before any node is contacted)."""

    plan_class: type[TrainingPlan]
    plan: TrainingPlan
    model_args: dict[str, Any]
    training_args: TrainingArgs
    aggregator: Aggregator
    agg_optimizer: Optimizer | None
    node_optimizer: Any
    nodes: list[str] | None
    tags: list[str]
    round_limit: int | None
    secagg: SecAggScheme | None = None
    transport: str | None = None
    plugin_manager: FedplugPluginManager | None = None


def check_positive(what: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def check_sample_size(value: Any) -> int | float | None:
    """``clients_per_round``: None, a positive count, or a fraction in (0, 1]."""
    count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    fraction = isinstance(value, float) and 0 < value <= 1
    if value is not None and not (count or fraction):
        raise ConfigError(
            f"clients_per_round must be a count (int >= 1) or a fraction (0 < float <= 1), got "
            f"{value!r}"
        )
    return value


def sample_size(clients_per_round: int | float | None, n_nodes: int) -> int | None:
    """How many of ``n_nodes`` a round asks under ``clients_per_round`` (None: all of them);
    a fraction is rounded up, to one node at least."""
    size = check_sample_size(clients_per_round)
    if isinstance(size, float):
        return max(1, math.ceil(size * n_nodes))
    return size


def validation_period(validate: bool | int | None, test_ratio: float) -> int:
    if validate is None:
        return 1 if test_ratio > 0 else 0
    if isinstance(validate, bool):
        return 1 if validate else 0
    if isinstance(validate, int) and validate >= 0:
        return validate
    raise ConfigError(f"validate must be a bool or a non-negative int, got {validate!r}")


def resolve_plan(pm: FedplugPluginManager, training_plan: Any, model_class: Any) -> type:
    if training_plan is not None and model_class is not None and training_plan is not model_class:
        raise ConfigError("give either training_plan or model_class (its other name), not both")
    plan = training_plan if training_plan is not None else model_class
    if plan is None:
        raise ConfigError(
            "an experiment needs a training_plan (a TrainingPlan subclass or a registered name)"
        )
    if isinstance(plan, str):
        return pm.training_plans[plan]
    if inspect.isclass(plan) and issubclass(plan, TrainingPlan):
        return plan
    raise ConfigError(
        f"training_plan must be a TrainingPlan subclass or a registered plan name, got {plan!r}"
    )


def resolve_aggregator(pm: FedplugPluginManager, aggregator: Any) -> Aggregator:
    if isinstance(aggregator, str):
        aggregator = pm.aggregators[aggregator]()
    if not isinstance(aggregator, Aggregator):
        raise ConfigError(
            f"aggregator must be a registered name or a fedplug Aggregator, got {aggregator!r}"
        )
    return aggregator


def check_agg_optimizer(agg_optimizer: Any) -> Optimizer | None:
    if agg_optimizer is not None and not isinstance(agg_optimizer, Optimizer):
        raise ConfigError(
            f"agg_optimizer must be a fedplug.Optimizer, got {type(agg_optimizer).__name__}; "
            "researcher-side optimization only goes through fedplug.Optimizer "
            "(e.g. Optimizer(lr=1.0, modules=['momentum']))"
        )
    return agg_optimizer


def resolve_secagg(pm: FedplugPluginManager, secagg: Any) -> SecAggScheme | None:
    """A secure-aggregation scheme from ``Experiment(secagg=...)``: True (the scheme the
    installed plugins provide, when there is one), a registered name, a scheme, or a scheme's
    settings object (whose ``scheme`` attribute names it)."""
    if secagg is False or secagg is None:
        return None
    if secagg is True:
        names = sorted(pm.secagg_schemes)
        if len(names) != 1:
            raise ConfigError(
                "secagg=True needs exactly one installed secure-aggregation scheme, found "
                f"{names or 'none'}; "
                + (
                    "name one, e.g. secagg=" + repr(names[0])
                    if names
                    else "install a secure-aggregation plugin (pip install fedplug-secagg)"
                )
            )
        secagg = names[0]
    if isinstance(secagg, str):
        return pm.secagg_schemes[secagg]()
    if isinstance(secagg, SecAggScheme):
        return secagg
    if isinstance(getattr(secagg, "scheme", None), str):  # a scheme's settings object
        return pm.secagg_schemes[secagg.scheme](secagg)
    raise ConfigError(
        f"secagg must be True, a registered scheme name or a scheme's settings, got {secagg!r}"
    )


def transport_request(
    transport: Any,
    options: dict[str, Any] | None,
    legacy: dict[str, Any],
    workers: int | None,
    processes: bool,
) -> tuple[Any, dict[str, Any]]:
    """The transport (a registered name or an object) and its options, from an Experiment's
    arguments; the keywords of earlier releases are moved into the options with a warning."""
    options = dict(options or {})
    given = {key: value for key, value in legacy.items() if value is not _UNSET}
    if given:
        warnings.warn(
            f"Experiment({', '.join(f'{k}=...' for k in given)}) is deprecated: give the "
            "transport's settings as transport_options={"
            + ", ".join(f"{k!r}: ..." for k in given)
            + "}",
            DeprecationWarning,
            stacklevel=3,
        )
        clash = sorted(set(given) & set(options))
        if clash:
            raise ConfigError(f"{clash} given both as keywords and in transport_options")
        options.update(given)
    if workers is not None or processes:
        if transport != "local":
            raise ConfigError(
                "workers and processes set how the local transport runs in-process nodes; "
                f"transport {transport!r} does not take them"
            )
        for key, value in (("workers", workers), ("processes", processes)):
            if key in options:
                raise ConfigError(f"{key!r} given both as a keyword and in transport_options")
            options[key] = value
    if not isinstance(transport, str) and options:
        raise ConfigError(
            "transport_options configure a transport built by name; a transport object comes "
            "configured"
        )
    return transport, options


def build_transport(
    pm: FedplugPluginManager,
    name: str,
    nodes: Any,
    tags: list[str],
    min_nodes: int,
    options: dict[str, Any],
) -> Any:
    """The transport registered as ``name``, built by its factory with ``options`` (an option
    its factory does not take is refused here, naming the ones it does)."""
    factory = pm.transports[name]
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature: trust it
        parameters = None
    if parameters is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        known = sorted(set(parameters) - {"nodes", "tags", "min_nodes"})
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {name} transport option(s) {unknown}; known: {', '.join(known) or 'none'}"
            )
    return factory(nodes=nodes, tags=tags, min_nodes=min_nodes, **options)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


#: the default of a deprecated keyword: tells "not given" from any value
_UNSET: Any = _Unset()


def jsonable_options(options: dict[str, Any]) -> dict[str, Any]:
    """Transport options as a checkpoint stores them (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ConfigError(
            f"transport option {value!r} cannot be saved in a checkpoint; give a plain value "
            "(a string, number, path, or a list or dict of them)"
        )

    return {key: plain(value) for key, value in options.items()}
