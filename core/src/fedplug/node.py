"""The node side: datasets found by tags, plan approval, and execution of train/evaluate requests.

:meth:`Node.serve` is a node's one entry point: it takes a request's bytes (whole, or in pieces
while they arrive) and returns the reply's; it never raises. Anything wrong, from malformed bytes
to a plan that crashes, becomes an :class:`~fedplug.messages.ErrorReply` naming the problem, and
the node keeps serving. What a request does is the ``fedplug_node_request`` hook's: core's built-in
plugin trains and evaluates (:meth:`Node.train`, :meth:`Node.evaluate`); plugins serve their own
requests and wrap the others. A node keeps one session per experiment (the plan, its optimizer
state and the data split), so node-side optimizer state persists across rounds.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedplug import messages as msg
from fedplug.datasets import Dataset
from fedplug.errors import (
    ConfigError,
    FedplugError,
    MessageError,
    NodeError,
    PlanCodeError,
    PlanError,
)
from fedplug.optimizer import Optimizer, pack_aux_vars
from fedplug.plan import TrainingArgs, TrainingPlan, params_spec
from fedplug.planref import check_reviewable, describe_plan_error, load_plan_class, source_hash
from fedplug.plugins import FedplugPluginManager, active, get_plugin_manager
from fedplug.text import inert


@dataclass(frozen=True)
class NodeLimits:
    """What a node accepts from researchers; None means no limit (any plugin).

    :param max_epochs: largest ``epochs`` training argument.
    :param max_updates: largest ``num_updates`` training argument.
    :param max_batch_size: largest ``batch_size`` training argument.
    :param allowed_plugins: plugin or distribution names whose registered plans may run.
    :param max_plan_mb: largest model a plan may build, in MiB of parameters: checked right
        after the plan is built from the request's ``model_args``, before any training (a few
        bytes of model arguments can ask for gigabytes).
    """

    max_epochs: int | None = None
    max_updates: int | None = None
    max_batch_size: int | None = None
    allowed_plugins: tuple[str, ...] | None = None
    max_plan_mb: float | None = None


@dataclass
class _Session:
    plan: TrainingPlan
    spec: dict[str, tuple[tuple[int, ...], str]]
    args: TrainingArgs
    train: Dataset
    test: Dataset | None
    trained_round: int | None = None  # the last round trained in this session
    snapshot: tuple[int, Any] | None = None  # (round, optimizer state when that round began)


class Node:
    """A data holder that trains plans on request.

    :param name: unique name of this node in a federation.
    :param datasets: the node's datasets; experiments select one by tags.
    :param approval: when True, a plan shipped as source runs only if its hash was approved
        (:meth:`approve_plan`); registered plans always run. Local simulations may leave it off.
    :param plugin_manager: where plans, dataset types and model adapters come from.
    :param max_sessions: experiments whose state the node keeps at once (oldest dropped first).
    :param settings: the administrator's settings for plugins, e.g. fedplug-secagg's
        ``{"require_secagg": True}`` (refuse to train without secure aggregation).
    :param limits: what a request may ask for (:class:`NodeLimits`: max epochs, updates and
        batch size, the plugins whose registered plans may run, the plan's size); None: none.
    :param plan_store: where approvals live (``fedplug_grpc.nodestore.NodeStore``): read on every
        request, so an approval made with ``fedplug node plan approve`` applies at once, and a
        plan that arrives unapproved is recorded there for the administrator to review.
    :param approve_hint: how the refusal of an unapproved plan tells the administrator to approve
        it; ``{sha256}`` is replaced by the plan's hash.
    """

    def __init__(
        self,
        name: str,
        datasets: Iterable[Dataset] | Dataset = (),
        *,
        approval: bool = False,
        approved_plans: Iterable[str] = (),
        plugin_manager: FedplugPluginManager | None = None,
        max_sessions: int = 8,
        settings: Mapping[str, Any] | None = None,
        limits: Any = None,
        plan_store: Any = None,
        approve_hint: str = "node.approve_plan({sha256!r})",
        require_secagg: bool | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a node name must be a non-empty string, got {name!r}")
        self.name = name
        self.datasets: list[Dataset] = []
        for dataset in [datasets] if isinstance(datasets, Dataset) else datasets:
            self.add_dataset(dataset)
        self.approval = approval
        self.approved_plans: set[str] = set(approved_plans)
        self.pm = plugin_manager or get_plugin_manager()
        self.max_sessions = max_sessions
        self.settings: dict[str, Any] = dict(settings or {})
        if require_secagg is not None:  # the keyword of the release before plugin settings
            warnings.warn(
                "Node(require_secagg=...) is deprecated: give settings={'require_secagg': ...} "
                "(fedplug-secagg reads it)",
                DeprecationWarning,
                stacklevel=2,
            )
            self.settings.setdefault("require_secagg", require_secagg)
        self.limits = limits
        self.plan_store = plan_store
        self.approve_hint = approve_hint
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._plugin_state: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._plan_classes: dict[str, type[TrainingPlan]] = {}
        self._lock = threading.Lock()
        self._prepared: tuple[Any, _Session | None, bool] | None = None
        self._created: str | None = None  # the experiment whose session this request made

    def __getstate__(self) -> dict[str, Any]:
        # What a worker process receives: data, settings and how to rebuild the same plugins.
        state = dict(self.__dict__)
        for transient in ("pm", "_lock", "_sessions", "_plan_classes", "_plugin_state"):
            state.pop(transient)
        state["_prepared"] = state["_created"] = None
        state["_plugins"] = self.pm.portable()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        plugins = state.pop("_plugins")
        self.__dict__.update(state)
        self.pm = plugins.rebuild()
        self._lock = threading.Lock()
        self._sessions = OrderedDict()
        self._plugin_state = OrderedDict()
        self._plan_classes = {}

    def __repr__(self) -> str:
        return f"Node({self.name!r}, datasets={[d.name for d in self.datasets]})"

    @property
    def busy(self) -> bool:
        """Whether a request is being served right now."""
        return self._lock.locked()

    def stop(self) -> None:
        """Drop every experiment's session and plugin state (plans, optimizer states, keys)."""
        with self._lock:
            self._sessions.clear()
            self._plugin_state.clear()

    # -- administration -------------------------------------------------------------------------
    def add_dataset(self, dataset: Dataset) -> None:
        if not isinstance(dataset, Dataset):
            raise ConfigError(f"node {self.name!r}: expected a fedplug Dataset, got {dataset!r}")
        self.datasets.append(dataset)

    def approve_plan(self, sha256: str) -> None:
        self.approved_plans.add(sha256)

    def tags(self) -> list[list[str]]:
        """The tags of each dataset, as advertised to researchers."""
        return [list(d.tags) for d in self.datasets]

    def find_dataset(self, tags: list[str]) -> Dataset:
        matches = [d for d in self.datasets if d.matches(tags)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NodeError(self.name, f"no dataset matches tags {tags}; it has {self.tags()}")
        raise NodeError(
            self.name,
            f"{len(matches)} datasets match tags {tags} ({[d.name for d in matches]}); "
            "give the experiment tags that select exactly one",
        )

    # -- serving requests -----------------------------------------------------------------------
    def serve(
        self, request: bytes | bytearray | memoryview | Iterable[Any], size: int | None = None
    ) -> list[Any]:
        """Serve one request and return its reply as buffers whose concatenation is the reply's
        bytes (:func:`fedplug.messages.encode_parts`). Never raises.

        ``request`` is the request's bytes, or an iterable of its pieces (``size`` bytes in all)
        read while they arrive: the parameters of a training or evaluation request then go
        straight into the plan's :meth:`~fedplug.plan.TrainingPlan.parameter_buffers` (when it
        has them), checked finite piece by piece, and no copy of the model is assembled.

        The reply's parameters are not copied: they are views of the plan's own
        (:meth:`~fedplug.plan.TrainingPlan.parameter_views`), valid until this node serves its
        next request; send them before. Requests are served one at a time. If a request turns
        out bad after some of its parameters were written (a NaN, a truncated stream), the plan
        holds a mix of old and new values; every training or evaluation request loads all of
        them again before they are used, so nothing reads the mix."""
        with self._lock, active(self.pm):
            if isinstance(request, (bytes, bytearray, memoryview)):
                size = memoryview(request).nbytes if size is None else size
                request = (request,)
            reply = self._serve(request, size)
            try:
                return msg.encode_parts(reply)
            except Exception as exc:  # e.g. a plan whose parameters no message can carry
                ids = [reply.experiment_id, reply.round_index]
                return msg.encode_parts(self._failed(ids, exc))

    def _serve(self, chunks: Iterable[Any], size: int | None) -> msg.Message:
        ids: list[Any] = ["", -1]
        prepared: list[Any] = [None, False]  # the request's session; its parameters loaded?

        def on_header(request: Any) -> dict[msg.ArraySlot, msg.Sink] | None:
            ids[:] = request.experiment_id, request.round_index
            return self._param_sinks(request, prepared)

        self._created = None
        try:
            if not isinstance(size, int):
                raise MessageError(f"a request in pieces needs its size in bytes, got {size!r}")
            request = msg.decode_stream(chunks, size, on_header=on_header)
            self._prepared = (request, *prepared)
            reply = self.pm.hook.fedplug_node_request(node=self, request=request)
            if reply is None:
                raise MessageError(
                    f"node {self.name!r} serves no {type(request).__name__}: no installed plugin "
                    "handles it"
                )
            return reply
        except Exception as exc:
            if self._created is not None:  # a session this refused request made: let it go
                self._sessions.pop(self._created, None)
            return self._failed(ids, exc)
        finally:
            self._prepared = self._created = None

    def _failed(self, ids: list[Any], exc: Exception) -> msg.ErrorReply:
        if isinstance(exc, FedplugError):
            return self._error(ids[0], ids[1], exc)
        return self._error(ids[0], ids[1], PlanCodeError(_describe(exc)))  # a bug in plan code

    def _param_sinks(self, request: Any, prepared: list[Any]) -> dict[Any, msg.Sink] | None:
        """Where the parameters of a request whose header just arrived go: the plan's own
        buffers, once the request is known to be acceptable and its parameters to fit."""
        if isinstance(request, msg.TrainRequest):
            session = self._prepare_train(request)
        elif isinstance(request, msg.EvaluateRequest):
            session = self.session(request)
        else:
            return None
        prepared[0] = session
        if isinstance(request, msg.EvaluateRequest) and session.test is None:
            return None  # nothing to evaluate: the parameters are not loaded
        self._check_params(session, request.params)
        buffers = session.plan.parameter_buffers()
        if buffers is None or params_spec(buffers) != session.spec:
            return None  # decoded into arrays of their own, then set_parameters()
        if not all(b.flags.c_contiguous and b.flags.writeable for b in buffers.values()):
            return None
        prepared[1] = True
        return {slot: _writer(buffers[name]) for name, slot in request.params.items()}

    def _prepared_for(self, request: Any) -> tuple[_Session | None, bool]:
        """The session prepared while ``request`` arrived, and whether its parameters are
        already in the plan."""
        if self._prepared is not None and self._prepared[0] is request:
            return self._prepared[1], self._prepared[2]
        return None, False

    def plugin_state(self, experiment_id: str) -> dict[str, Any]:
        """A dict where plugins keep what they need per experiment on this node (e.g.
        fedplug-secagg's keys). The node keeps the last ``max_sessions`` experiments' and drops
        them all on :meth:`stop`."""
        state = self._plugin_state.get(experiment_id)
        if state is None:
            state = self._plugin_state[experiment_id] = {}
            while len(self._plugin_state) > self.max_sessions:
                self._plugin_state.popitem(last=False)
        self._plugin_state.move_to_end(experiment_id)
        return state

    def _error(self, experiment_id: str, round_index: int, exc: FedplugError) -> msg.ErrorReply:
        text = exc.detail if isinstance(exc, NodeError) else str(exc)
        return msg.ErrorReply(experiment_id, round_index, self.name, type(exc).__name__, text)

    def _plan_class(self, ref: msg.PlanRef) -> type[TrainingPlan]:
        key = ref.name or ref.sha256 or ""
        if ref.name is None and self.approval:
            self._check_approved(ref)  # on every request: a plan may be rejected meanwhile
        if key not in self._plan_classes:
            self._plan_classes[key] = load_plan_class(ref, self.pm.training_plans)
        return self._plan_classes[key]

    def _check_approved(self, ref: msg.PlanRef) -> None:
        """Refuse shipped source whose hash the administrator has not approved; never run it."""
        if not ref.source or not ref.sha256 or source_hash(ref.source) != ref.sha256:
            raise PlanError(
                f"plan {inert(ref.class_name)}: its source does not match its hash "
                f"{inert(ref.sha256)}; refusing to run it"
            )
        check_reviewable(ref.source, ref.class_name)  # before it is recorded for review
        status = "approved" if ref.sha256 in self.approved_plans else "pending"
        if self.plan_store is not None and status != "approved":
            status = self.plan_store.record_plan(ref.sha256, ref.class_name, ref.source)
        if status == "approved":
            return
        if status == "rejected":
            raise NodeError(
                self.name,
                f"training plan {ref.class_name} (sha256 {ref.sha256}) was rejected by this "
                "node's administrator; its code was not run",
            )
        raise NodeError(
            self.name,
            f"training plan {ref.class_name} (sha256 {ref.sha256}) is not approved on this node; "
            "its code was not run. The node's administrator reviews and approves it with: "
            + self.approve_hint.format(sha256=ref.sha256),
        )

    def _check_limits(self, request: msg.TrainRequest | msg.EvaluateRequest) -> None:
        """Refuse requests beyond what this node's administrator allows."""
        limits = self.limits
        if limits is None:
            return
        args = request.training_args
        for key, limit in (
            ("epochs", limits.max_epochs),
            ("num_updates", limits.max_updates),
            ("batch_size", limits.max_batch_size),
        ):
            value = args.get(key)
            if limit is not None and isinstance(value, (int, float)) and value > limit:
                setting = "max_updates" if key == "num_updates" else f"max_{key}"
                raise NodeError(
                    self.name,
                    f"training argument {key}={value} exceeds this node's limit of {limit} "
                    f"([limits] {setting} in its node configuration)",
                )
        if limits.allowed_plugins is not None and request.plan.name is not None:
            owner = self.pm.training_plans.owner(request.plan.name)
            dist = self.pm.distribution(owner)
            if owner not in limits.allowed_plugins and dist not in limits.allowed_plugins:
                raise NodeError(
                    self.name,
                    f"training plan {request.plan.name!r} comes from plugin {owner!r} "
                    f"(distribution {dist}), which this node does not allow (allowed_plugins = "
                    f"{list(limits.allowed_plugins)}: plugin or distribution names)",
                )

    def session(self, request: msg.TrainRequest | msg.EvaluateRequest) -> _Session:
        """The session of ``request``'s experiment: its plan, training arguments and data split,
        made on the experiment's first request (checking this node's limits and approvals)."""
        session = self._sessions.get(request.experiment_id)
        if session is not None:
            if request.plan.name is None and self.approval:
                self._check_approved(request.plan)  # the approval may be withdrawn meanwhile
            self._sessions.move_to_end(request.experiment_id)
            return session
        self._check_limits(request)
        args = TrainingArgs.from_dict(request.training_args)
        plan_cls = self._plan_class(request.plan)
        dataset = self.find_dataset(request.tags)
        plan = plan_cls(request.model_args)  # its initial weights are replaced by the global ones
        views = plan.parameter_views()
        self._check_plan_size(plan_cls, views)
        train, test = dataset.split(args.test_ratio, args.seed)
        if len(train) == 0:
            raise NodeError(self.name, f"dataset {dataset.name!r} has no training samples")
        session = _Session(plan, params_spec(views), args, train, test)
        self._created = request.experiment_id  # released if this request is refused
        self._sessions[request.experiment_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def _check_plan_size(self, plan_cls: type, views: dict[str, Any]) -> None:
        limit = getattr(self.limits, "max_plan_mb", None)
        size = sum(np.asarray(value).nbytes for value in views.values())
        if limit is not None and size > limit * (1 << 20):
            raise NodeError(
                self.name,
                f"plan {plan_cls.__name__} built from the request's model_args has "
                f"{size / (1 << 20):.1f} MiB of parameters, over this node's limit of "
                f"{limit:g} MiB ([limits] max_plan_mb in its node configuration); it was "
                "discarded before any training",
            )

    def _load_params(self, session: _Session, params: dict[str, np.ndarray]) -> None:
        self._check_params(session, params)
        session.plan.set_parameters(params)

    def _check_params(self, session: _Session, params: dict[str, Any]) -> None:
        received = params_spec(params)
        if received != session.spec:
            missing = sorted(set(session.spec) - set(received))
            extra = sorted(set(received) - set(session.spec))
            wrong = [
                f"{name}: got {received[name]}, plan has {session.spec[name]}"
                for name in sorted(set(received) & set(session.spec))
                if received[name] != session.spec[name]
            ]
            raise NodeError(
                self.name,
                "received parameters do not match the plan's model "
                f"(missing {missing}, unexpected {extra}, mismatched {wrong})",
            )

    def _prepare_train(self, request: msg.TrainRequest) -> _Session:
        """What a training request needs before its parameters are loaded."""
        session = self.session(request)
        self._rewind(session, request.round_index)
        return session

    def train(self, request: msg.TrainRequest) -> msg.TrainReply:
        """Train the request's parameters on the dataset its tags select (core's
        ``fedplug_node_request``; call it through :meth:`serve`). The reply's parameters are
        views of the plan's."""
        start = time.perf_counter()
        session, loaded = self._prepared_for(request)
        if session is None:
            session = self._prepare_train(request)
        if not loaded:
            self._load_params(session, request.params)
        args = session.args
        if args.seed is not None:
            args = _with_round_seed(args, request.round_index)
        optimizer = self._receive_aux_vars(session.plan, request.aux_vars)
        session.plan.round_index = request.round_index
        result = session.plan.train(session.train, args)
        session.trained_round = request.round_index
        if not math.isfinite(result.loss):
            raise PlanError(
                f"training diverged at round {request.round_index}: loss is {result.loss}; "
                "lower the learning rate or check the data"
            )
        aux_vars = {}
        if optimizer is not None and optimizer.aux_modules:
            if result.n_steps == 0:
                raise PlanError(
                    f"the plan ran zero optimizer steps, so modules {optimizer.module_names} have "
                    "no auxiliary variables to send; give the node training data and steps"
                )
            aux_vars = pack_aux_vars(optimizer.collect_aux_var())
        return msg.TrainReply(
            experiment_id=request.experiment_id,
            round_index=request.round_index,
            node=self.name,
            params=session.plan.parameter_views(),  # encoded by serve() before any change
            n_samples=result.n_samples,
            n_steps=result.n_steps,
            train_loss=float(result.loss),
            duration_s=time.perf_counter() - start,
            aux_vars=aux_vars,
        )

    @staticmethod
    def _rewind(session: _Session, round_index: int) -> None:
        """Keep the node-side optimizer state (moments, ...) as it was when each round began, and
        restore it when a round is asked again: a researcher resumed from its checkpoint repeats
        the round it was killed in, and must find the state that round started from."""
        if session.trained_round is not None and round_index <= session.trained_round:
            if session.snapshot is not None and session.snapshot[0] == round_index:
                _set_optimizer_state(session.plan, session.snapshot[1])
            return
        session.snapshot = (round_index, _optimizer_state(session.plan))

    def _receive_aux_vars(
        self, plan: TrainingPlan, aux_vars: dict[str, msg.AuxVarData]
    ) -> Optimizer | None:
        """Hand the researcher's auxiliary variables to the plan's fedplug.Optimizer, if any."""
        optimizer = plan.node_optimizer()
        if not isinstance(optimizer, Optimizer):
            if aux_vars:
                raise NodeError(
                    self.name,
                    f"the researcher sent auxiliary variables for {sorted(aux_vars)}, but this "
                    f"plan's optimizer is {type(optimizer).__name__}, which declearn modules "
                    "cannot see; use a fedplug.Optimizer with the partner module "
                    "(e.g. modules=['scaffold-client'])",
                )
            return None
        missing = sorted(set(optimizer.aux_modules) - set(aux_vars))
        if missing:
            modules = [optimizer.aux_modules[key] for key in missing]
            raise NodeError(
                self.name,
                f"the plan's optimizer modules {modules} need auxiliary variables {missing} "
                "from the researcher's optimizer, and none were sent; give the experiment an "
                "agg_optimizer with the partner module (e.g. 'scaffold-server')",
            )
        if aux_vars:
            optimizer.process_aux_var(optimizer.unpack_aux_vars(aux_vars))
        return optimizer

    def evaluate(self, request: msg.EvaluateRequest) -> msg.EvaluateReply:
        """Evaluate the request's parameters on the held-out split of the dataset its tags
        select (core's ``fedplug_node_request``; call it through :meth:`serve`)."""
        start = time.perf_counter()
        session, loaded = self._prepared_for(request)
        if session is None:
            session = self.session(request)
        metrics: dict[str, float] = {}
        n_samples = 0
        if session.test is not None:
            if not loaded:
                self._load_params(session, request.params)
            raw = session.plan.evaluate(session.test, session.args)
            metrics = {key: float(value) for key, value in raw.items() if math.isfinite(value)}
            n_samples = len(session.test)
        return msg.EvaluateReply(
            experiment_id=request.experiment_id,
            round_index=request.round_index,
            node=self.name,
            metrics=metrics,
            n_samples=n_samples,
            duration_s=time.perf_counter() - start,
        )


def _writer(target: np.ndarray) -> msg.Sink:
    """A sink writing consecutive elements into ``target`` (C-contiguous)."""
    flat = target.reshape(-1)

    def sink(start: int, values: np.ndarray) -> None:
        flat[start : start + values.size] = values

    return sink


def _optimizer_state(plan: TrainingPlan) -> Any:
    optimizer = plan.node_optimizer()
    if isinstance(optimizer, Optimizer):
        return copy.deepcopy(optimizer.get_state())
    if hasattr(optimizer, "state_dict") and hasattr(optimizer, "load_state_dict"):
        return copy.deepcopy(optimizer.state_dict())  # torch.optim
    return None


def _set_optimizer_state(plan: TrainingPlan, state: Any) -> None:
    if state is None:
        return
    optimizer = plan.node_optimizer()
    if isinstance(optimizer, Optimizer):
        optimizer.set_state(copy.deepcopy(state))
    else:
        optimizer.load_state_dict(copy.deepcopy(state))


def _with_round_seed(args: TrainingArgs, round_index: int) -> TrainingArgs:
    return replace(args, seed=args.seed + 1_000_003 * (round_index + 1))


def _describe(exc: BaseException) -> str:
    hint = ""
    if isinstance(exc, NameError):
        hint = "; a plan shipped as source must declare its imports with add_dependency([...])"
    return describe_plan_error(exc) + hint
