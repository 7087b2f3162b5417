"""The researcher side: an :class:`Experiment` and its round loop.

A round sends the global parameters to the selected nodes, folds their replies into the aggregator
as they arrive, steps the global model (directly, or through a researcher-side
:class:`fedplug.Optimizer`), optionally validates it on the nodes' held-out splits, and records a
history row. A node that fails is handled by ``on_node_failure``; a failed round leaves the global
model of the last good round untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedplug import messages as msg
from fedplug.aggregators import Aggregator
from fedplug.errors import (
    AggregationError,
    ConfigError,
    FedplugError,
    MessageError,
    NodeError,
    PlanError,
    SecAggError,
    describe,
)
from fedplug.node import Node, local_nodes
from fedplug.optimizer import Optimizer, pack_aux_vars, pack_state, unpack_state
from fedplug.plan import Params, TrainingArgs, TrainingPlan, params_spec
from fedplug.planref import load_plan_class, make_plan_ref
from fedplug.plugins import FedplugPluginManager, get_plugin_manager
from fedplug.secagg import SecAggScheme
from fedplug.transport.local import LocalTransport

log = logging.getLogger("fedplug.experiment")

_FAILURE_POLICIES = ("fail", "skip")


@dataclass
class ExperimentConfig:
    """An experiment's resolved configuration, as ``fedplug_validate_experiment`` sees it."""

    plan_class: type[TrainingPlan]
    plan: TrainingPlan
    model_args: dict[str, Any]
    training_args: TrainingArgs
    aggregator: Aggregator
    agg_optimizer: Optimizer | None
    node_optimizer: Any
    nodes: list[str]
    tags: list[str]
    round_limit: int | None
    secagg: SecAggScheme | None = None


class Experiment:
    """A federated training experiment.

    :param nodes: in-process :class:`Node` objects (or a transport); by default, every node alive
        in this process whose datasets match ``tags``.
    :param tags: select nodes (and, on each node, the dataset) carrying all these tags.
    :param training_plan: a :class:`TrainingPlan` subclass or the name of a registered plan.
        ``model_class`` is accepted as another name (Fed-BioMed's).
    :param training_args: see :class:`TrainingArgs`.
    :param round_limit: number of rounds :meth:`run` performs.
    :param aggregator: a registered name (``"fedavg"``, ``"median"``) or an :class:`Aggregator`.
    :param agg_optimizer: researcher-side :class:`fedplug.Optimizer` stepping the pseudo-gradient
        ``global - aggregated`` (FedAvgM, FedAdam, ...); None applies the aggregate directly.
    :param model_args: passed to the plan's constructor, on the researcher and on every node.
    :param seed: seeds the initial model and, unless ``training_args`` has one, node training.
    :param validate: evaluate the global model on each node's held-out split after each round;
        an int ``k`` validates every ``k`` rounds and after the last. By default (None), validate
        each round when ``test_ratio > 0``; pass True for datasets that come with their own test
        split (FLamby's), with ``test_ratio=0``.
    :param on_node_failure: ``"fail"`` stops at the first failing node, ``"skip"`` continues with
        the others as long as ``min_nodes`` replied.
    :param workers: local nodes trained at once (threads, or processes with ``processes``); by
        default nodes take turns in this process, the fastest on small machines.
    :param processes: run local nodes in worker processes (default: one per CPU core).
    :param progress: show a progress bar per round (default: when stderr is a terminal).
    :param transport: ``"local"`` (nodes in this process or its worker processes, the default),
        ``"grpc"`` (a server at ``server`` that node processes connect to, see
        :class:`fedplug.transport.grpc.GrpcTransport`), or a transport object.
    :param server: with ``transport="grpc"``: the address to listen on, ``host:port``.
    :param tls: with ``transport="grpc"``: a certs directory (``fedplug certs init``; its
        ``credentials.json`` lists the nodes' tokens) or ``(cert, key)`` PEM paths; None serves
        plaintext on loopback only.
    :param credentials: with ``transport="grpc"``: node tokens' digests (a dict, a certs directory
        or a ``credentials.json``), when they are not in the ``tls`` directory.
    :param node_auth: with ``transport="grpc"``: ``"token"`` (default) or ``"certificate"``:
        nodes present client certificates signed by ``client_ca`` (default: the ``tls``
        directory's ``ca.pem``) and pinned in the credentials (mutual TLS).
    :param wait_nodes: with ``transport="grpc"``: how many nodes with ``tags`` to wait for
        (default ``min_nodes``), or their names.
    :param wait_timeout: seconds to wait for them before a :class:`ConfigError` that lists the
        connected nodes and their tags.
    :param request_timeout: with ``transport="grpc"``: seconds a node may take to answer one
        request; a node that disconnects or stops sending heartbeats fails at once anyway.
    :param checkpoint_dir: save the experiment there after each round (atomically: the model,
        the researcher-side optimizer's state, the history, the round index and the settings);
        :meth:`load_checkpoint` resumes. The last ``keep_checkpoints`` are kept.
    :param secagg: secure aggregation: True (the ``masking`` scheme with its defaults), a
        registered scheme name, or a scheme's settings object (e.g.
        ``fedplug_secagg.SecAggConfig(...)``); the researcher then learns only the weighted
        average of the nodes' parameters. Needs a weighted-sum aggregator (FedAverage).
    """

    def __init__(
        self,
        nodes: list[Node] | Any | None = None,
        tags: list[str] | str | None = None,
        training_plan: type[TrainingPlan] | str | None = None,
        training_args: dict[str, Any] | TrainingArgs | None = None,
        round_limit: int | None = None,
        aggregator: str | Aggregator = "fedavg",
        agg_optimizer: Optimizer | None = None,
        model_args: dict[str, Any] | None = None,
        seed: int | None = None,
        *,
        model_class: type[TrainingPlan] | str | None = None,
        validate: bool | int | None = None,
        on_node_failure: str = "fail",
        min_nodes: int = 1,
        workers: int | None = None,
        processes: bool = False,
        progress: bool | None = None,
        plugin_manager: FedplugPluginManager | None = None,
        experiment_id: str | None = None,
        secagg: bool | str | Any = False,
        transport: str | Any = "local",
        server: str = "0.0.0.0:50051",
        tls: str | Path | tuple[str | Path, str | Path] | None = None,
        credentials: dict[str, str] | str | Path | None = None,
        node_auth: str = "token",
        client_ca: str | Path | None = None,
        wait_nodes: int | list[str] | None = None,
        wait_timeout: float = 120.0,
        request_timeout: float | None = None,
        checkpoint_dir: str | Path | None = None,
        keep_checkpoints: int = 2,
    ) -> None:
        self.pm = plugin_manager or get_plugin_manager()
        self.id = experiment_id or uuid.uuid4().hex
        self.tags = [tags] if isinstance(tags, str) else list(tags or [])
        self.round_limit = _check_rounds("round_limit", round_limit, allow_none=True)
        self.seed = seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
        args = TrainingArgs.from_dict(training_args)
        if args.seed is None and seed is not None:
            args = TrainingArgs.from_dict({**args.to_dict(), "seed": seed})
        self.training_args = args
        self.model_args = dict(model_args or {})
        self.validate_every = _validation_period(validate, self.training_args.test_ratio)
        if on_node_failure not in _FAILURE_POLICIES:
            raise ConfigError(
                f"on_node_failure must be one of {_FAILURE_POLICIES}, got {on_node_failure!r}"
            )
        self.on_node_failure = on_node_failure
        self.min_nodes = _check_rounds("min_nodes", min_nodes)
        self.progress = sys.stderr.isatty() if progress is None else progress

        self.plan_class = self._resolve_plan(training_plan, model_class)
        self.aggregator = self._resolve_aggregator(aggregator)
        if agg_optimizer is not None and not isinstance(agg_optimizer, Optimizer):
            raise ConfigError(
                f"agg_optimizer must be a fedplug.Optimizer, got {type(agg_optimizer).__name__}; "
                "researcher-side optimization only goes through fedplug.Optimizer "
                "(e.g. Optimizer(lr=1.0, modules=['momentum']))"
            )
        self.agg_optimizer = agg_optimizer
        self.secagg = self._resolve_secagg(secagg)

        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_checkpoints = _check_rounds("keep_checkpoints", keep_checkpoints)
        self._transport_settings: dict[str, Any] = {"kind": "local"}
        given = None  # a transport object the caller made is the caller's to close
        if transport == "grpc":
            self._transport_settings = {
                "kind": "grpc",
                "server": server,
                "tls": [str(p) for p in tls] if isinstance(tls, tuple) else tls and str(tls),
                "credentials": str(credentials) if isinstance(credentials, (str, Path)) else None,
                "node_auth": node_auth,
                "client_ca": None if client_ca is None else str(client_ca),
                "wait_nodes": wait_nodes,
                "wait_timeout": wait_timeout,
                "request_timeout": request_timeout,
            }
            if nodes is not None:
                raise ConfigError(
                    "with transport='grpc', nodes connect to the server: give wait_nodes (a count "
                    "or node names) instead of nodes"
                )
            auth = {"credentials": credentials, "node_auth": node_auth, "client_ca": client_ca}
            nodes = self._grpc_transport(
                server, tls, auth, wait_nodes, wait_timeout, request_timeout
            )
        elif transport != "local":
            if nodes is not None:
                raise ConfigError("give either nodes or a transport object, not both")
            nodes = given = transport
        elif nodes is not None and not isinstance(nodes, (list, tuple, Node)):
            given = nodes
        self.transport = self._resolve_transport(nodes, workers, processes)
        self._owns_transport = self.transport is not given
        try:
            self._configure(seed)
        except BaseException:
            if self._owns_transport:
                self.transport.close()
            raise

    def _grpc_transport(
        self,
        server: str,
        tls: Any,
        auth: dict[str, Any],
        wait_nodes: int | list[str] | None,
        wait_timeout: float,
        request_timeout: float | None,
    ) -> Any:
        from fedplug.transport.grpc import GrpcTransport

        transport = GrpcTransport(server, tls=tls, request_timeout=request_timeout, **auth)
        try:
            if isinstance(wait_nodes, (list, tuple)):
                transport.wait_for_nodes(self.tags, names=wait_nodes, timeout=wait_timeout)
            else:
                count = wait_nodes if wait_nodes is not None else self.min_nodes
                transport.wait_for_nodes(self.tags, count=count, timeout=wait_timeout)
        except BaseException:
            transport.close()
            raise
        return transport

    def _configure(self, seed: int | None) -> None:
        self.nodes = self._select_nodes()

        self.plan_class.init_seed(seed)
        try:
            self._plan = self.plan_class(self.model_args)
            initial = self._plan.get_parameters()
        except FedplugError:
            raise
        except Exception as exc:
            raise PlanError(
                f"building {self.plan_class.__qualname__}(model_args={self.model_args!r}) "
                f"failed: {describe(exc)}"
            ) from exc
        self._plan.plugin_manager = self.pm
        self._global: Params = {k: np.asarray(v) for k, v in initial.items()}
        self._plan_dirty = False
        self._adopt(self._global)  # held once, in the plan's memory
        self.plan_ref = make_plan_ref(
            self.plan_class, self._plan.dependencies, self.pm.training_plans
        )

        self.config = ExperimentConfig(
            plan_class=self.plan_class,
            plan=self._plan,
            model_args=self.model_args,
            training_args=self.training_args,
            aggregator=self.aggregator,
            agg_optimizer=self.agg_optimizer,
            node_optimizer=self._plan.node_optimizer(),
            nodes=list(self.nodes),
            tags=self.tags,
            round_limit=self.round_limit,
            secagg=self.secagg,
        )
        self.pm.hook.fedplug_validate_experiment(config=self.config)
        self.history: list[dict[str, Any]] = []
        self.round_index = 0

    # -- configuration --------------------------------------------------------------------------
    def _resolve_plan(self, training_plan: Any, model_class: Any) -> type[TrainingPlan]:
        if (
            training_plan is not None
            and model_class is not None
            and training_plan is not model_class
        ):
            raise ConfigError("give either training_plan or model_class (its other name), not both")
        plan = training_plan if training_plan is not None else model_class
        if plan is None:
            raise ConfigError(
                "an experiment needs a training_plan (a TrainingPlan subclass or a registered name)"
            )
        if isinstance(plan, str):
            return self.pm.training_plans[plan]
        if inspect.isclass(plan) and issubclass(plan, TrainingPlan):
            return plan
        raise ConfigError(
            f"training_plan must be a TrainingPlan subclass or a registered plan name, got {plan!r}"
        )

    def _resolve_aggregator(self, aggregator: Any) -> Aggregator:
        if isinstance(aggregator, str):
            aggregator = self.pm.aggregators[aggregator]()
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(
                f"aggregator must be a registered name or a fedplug Aggregator, got {aggregator!r}"
            )
        return aggregator

    def _resolve_secagg(self, secagg: Any) -> SecAggScheme | None:
        if secagg is False or secagg is None:
            return None
        if secagg is True:
            secagg = "masking"
        if isinstance(secagg, str):
            scheme = self.pm.secagg_schemes[secagg]()
        elif isinstance(secagg, SecAggScheme):
            scheme = secagg
        elif isinstance(getattr(secagg, "scheme", None), str):  # a scheme's settings object
            scheme = self.pm.secagg_schemes[secagg.scheme](secagg)
        else:
            raise ConfigError(
                f"secagg must be True, a registered scheme name or a scheme's settings, got "
                f"{secagg!r}"
            )
        if not self.aggregator.weighted_sum:
            raise SecAggError(
                f"secure aggregation computes only a weighted sum of the nodes' updates, but "
                f"aggregator {self.aggregator.name!r} needs each update (robust aggregators see "
                "individual models); use aggregator='fedavg' or turn secagg off"
            )
        return scheme

    def _resolve_transport(self, nodes: Any, workers: int | None, processes: bool) -> Any:
        if nodes is None:
            nodes = [
                node for node in local_nodes() if any(d.matches(self.tags) for d in node.datasets)
            ]
            if not nodes:
                raise ConfigError(
                    f"no running node has a dataset with tags {self.tags}: pass "
                    "nodes=[Node(...), ...] or create the nodes in this process first"
                )
        if isinstance(nodes, Node):
            nodes = [nodes]
        if isinstance(nodes, (list, tuple)):
            return LocalTransport(nodes, workers=workers, processes=processes)
        if all(hasattr(nodes, attr) for attr in ("node_tags", "dispatch", "close")):
            return nodes
        raise ConfigError(f"nodes must be a list of Node objects or a transport, got {nodes!r}")

    def _select_nodes(self) -> list[str]:
        advertised = self.transport.node_tags()
        selected = [
            name
            for name, datasets in advertised.items()
            if any(set(self.tags) <= set(tags) for tags in datasets)
        ]
        if not selected:
            raise ConfigError(
                f"no node has a dataset with tags {self.tags}; nodes and their dataset tags: {advertised}"
            )
        return selected

    # -- the model ------------------------------------------------------------------------------
    @property
    def global_params(self) -> Params:
        """The current global parameters: read-only views of the researcher plan's weights,
        which the next round overwrites in place (the model is held once); copy what you keep
        (``{k: v.copy() for k, v in exp.global_params.items()}``)."""
        return self._global

    def _adopt(self, params: Params) -> None:
        """Make ``params`` the global model, held once: copied into the researcher's plan, whose
        own memory then holds the global parameters (the plan's views), when the plan gives
        views of the same names, shapes and dtypes; else kept beside the plan."""
        try:
            self._plan.set_parameters(params)
            views = self._plan.parameter_views()
        except Exception:  # a plan that cannot take them here: keep the arrays themselves
            views = None
        if views is not None and params_spec(views) == params_spec(params):
            self._global, self._plan_dirty = dict(views), False
        else:
            self._global, self._plan_dirty = params, True

    @property
    def training_plan(self) -> TrainingPlan:
        """The researcher's plan instance holding the current global model."""
        if self._plan_dirty:
            self._plan.set_parameters(self._global)
            self._plan_dirty = False
        return self._plan

    def save_model(self, path: str | Path) -> Path:
        """Write the global parameters to an ``.npz`` file (no pickle) with a JSON description."""
        path = Path(path)
        meta = {
            "fedplug_model": 1,
            "plan": self.plan_class.__qualname__,
            "round": self.round_index,
            "model_args": self.model_args,
        }
        arrays = {f"param:{name}": value for name, value in self._global.items()}
        with path.open("wb") as handle:
            np.savez(
                handle, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays
            )
        return path

    def load_model(self, path: str | Path) -> None:
        """Load parameters saved by :meth:`save_model` into this experiment's global model."""
        params = load_params(path)
        if params_spec(params) != params_spec(self._global):
            raise ConfigError(
                f"{path} holds parameters {params_spec(params)} that do not match this "
                f"experiment's model {params_spec(self._global)}"
            )
        self._global = params
        self._plan_dirty = True

    def save_state(self, path: str | Path) -> Path:
        """Write what the researcher needs to resume: the global model, the researcher-side
        optimizer's state (moments, Scaffold's global state, schedulers), the round index and
        the history. One ``.npz`` file, no pickle; written to a temporary file, then renamed.
        Node-side optimizer states live on the nodes."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        optimizer = self.agg_optimizer.get_state() if self.agg_optimizer else None
        meta = {
            "fedplug_state": 1,
            "experiment_id": self.id,
            "plan": self.plan_class.__qualname__,
            "round_index": self.round_index,
            "history": self.history,
            "agg_optimizer": pack_state(optimizer, arrays, "opt"),
            "aggregator": self.aggregator.get_state(),
            "settings": self._settings(),
        }
        arrays.update({f"param:{name}": value for name, value in self._global.items()})
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez(handle, __state__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        tmp.replace(path)
        return path

    def load_state(self, path: str | Path) -> None:
        """Resume from :meth:`save_state`: this experiment must be configured like the saved
        one (same plan and model, same researcher-side optimizer modules). It takes the saved
        experiment's id, so nodes that kept their session (plan, node-side optimizer state such
        as Adam moments or Scaffold's local state) continue it."""
        arrays, meta = _read_state(path)
        params = {k[len("param:") :]: v for k, v in arrays.items() if k.startswith("param:")}
        if meta["plan"] != self.plan_class.__qualname__ or params_spec(params) != params_spec(
            self._global
        ):
            raise ConfigError(
                f"{path} holds a {meta['plan']} model {params_spec(params)}; this experiment "
                f"trains {self.plan_class.__qualname__} {params_spec(self._global)}"
            )
        if (meta["agg_optimizer"] is None) != (self.agg_optimizer is None):
            raise ConfigError(
                f"{path} was saved {'without' if meta['agg_optimizer'] is None else 'with'} an "
                "agg_optimizer; configure this experiment the same way to resume it"
            )
        if self.agg_optimizer is not None:
            self.agg_optimizer.set_state(unpack_state(meta["agg_optimizer"], arrays))
        self.aggregator.set_state(meta.get("aggregator") or {})
        self.id = meta["experiment_id"]
        self._global = params
        self._plan_dirty = True
        self.round_index = meta["round_index"]
        self.history = meta["history"]

    def _settings(self) -> dict[str, Any]:
        """What :meth:`load_checkpoint` needs to build this experiment again."""
        secagg = None
        if self.secagg is not None:
            config = self.secagg.config
            secagg = {"scheme": self.secagg.name, "settings": None}
            if dataclasses.is_dataclass(config):
                secagg["settings"] = dataclasses.asdict(config)
                secagg["settings_class"] = f"{type(config).__module__}:{type(config).__qualname__}"
        return {
            "tags": self.tags,
            "plan": dataclasses.asdict(self.plan_ref),
            "model_args": self.model_args,
            "training_args": self.training_args.to_dict(),
            "round_limit": self.round_limit,
            "aggregator": self.pm.aggregators.name_of(type(self.aggregator)),
            "agg_optimizer": self.agg_optimizer.to_dict() if self.agg_optimizer else None,
            "seed": self.seed,
            "validate": self.validate_every,
            "on_node_failure": self.on_node_failure,
            "min_nodes": self.min_nodes,
            "secagg": secagg,
            "transport": self._transport_settings,
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
            "keep_checkpoints": self.keep_checkpoints,
        }

    def save_checkpoint(self) -> Path:
        """Save the experiment in ``checkpoint_dir`` as ``round-NNNNN.npz`` (the number of rounds
        done), atomically, and remove checkpoints beyond the last ``keep_checkpoints``."""
        if self.checkpoint_dir is None:
            raise ConfigError("this experiment has no checkpoint_dir")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_state(self.checkpoint_dir / f"round-{self.round_index:05d}.npz")
        for old in sorted(self.checkpoint_dir.glob("round-*.npz"))[: -self.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    @classmethod
    def load_checkpoint(cls, path: str | Path, **overrides: Any) -> Experiment:
        """Resume an experiment saved with ``checkpoint_dir``: ``path`` is a checkpoint file or
        the folder (its latest checkpoint). The experiment is rebuilt with its saved settings
        (the plan from its registered name or its saved source, the optimizers, the transport:
        with gRPC it listens again and waits for the nodes) and continues where it stopped;
        ``overrides`` replace settings, e.g. ``nodes=`` for in-process nodes, which a file
        cannot hold. With the same seed, the result is the model an uninterrupted run gives."""
        file = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
        if file is None:
            raise ConfigError(f"no checkpoint (round-*.npz) in {path}")
        _, meta = _read_state(file)
        settings = meta.get("settings")
        if not isinstance(settings, dict):
            raise ConfigError(
                f"{file} has no saved settings (written by an older fedplug); build the "
                "Experiment as before and call load_state()"
            )
        pm = overrides.get("plugin_manager") or get_plugin_manager()
        ref = msg.PlanRef(**settings["plan"])
        kwargs: dict[str, Any] = {
            "tags": settings["tags"],
            "model_args": settings["model_args"],
            "training_args": settings["training_args"],
            "round_limit": settings["round_limit"],
            "seed": settings["seed"],
            "validate": settings["validate"],
            "on_node_failure": settings["on_node_failure"],
            "min_nodes": settings["min_nodes"],
            "checkpoint_dir": settings["checkpoint_dir"] or file.parent,
            "keep_checkpoints": settings["keep_checkpoints"],
            "plugin_manager": pm,
        }
        if "training_plan" not in overrides and "model_class" not in overrides:
            kwargs["training_plan"] = ref.name or load_plan_class(ref, pm.training_plans)
        if settings["aggregator"] is not None:
            kwargs["aggregator"] = settings["aggregator"]
        if settings["agg_optimizer"] is not None:
            kwargs["agg_optimizer"] = Optimizer.from_dict(settings["agg_optimizer"])
        if settings["secagg"] is not None:
            kwargs["secagg"] = _secagg_setting(settings["secagg"])
        transport = dict(settings["transport"])
        if transport.pop("kind") == "grpc":
            if isinstance(transport.get("tls"), list):
                transport["tls"] = tuple(transport["tls"])
            kwargs.update(transport, transport="grpc")
        kwargs.update(overrides)
        experiment = cls(**kwargs)
        experiment.load_state(file)
        if ref.name is None and "training_plan" not in overrides:
            experiment.plan_ref = ref  # the very source the nodes approved
        return experiment

    # -- rounds ---------------------------------------------------------------------------------
    def run(self, rounds: int | None = None) -> list[dict[str, Any]]:
        """Run ``rounds`` rounds (default: the rest of ``round_limit``); return the history."""
        if rounds is None:
            if self.round_limit is None:
                raise ConfigError("set round_limit on the experiment or pass rounds to run()")
            rounds = self.round_limit - self.round_index
        else:
            rounds = _check_rounds("rounds", rounds)
        bar = _progress(rounds, self.progress)
        try:
            for _ in range(rounds):
                row = self.run_once()
                if bar is not None:
                    bar.set_postfix_str(_postfix(row))
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.pm.hook.fedplug_experiment_finished(experiment=self)
        return self.history

    def close(self) -> None:
        """Release the transport the experiment made (threads, worker processes and the node
        sessions they hold; the gRPC server of ``transport="grpc"``). A transport object given
        as ``nodes`` or ``transport`` stays open: its maker closes it. ``with Experiment(...) as
        exp:`` closes on exit."""
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_once(self) -> dict[str, Any]:
        """Run one round and return its history row."""
        index = self.round_index
        self.pm.hook.fedplug_round_started(round_index=index, experiment=self)
        start = time.perf_counter()
        replies, failures, aux_sum = self._train_round(index)
        train_s = time.perf_counter() - start
        if self.secagg is not None:
            aggregated = self.secagg.result(index, self._secagg_exchange(index))
            _check_params(aggregated, self._global, "secure aggregation")
            for node, reason in self.secagg.failures.items():
                failures.setdefault(node, f"secure aggregation: {reason}")
        else:
            aggregated = self.aggregator.result()
        optimizer_state = self.agg_optimizer.get_state() if self.agg_optimizer else None
        try:  # the round is applied whole or not at all
            if self.agg_optimizer is not None:
                if aux_sum:
                    self.agg_optimizer.process_aux_var(aux_sum)
                self.agg_optimizer.start_round()
                new_global = self.agg_optimizer.step_global(self._global, aggregated)
            else:
                new_global = aggregated
            row = _train_summary(index, replies)
            row["failures"] = failures
            row["durations"] = {
                "train_s": train_s,
                "aggregate_s": time.perf_counter() - start - train_s,
            }
            if self._should_validate(index):
                vstart = time.perf_counter()
                validation = self._validation_round(index, new_global)
                row["validation"], row["validation_global"], row["validation_failures"] = validation
                row["validation_mean"] = mean_over_nodes(row["validation"])
                row["durations"]["validate_s"] = time.perf_counter() - vstart
        except FedplugError:
            if self.agg_optimizer is not None:
                self.agg_optimizer.set_state(optimizer_state)
            raise
        row["durations"]["round_s"] = time.perf_counter() - start
        self._adopt(new_global)
        self.round_index += 1
        self.history.append(row)
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
        self.pm.hook.fedplug_round_finished(round_index=index, summary=row, experiment=self)
        return row

    def _should_validate(self, index: int) -> bool:
        if not self.validate_every:
            return False
        last = self.round_limit is not None and index + 1 == self.round_limit
        return last or (index + 1) % self.validate_every == 0

    def _request(
        self, cls: type, index: int, params: Params, secagg: msg.SecAggData | None = None
    ) -> list[Any]:
        extra: dict[str, Any] = {}
        if cls is msg.TrainRequest and self.agg_optimizer and self.agg_optimizer.aux_modules:
            extra["aux_vars"] = pack_aux_vars(self.agg_optimizer.collect_aux_var())
        if secagg is not None:
            extra["secagg"] = secagg
        return msg.encode_parts(  # the arrays travel from the global model's memory
            cls(
                experiment_id=self.id,
                round_index=index,
                plan=self.plan_ref,
                model_args=self.model_args,
                training_args=self.training_args.to_dict(),
                tags=self.tags,
                params=params,
                **extra,
            )
        )

    def _collect(
        self,
        payload: bytes | list[Any],
        index: int,
        expected: type,
        on_reply: Any,
        nodes: list[str] | None = None,
        min_nodes: int | None = None,
        fold: _StreamFold | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Dispatch ``payload``; pass each good reply to ``on_reply``; apply the failure policy.

        With ``fold``, and a transport that streams replies, a reply is folded in while it
        arrives (``fold`` instead of ``on_reply``): never held whole."""
        nodes = self.nodes if nodes is None else nodes
        min_nodes = self.min_nodes if min_nodes is None else min_nodes
        replies: dict[str, Any] = {}
        failures: dict[str, str] = {}
        streaming = fold is not None and getattr(self.transport, "streams_replies", False)
        options = {"streams": True} if streaming else {}
        folded: list[tuple[str, Any]] = []  # streamed replies folded in, to fold them again
        # closing(): a round that fails stops the dispatch at once and lets the transport clean up
        with contextlib.closing(self.transport.dispatch(payload, nodes, **options)) as stream:
            for node, raw in stream:
                try:
                    if isinstance(raw, NodeError):
                        raise raw
                    if isinstance(raw, BaseException):
                        raise NodeError(node, f"did not answer: {type(raw).__name__}: {raw}")
                    if streaming:
                        reply = self._receive(node, raw, index, expected, fold)
                        folded.append((node, raw))
                    else:
                        reply = msg.decode(raw, (expected, msg.ErrorReply))
                        self._check_reply(node, reply, index)
                        on_reply(node, reply)
                    if isinstance(reply, msg.TrainReply):  # folded: let its memory go
                        reply.params, reply.aux_vars, reply.secagg = {}, {}, None
                    replies[node] = reply
                except FedplugError as exc:
                    if self.on_node_failure == "fail":
                        raise NodeError(
                            node,
                            f"{_failure(exc)} (round {index}; the global model is unchanged; "
                            "use on_node_failure='skip' to continue without failing nodes)",
                        ) from None
                    failures[node] = _failure(exc)
                    if streaming and fold.dirty:
                        self._refold(folded, replies, failures, index, expected, fold)
                raw = reply = None  # its buffer goes before the next reply is received
        if len(replies) < min_nodes:
            raise NodeError(
                ",".join(sorted(failures)) or "-",
                f"only {len(replies)} of {len(nodes)} nodes replied in round {index} "
                f"(min_nodes={min_nodes}); failures: {failures}; the global model is unchanged",
            )
        return replies, failures

    def _check_reply(self, node: str, reply: Any, index: int) -> None:
        """A reply must come from ``node``, for this experiment and round, and not be an error."""
        if reply.node != node:
            raise MessageError(f"reply from {node!r} claims to come from {reply.node!r}")
        if reply.experiment_id != self.id or reply.round_index != index:
            raise MessageError(
                f"reply from {node!r} is for experiment {reply.experiment_id!r} round "
                f"{reply.round_index}, expected {self.id!r} round {index}"
            )
        if isinstance(reply, msg.ErrorReply):
            raise NodeError(node, f"{reply.error}: {reply.message}")

    def _receive(
        self, node: str, stream: Any, index: int, expected: type, fold: _StreamFold
    ) -> Any:
        """Decode a streamed reply, folding its parameters in piece by piece as they arrive."""

        def on_header(reply: Any) -> dict[msg.ArraySlot, msg.Sink]:
            self._check_reply(node, reply, index)  # before any of its arrays is read
            sinks = fold.accept(node, reply)
            return {slot: _marking(fold, sink) for slot, sink in sinks.items()}

        reply = msg.decode_stream(
            stream, stream.size, (expected, msg.ErrorReply), on_header=on_header
        )
        fold.commit(node, reply)
        fold.dirty = False
        return reply

    def _refold(
        self,
        folded: list[tuple[str, Any]],
        replies: dict[str, Any],
        failures: dict[str, str],
        index: int,
        expected: type,
        fold: _StreamFold,
    ) -> None:
        """A reply failed after part of it was folded in: fold the round again from zero with
        the replies accepted so far, which their nodes send again (a node keeps its reply until
        the round ends). A node that cannot send it again fails too. The sum is then the same,
        bit for bit, as if the failed nodes had never replied."""
        log.warning(
            "a reply failed after part of it was folded in; folding round %d again from the "
            "replies of %s",
            index,
            [node for node, _ in folded],
        )
        while True:
            fold.reset()
            fold.dirty = False
            for position, (node, stream) in enumerate(folded):
                try:
                    self._receive(node, stream.replay(), index, expected, fold)
                except FedplugError as exc:
                    failures[node] = f"{_failure(exc)} (while its reply was received again)"
                    replies.pop(node, None)
                    del folded[position]
                    break
            else:
                return

    def _secagg_exchange(self, index: int) -> Any:
        """The ``exchange`` function a secure-aggregation scheme runs its steps with."""

        def exchange(
            data: msg.SecAggData, nodes: list[str]
        ) -> tuple[dict[str, msg.SecAggData], dict[str, str]]:
            payload = msg.encode(msg.SecAggRequest(self.id, index, data))
            replies, failures = self._collect(
                payload, index, msg.SecAggReply, lambda n, r: None, nodes=nodes, min_nodes=0
            )
            return {node: reply.data for node, reply in replies.items()}, failures

        return exchange

    def _train_round(
        self, index: int
    ) -> tuple[dict[str, msg.TrainReply], dict[str, str], dict[str, Any]]:
        """Train on the nodes; fold parameters into the aggregator and sum auxiliary variables
        per module as replies arrive."""
        self.aggregator.begin(self._global)
        spec = params_spec(self._global)
        expected_aux = set(self.agg_optimizer.aux_modules) if self.agg_optimizer else set()
        aux_sum: dict[str, Any] = {}
        nodes, context = self.nodes, None
        if self.secagg is not None:
            nodes, context = self.secagg.begin_round(
                self.id, index, list(self.nodes), spec, self._secagg_exchange(index)
            )

        def check_spec(node: str, params: Any) -> None:
            if params_spec(params) != spec:
                raise MessageError(
                    f"node {node!r} returned parameters {params_spec(params)}, expected {spec}"
                )

        def fold(node: str, reply: msg.TrainReply) -> None:
            if self.secagg is not None:
                if reply.secagg is None or reply.params:
                    raise MessageError(
                        f"node {node!r} replied without a masked update to a secure-aggregation "
                        "request"
                    )
                if reply.aux_vars:
                    raise SecAggError(
                        f"node {node!r} returned auxiliary variables, which secure aggregation "
                        "cannot protect"
                    )
                try:
                    self.secagg.add(node, reply.n_samples, reply.secagg)
                except (SecAggError, MessageError, AggregationError) as exc:
                    raise NodeError(node, f"{type(exc).__name__}: {exc}") from None
                return
            check_spec(node, reply.params)
            aux = self._received_aux_vars(node, reply.aux_vars, expected_aux)
            try:
                self.aggregator.add(node, reply.params, reply.n_samples)
            except AggregationError as exc:
                raise NodeError(node, str(exc)) from None
            for key, value in aux.items():
                aux_sum[key] = value if key not in aux_sum else aux_sum[key] + value

        def accept(node: str, reply: Any) -> dict[msg.ArraySlot, msg.Sink]:
            """A streamed reply's header: the same checks as ``fold``, before any array."""
            check_spec(node, reply.params)
            if reply.aux_vars:
                if self.agg_optimizer is None:
                    self._received_aux_vars(node, reply.aux_vars, expected_aux)  # raises
                raise NodeError(
                    node,
                    f"returned auxiliary variables for {sorted(reply.aux_vars)}, which no module "
                    f"of the researcher's optimizer {self.agg_optimizer.module_names} uses",
                )
            try:
                self.aggregator.check(node, reply.params, reply.n_samples)
            except AggregationError as exc:
                raise NodeError(node, str(exc)) from None
            n_samples = int(reply.n_samples)
            return {
                slot: functools.partial(self.aggregator.add_part, name, n_samples=n_samples)
                for name, slot in reply.params.items()
            }

        streamed = None
        if self.secagg is None and self.aggregator.streams and not expected_aux:
            streamed = _StreamFold(
                accept=accept,
                commit=lambda node, reply: self.aggregator.commit(node, reply.n_samples),
                reset=lambda: self.aggregator.begin(self._global),
            )
        payload = self._request(msg.TrainRequest, index, self._global, context)
        replies, failures = self._collect(
            payload, index, msg.TrainReply, fold, nodes=nodes, fold=streamed
        )
        for node in self.nodes:
            if node not in nodes:
                reason = self.secagg.failures.get(node, "no reason given")
                failures.setdefault(node, f"dropped out of the secure-aggregation set-up: {reason}")
        return replies, failures, aux_sum

    def _received_aux_vars(
        self, node: str, aux_vars: dict[str, msg.AuxVarData], expected: set[str]
    ) -> dict[str, Any]:
        if aux_vars and self.agg_optimizer is None:
            raise NodeError(
                node,
                f"returned auxiliary variables for {sorted(aux_vars)}, but the experiment has no "
                "agg_optimizer to process them; set agg_optimizer=Optimizer(lr=1.0, "
                f"modules=[{', '.join(repr(m) for m in _partners(aux_vars))}])",
            )
        missing = sorted(expected - set(aux_vars))
        if missing:
            raise NodeError(
                node,
                f"returned no auxiliary variables for {missing}, which the researcher's "
                f"optimizer modules {self.agg_optimizer.module_names} need; the plan's "
                "fedplug.Optimizer must include the node-side partner module",
            )
        return self.agg_optimizer.unpack_aux_vars(aux_vars) if aux_vars else {}

    def _validation_round(
        self, index: int, params: Params
    ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, str]]:
        payload = self._request(msg.EvaluateRequest, index, params)
        replies, failures = self._collect(payload, index, msg.EvaluateReply, lambda n, r: None)
        per_node = {
            node: dict(r.metrics, n_samples=r.n_samples) for node, r in sorted(replies.items())
        }
        total = sum(r.n_samples for r in replies.values())
        overall: dict[str, float] = {}
        if total:
            keys = set.intersection(*(set(r.metrics) for r in replies.values() if r.n_samples))
            for key in sorted(keys):
                overall[key] = (
                    sum(r.metrics[key] * r.n_samples for r in replies.values() if r.n_samples)
                    / total
                )
        overall["n_samples"] = total
        return per_node, overall, failures

    def evaluate(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Validate the current global model on every node's held-out split now: per-node
        metrics and their average weighted by test samples."""
        per_node, overall, _ = self._validation_round(self.round_index, self._global)
        return per_node, overall

    def __repr__(self) -> str:
        return (
            f"Experiment(plan={self.plan_class.__qualname__}, nodes={self.nodes}, "
            f"aggregator={self.aggregator.name!r}, round={self.round_index}/{self.round_limit})"
        )


@dataclass
class _StreamFold:
    """How a training round folds in replies that a transport streams (see ``_collect``):
    ``accept(node, reply)`` checks a reply's header and returns a sink per streamed array,
    ``commit(node, reply)`` closes a reply all folded in, ``reset()`` forgets the round's sum."""

    accept: Callable[[str, Any], dict[msg.ArraySlot, msg.Sink]]
    commit: Callable[[str, Any], None]
    reset: Callable[[], None]
    dirty: bool = False  # part of a reply not yet committed has been folded in


def _marking(fold: _StreamFold, sink: msg.Sink) -> msg.Sink:
    def marked(start: int, values: np.ndarray) -> None:
        fold.dirty = True
        sink(start, values)

    return marked


def _failure(exc: FedplugError) -> str:
    return exc.detail if isinstance(exc, NodeError) else f"{type(exc).__name__}: {exc}"


def _partners(aux_vars: dict[str, Any]) -> list[str]:
    """Registered declearn modules that share an auxiliary-variable name with ``aux_vars``
    and hold the aggregated side (they declare ``auxvar_cls``): what a researcher should use."""
    return sorted(
        name
        for name, cls in Optimizer.available_modules().items()
        if getattr(cls, "aux_name", None) in aux_vars and getattr(cls, "auxvar_cls", None)
    )


def _check_params(params: Params, reference: Params, source: str) -> None:
    if params_spec(params) != params_spec(reference):
        raise SecAggError(
            f"{source} returned parameters {params_spec(params)}, expected "
            f"{params_spec(reference)}; the global model is unchanged"
        )


def mean_over_nodes(per_node: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric of per-node validation results averaged over the nodes that report it with
    test samples, unweighted (FLamby's "mean over clients"); ``Experiment.evaluate()``'s first
    value is such a ``per_node`` dict."""
    reporting = [m for m in per_node.values() if m.get("n_samples")]
    keys = sorted({k for m in reporting for k in m if k != "n_samples"})
    return {
        key: sum(m[key] for m in reporting if key in m) / sum(key in m for m in reporting)
        for key in keys
    }


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The most recent ``round-NNNNN.npz`` in ``directory``, or None."""
    found = sorted(Path(directory).glob("round-*.npz"))
    return found[-1] if found else None


def _read_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"cannot read experiment state {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile) or "__state__" not in data.files:
        raise ConfigError(f"{path} is not a fedplug experiment state (see save_state)")
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as exc:  # e.g. a truncated file
            raise ConfigError(f"cannot read experiment state {path}: {exc}") from exc
    return arrays, json.loads(arrays.pop("__state__").tobytes())


def _secagg_setting(saved: dict[str, Any]) -> Any:
    if saved.get("settings") is None:
        return saved["scheme"]
    module, _, qualname = saved["settings_class"].partition(":")
    settings_class = getattr(importlib.import_module(module), qualname)
    return settings_class(**saved["settings"])


def load_params(path: str | Path) -> Params:
    """Parameters from a file written by :meth:`Experiment.save_model`."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path} is not a fedplug model file (not an .npz archive)")
    with data:
        if "__meta__" not in data.files:
            raise ConfigError(f"{path} is not a fedplug model file (no __meta__ entry)")
        try:
            return {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read model file {path}: {exc}") from exc


def _check_rounds(what: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def _validation_period(validate: bool | int | None, test_ratio: float) -> int:
    if validate is None:
        return 1 if test_ratio > 0 else 0
    if isinstance(validate, bool):
        return 1 if validate else 0
    if isinstance(validate, int) and validate >= 0:
        return validate
    raise ConfigError(f"validate must be a bool or a non-negative int, got {validate!r}")


def _train_summary(index: int, replies: dict[str, msg.TrainReply]) -> dict[str, Any]:
    samples = {node: r.n_samples for node, r in sorted(replies.items())}
    total = sum(samples.values())
    return {
        "round": index,
        "nodes": sorted(replies),
        "samples": samples,
        "train_loss": {node: r.train_loss for node, r in sorted(replies.items())},
        "train_loss_mean": sum(r.train_loss * r.n_samples for r in replies.values()) / total,
        "node_train_s": {node: r.duration_s for node, r in sorted(replies.items())},
    }


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="rounds", unit="round", dynamic_ncols=True, leave=True)


def _postfix(row: dict[str, Any]) -> str:
    parts = [f"train_loss={row['train_loss_mean']:.4f}"]
    for key, value in row.get("validation_global", {}).items():
        if key != "n_samples":
            parts.append(f"val_{key}={value:.4f}")
    return " ".join(parts)
