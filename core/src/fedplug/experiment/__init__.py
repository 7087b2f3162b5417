"""The researcher side: an :class:`Experiment` and its round loop.

A round sends the global parameters to the selected nodes and lets the experiment's fit workflow
aggregate the replies (:mod:`fedplug.experiment.rounds`: the aggregator folds them in as they
arrive, or a secure-aggregation scheme unmasks their sum), steps the global model (directly, or
through a researcher-side :class:`fedplug.Optimizer`), optionally validates it on the nodes'
held-out splits, and records a history row. A node that fails is handled by ``on_node_failure``;
a failed round leaves the global model of the last good round untouched.

The experiment is configured and validated (``fedplug_validate_experiment``) before its
transport is opened: a configuration that cannot work is refused before any node is contacted.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fedplug import messages as msg
from fedplug.aggregators import Aggregator
from fedplug.errors import AggregationError, ConfigError, FedplugError, PlanError, describe
from fedplug.experiment.checkpoints import (
    check_checkpoint_dir,
    latest_checkpoint,
    load_params,
    read_state,
    secagg_setting,
    transport_setting,
    write_model,
    write_state,
)
from fedplug.experiment.config import (
    _UNSET,
    FAILURE_POLICIES,
    LEGACY_TRANSPORT_KEYWORDS,
    ExperimentConfig,
    build_transport,
    check_agg_optimizer,
    check_positive,
    check_sample_size,
    jsonable_options,
    resolve_aggregator,
    resolve_plan,
    resolve_secagg,
    sample_size,
    transport_request,
    validation_period,
)
from fedplug.experiment.metrics import (
    default_progress,
    mean_over_nodes,
    postfix,
    progress_bar,
    train_summary,
    weighted_metrics,
)
from fedplug.experiment.rounds import Dispatch, PlainAggregation, TrainingRound
from fedplug.experiment.tracking import Trackers, tracking_request
from fedplug.optimizer import Optimizer, pack_state, unpack_state
from fedplug.plan import Params, TrainingArgs, TrainingPlan, params_spec
from fedplug.planref import load_plan_class, make_plan_ref
from fedplug.plugins import FedplugPluginManager, active, get_plugin_manager
from fedplug.report import ResultsTable, history_figure, results_table, save_figure
from fedplug.transport import is_transport

__all__ = [
    "Experiment",
    "ExperimentConfig",
    "latest_checkpoint",
    "load_params",
    "mean_over_nodes",
]


class Experiment:
    """A federated training experiment.

    :param nodes: the in-process :class:`~fedplug.Node` objects of the federation (a list, or a
        :class:`~fedplug.transport.local.LocalTransport` of them shared by several experiments);
        None when the transport finds the nodes (e.g. ``transport="grpc"``).
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
    :param clients_per_round: train only a sample of the nodes each round (cross-device
        federations): a count (``100``) or a fraction of the nodes (``0.1``, rounded up); None
        (the default) asks every node. The sample of round ``r`` is drawn from the seed (or, with
        none, the experiment id) and ``r`` alone, so a run and its resumption from a checkpoint
        draw the same; it keeps the nodes' order. Validation still asks every node.
    :param workers: local nodes trained at once (threads, or processes with ``processes``); by
        default nodes take turns in this process, the fastest on small machines.
    :param processes: run local nodes in worker processes (default: one per CPU core).
    :param progress: show progress per round (default: when stderr is a terminal, or in a
        Jupyter notebook; with stderr not a terminal, one line per round).
    :param transport: a registered transport's name (``fedplug_register_transports``):
        ``"local"`` (core's: the in-process ``nodes``, the default), ``"grpc"`` (fedplug-grpc: a
        server that node processes connect to), ...; or a transport object the caller made (and
        closes).
    :param transport_options: the named transport's settings, e.g. for ``"grpc"``
        ``{"server": "0.0.0.0:50051", "tls": "certs", "wait_nodes": 3}`` (see its factory). The
        keywords ``server``, ``tls``, ``credentials``, ``node_auth``, ``client_ca``,
        ``wait_nodes``, ``wait_timeout`` and ``request_timeout`` of earlier releases are still
        forwarded here, with a DeprecationWarning.
    :param checkpoint_dir: save the experiment there after each round (atomically: the model,
        the researcher-side optimizer's state, the history, the round index and the settings);
        :meth:`load_checkpoint` resumes. The last ``keep_checkpoints`` are kept.
    :param secagg: secure aggregation: True (the installed scheme with its defaults), a
        registered scheme name, or a scheme's settings object (e.g.
        ``fedplug_secagg.SecAggConfig(...)``); the researcher then learns only the weighted
        average of the nodes' parameters. The scheme runs each round's training in place of the
        plain aggregation.
    :param tracking: experiment trackers to turn on, by name (``fedplug_register_trackers``;
        e.g. ``"tensorboard"`` from fedplug-tensorboard, ``"mlflow"`` from fedplug-mlflow): a
        name, a list of names, or ``{name: {options}}``. Each logs every applied round and the
        final model; one that fails while logging is turned off with a warning.
    :param plugin_manager: where every name is resolved (default: every installed plugin).
    """

    def __init__(
        self,
        nodes: list[Any] | Any | None = None,
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
        clients_per_round: int | float | None = None,
        workers: int | None = None,
        processes: bool = False,
        progress: bool | None = None,
        plugin_manager: FedplugPluginManager | None = None,
        experiment_id: str | None = None,
        tracking: str | list[str] | dict[str, dict[str, Any]] | None = None,
        secagg: bool | str | Any = False,
        transport: str | Any = "local",
        transport_options: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None,
        keep_checkpoints: int = 2,
        server: Any = _UNSET,
        tls: Any = _UNSET,
        credentials: Any = _UNSET,
        node_auth: Any = _UNSET,
        client_ca: Any = _UNSET,
        wait_nodes: Any = _UNSET,
        wait_timeout: Any = _UNSET,
        request_timeout: Any = _UNSET,
    ) -> None:
        self.pm = plugin_manager or get_plugin_manager()
        self.id = experiment_id or uuid.uuid4().hex
        self.tags = [tags] if isinstance(tags, str) else list(tags or [])
        self.round_limit = check_positive("round_limit", round_limit, allow_none=True)
        self.seed = seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
        args = TrainingArgs.from_dict(training_args)
        if args.seed is None and seed is not None:
            args = TrainingArgs.from_dict({**args.to_dict(), "seed": seed})
        self.training_args = args
        self.model_args = dict(model_args or {})
        self.validate_every = validation_period(validate, self.training_args.test_ratio)
        if on_node_failure not in FAILURE_POLICIES:
            raise ConfigError(
                f"on_node_failure must be one of {FAILURE_POLICIES}, got {on_node_failure!r}"
            )
        self.on_node_failure = on_node_failure
        self.min_nodes = check_positive("min_nodes", min_nodes)
        self.clients_per_round = check_sample_size(clients_per_round)
        self.progress = default_progress() if progress is None else progress
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_checkpoints = check_positive("keep_checkpoints", keep_checkpoints)
        if self.checkpoint_dir is not None:
            check_checkpoint_dir(self.checkpoint_dir, self.id)

        given = (server, tls, credentials, node_auth, client_ca, wait_nodes, wait_timeout)
        legacy = dict(zip(LEGACY_TRANSPORT_KEYWORDS, (*given, request_timeout), strict=True))
        if is_transport(nodes):
            if transport != "local":
                raise ConfigError("give either nodes or a transport object, not both")
            transport, nodes = nodes, None
        transport, options = transport_request(
            transport, transport_options, legacy, workers, processes
        )
        if not isinstance(transport, str):
            if nodes is not None:
                raise ConfigError("give either nodes or a transport object, not both")
            if not is_transport(transport):
                raise ConfigError(
                    f"transport must be a registered transport's name or a transport object "
                    f"(node_tags, dispatch, close), got {transport!r}"
                )
        self._transport_settings = {
            "name": transport if isinstance(transport, str) else None,
            "options": jsonable_options(options) if self.checkpoint_dir is not None else options,
        }

        with active(self.pm):
            self._configure(
                nodes, transport, training_plan, model_class, aggregator, agg_optimizer, secagg
            )
            self.trackers = Trackers(self.pm, tracking_request(tracking), self)
        # only now, the configuration accepted, is any node contacted
        self._owns_transport = isinstance(transport, str)
        if self._owns_transport:
            self.transport = build_transport(
                self.pm, transport, nodes, self.tags, self.min_nodes, options
            )
        else:
            self.transport = transport
        try:
            self.nodes = self._select_nodes()
            self.config.nodes = list(self.nodes)
            self._check_sample()
        except BaseException:
            self.close()
            raise

    def _sample_size(self) -> int | None:
        """How many nodes each round asks (None: all of them)."""
        return sample_size(self.clients_per_round, len(self.nodes))

    def _check_sample(self) -> None:
        size = self._sample_size()
        if size is None:
            return
        if size > len(self.nodes):
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} asks {size} nodes per round, but "
                f"the experiment has {len(self.nodes)}"
            )
        if size < self.min_nodes:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} asks {size} nodes per round, fewer "
                f"than min_nodes={self.min_nodes}: no round could succeed"
            )

    def round_nodes(self, index: int) -> list[str]:
        """The nodes round ``index`` trains: all of them, or the round's seeded sample
        (``clients_per_round``), in the experiment's node order."""
        size = self._sample_size()
        if size is None or size >= len(self.nodes):
            return list(self.nodes)
        seed = self.seed if self.seed is not None else int(self.id[:15], 16)
        rng = np.random.default_rng([seed, index, 0x5A3])  # this round's, whatever came before
        chosen = set(rng.choice(len(self.nodes), size=size, replace=False).tolist())
        return [node for i, node in enumerate(self.nodes) if i in chosen]

    def _configure(
        self,
        nodes: Any,
        transport: Any,
        training_plan: Any,
        model_class: Any,
        aggregator: Any,
        agg_optimizer: Any,
        secagg: Any,
    ) -> None:
        """Resolve and build everything the experiment needs, and validate it."""
        self.plan_class = resolve_plan(self.pm, training_plan, model_class)
        self.aggregator = resolve_aggregator(self.pm, aggregator)
        self.agg_optimizer = check_agg_optimizer(agg_optimizer)
        self.secagg = resolve_secagg(self.pm, secagg)
        #: how each round's training is aggregated: the plain aggregation, or the scheme's
        self.fit_workflow = self.secagg or PlainAggregation(self.aggregator)

        self.plan_class.init_seed(self.seed)
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
        self._global: Params = {k: np.asarray(v) for k, v in initial.items()}
        self._plan_dirty = False
        self._adopt(self._global)  # held once, in the plan's memory
        self.plan_ref = make_plan_ref(
            self.plan_class, self._plan.dependencies, self.pm.training_plans
        )
        given = _node_names(nodes)
        self.config = ExperimentConfig(
            plan_class=self.plan_class,
            plan=self._plan,
            model_args=self.model_args,
            training_args=self.training_args,
            aggregator=self.aggregator,
            agg_optimizer=self.agg_optimizer,
            node_optimizer=self._plan.node_optimizer(),
            nodes=given,
            tags=self.tags,
            round_limit=self.round_limit,
            secagg=self.secagg,
            transport=transport if isinstance(transport, str) else None,
            plugin_manager=self.pm,
        )
        self.pm.hook.fedplug_validate_experiment(config=self.config)
        self.history: list[dict[str, Any]] = []
        self.round_index = 0

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
        meta = {
            "fedplug_model": 1,
            "plan": self.plan_class.__qualname__,
            "round": self.round_index,
            "model_args": self.model_args,
        }
        return write_model(path, self._global, meta)

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

    # -- checkpoints ----------------------------------------------------------------------------
    def save_state(self, path: str | Path) -> Path:
        """Write what the researcher needs to resume: the global model, the researcher-side
        optimizer's state (moments, Scaffold's global state, schedulers), the round index and
        the history. One ``.npz`` file, no pickle; written to a temporary file, then renamed.
        Node-side optimizer states live on the nodes."""
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
        return write_state(path, meta, arrays)

    def load_state(self, path: str | Path) -> None:
        """Resume from :meth:`save_state`: this experiment must be configured like the saved
        one (same plan and model, same researcher-side optimizer modules). It takes the saved
        experiment's id, so nodes that kept their session (plan, node-side optimizer state such
        as Adam moments or Scaffold's local state) continue it."""
        arrays, meta = read_state(path)
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
            "clients_per_round": self.clients_per_round,
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
    def load_checkpoint(
        cls, path: str | Path, *, trust: bool = False, **overrides: Any
    ) -> Experiment:
        """Resume an experiment saved with ``checkpoint_dir``: ``path`` is a checkpoint file or
        the folder (its latest checkpoint). The experiment is rebuilt with its saved settings
        (the plan, the optimizers and their modules, the secure-aggregation scheme and the
        transport, each by its registered name; with gRPC it listens again and waits for the
        nodes) and continues where it stopped; ``overrides`` replace settings, e.g. ``nodes=``
        for in-process nodes, which a file cannot hold. With the same seed, the result is the
        model an uninterrupted run gives.

        A checkpoint is trusted input, like a plan: nothing is unpickled and no class is
        imported from a path it names, but the source of a plan shipped as source is stored in
        it and resuming runs it. That needs ``trust=True`` (the checkpoint is yours), or give
        your own copy of the plan: ``training_plan=MyPlan``."""
        file = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
        if file is None:
            raise ConfigError(f"no checkpoint (round-*.npz) in {path}")
        _, meta = read_state(file)
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
            "clients_per_round": settings.get("clients_per_round"),  # absent before it existed
            "plugin_manager": pm,
            "experiment_id": meta["experiment_id"],  # its folder holds its own checkpoints
        }
        if "training_plan" not in overrides and "model_class" not in overrides:
            if ref.name is None and not trust:
                raise ConfigError(
                    f"{file} holds the source of plan {ref.class_name}, which resuming would run "
                    "(a checkpoint is code, like a plan): pass trust=True if the checkpoint is "
                    f"yours, or training_plan={ref.class_name} to resume with your own copy"
                )
            kwargs["training_plan"] = ref.name or load_plan_class(ref, pm.training_plans)
        if settings["aggregator"] is not None:
            kwargs["aggregator"] = settings["aggregator"]
        if settings["agg_optimizer"] is not None:
            kwargs["agg_optimizer"] = Optimizer.from_dict(
                settings["agg_optimizer"], plugin_manager=pm
            )
        if settings["secagg"] is not None:
            kwargs["secagg"] = secagg_setting(settings["secagg"], pm)
        name, options = transport_setting(settings["transport"])
        if "transport" not in overrides and "transport_options" not in overrides:
            if name is not None:
                kwargs["transport"] = name
            options = {key: value for key, value in options.items() if key not in overrides}
            if options:
                kwargs["transport_options"] = options
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
            rounds = check_positive("rounds", rounds)
        bar = progress_bar(rounds, self.progress)
        try:
            for _ in range(rounds):
                row = self.run_once()
                if bar is not None:
                    bar.set_postfix_str(postfix(row))
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.pm.hook.fedplug_experiment_finished(experiment=self)
        self.trackers.experiment_finished(self)
        return self.history

    def close(self) -> None:
        """Release the transport the experiment made (threads, worker processes and the node
        sessions they hold; the gRPC server of ``transport="grpc"``). A transport object given
        as ``nodes`` or ``transport`` stays open: its maker closes it. ``with Experiment(...) as
        exp:`` closes on exit."""
        self.trackers.close()
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dispatch(self) -> Dispatch:
        return Dispatch(
            experiment_id=self.id,
            transport=self.transport,
            nodes=self.nodes,
            on_node_failure=self.on_node_failure,
            min_nodes=self.min_nodes,
            plan_ref=self.plan_ref,
            model_args=self.model_args,
            training_args=self.training_args.to_dict(),
            tags=self.tags,
        )

    def run_once(self) -> dict[str, Any]:
        """Run one round and return its history row."""
        index = self.round_index
        self.pm.hook.fedplug_round_started(round_index=index, experiment=self)
        start = time.perf_counter()
        round = TrainingRound(self._dispatch(), index, self._global, self.agg_optimizer, self.pm)
        round.nodes = self.round_nodes(index)
        aggregated = self.fit_workflow.run_round(round)
        if params_spec(aggregated) != round.spec:
            raise AggregationError(
                f"the round's fit workflow {type(self.fit_workflow).__name__} returned parameters "
                f"{params_spec(aggregated)}, expected {round.spec}; the global model is unchanged"
            )
        # training lasts until the last reply is in; what the workflow does after (unmasking,
        # the aggregate) and the researcher optimizer's step are the aggregation
        train_s = (round.trained_at or time.perf_counter()) - start
        optimizer_state = self.agg_optimizer.get_state() if self.agg_optimizer else None
        try:  # the round is applied whole or not at all
            _check_finite(aggregated, "the aggregate of the nodes' parameters", round)
            if self.agg_optimizer is not None:
                if round.aux_sum:
                    self.agg_optimizer.process_aux_var(round.aux_sum)
                self.agg_optimizer.start_round()
                new_global = self.agg_optimizer.step_global(self._global, aggregated)
                _check_finite(new_global, "the researcher optimizer's step", round)
            else:
                new_global = aggregated
            row = train_summary(index, round.replies)
            row["failures"] = round.failures
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
        except BaseException:  # a failure, or Ctrl-C: the round is not applied, not even in part
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
        self.trackers.round_finished(index, row, self)
        return row

    def _should_validate(self, index: int) -> bool:
        if not self.validate_every:
            return False
        last = self.round_limit is not None and index + 1 == self.round_limit
        return last or (index + 1) % self.validate_every == 0

    def _validation_round(
        self, index: int, params: Params
    ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, str]]:
        dispatch = self._dispatch()
        payload = dispatch.request(msg.EvaluateRequest, index, params)
        replies, failures = dispatch.collect(payload, index, msg.EvaluateReply, lambda n, r: None)
        per_node, overall = weighted_metrics(replies)
        return per_node, overall, failures

    def results(self, per_node: bool = False) -> ResultsTable:
        """The rounds so far as a table: a row per round (nodes, weighted train loss, the global
        model's validation metrics ``val_<name>``, failures, seconds), or with ``per_node`` a row
        per round and node. It prints as text, a notebook renders it, and
        ``pandas.DataFrame(exp.results())`` (or ``.to_pandas()``) makes a data frame."""
        return results_table(self.history, per_node)

    def plot(
        self, path: str | Path | None = None, metric: str | None = None, title: str = ""
    ) -> Any:
        """The learning curves (training and validation loss, and the validation ``metric`` of
        the global model, per node and overall) as a matplotlib figure, which a notebook shows
        inline; with ``path``, also written there as PNG and SVG. Needs matplotlib
        (``pip install 'fedplug[plot]'``)."""
        try:
            figure = history_figure(self.history, metric, title)
        except ImportError:
            raise ConfigError("plotting needs matplotlib: pip install 'fedplug[plot]'") from None
        if path is not None:
            save_figure(figure, path)
        return figure

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


def _check_finite(params: Params, what: str, round: TrainingRound) -> None:
    """Refuse a round whose result is not finite (finite values near their type's limit
    overflow when summed): applied, it would poison the global model for every later round."""
    bad = sorted(
        name
        for name, value in params.items()
        if value.dtype.kind == "f" and not np.isfinite(value).all()
    )
    if bad:
        raise AggregationError(
            f"round {round.index}: {what} is not finite in {bad}: a sum overflowed, so some "
            "node sent values near its float type's limit. The round is not applied and the "
            f"global model is unchanged; suspects, the nodes aggregated: {sorted(round.replies)}"
        )


def _node_names(nodes: Any) -> list[str] | None:
    """The names of in-process nodes given to an experiment (known before any contact)."""
    if nodes is None:
        return None
    if not isinstance(nodes, (list, tuple)):
        nodes = [nodes]
    names = [getattr(node, "name", None) for node in nodes]
    return names if all(isinstance(name, str) for name in names) else None
