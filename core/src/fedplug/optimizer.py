"""``fedplug.Optimizer``: a thin, validated interface over ``declearn.optimizer.Optimizer``.

The same class serves both sides of a federation:

- node side, a plan sets ``self.optimizer = Optimizer(lr=..., modules=["adam"])``; each step, the
  optimizer asks the ``fedplug_model_adapter`` hook for an adapter of the plan's model, reads its
  gradients and applies declearn's update to it;
- researcher side, ``Experiment(agg_optimizer=Optimizer(lr=1.0, modules=["momentum"]))`` treats
  ``global - aggregated`` as a pseudo-gradient (FedAvgM, FedAdam, FedYogi, ...).

declearn is imported only when an ``Optimizer`` is built: importing it loads all of declearn
(seconds), which ``import fedplug`` and a node's start-up must not pay.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedplug.adapter import ModelAdapter, NumpyAdapter
from fedplug.errors import ConfigError, MessageError, PluginError
from fedplug.messages import AuxVarData
from fedplug.plugins import (
    FedplugPluginManager,
    current_plugin_manager,
    did_you_mean,
    optimizer_kind,
)

if TYPE_CHECKING:
    from fedplug.plan import Params

__all__ = ["ModelAdapter", "NumpyAdapter", "Optimizer", "available", "pack_aux_vars"]

Spec = Any  # a declearn instance, a registered name, or a (name, config) pair

_KINDS = {"module": "modules", "regularizer": "regularizers", "scheduler": "schedulers"}


def pack_aux_vars(aux_vars: dict[str, Any]) -> dict[str, AuxVarData]:
    """The wire form of declearn ``AuxVar`` objects: Vector fields become numpy arrays."""
    from declearn.model.api import Vector

    packed = {}
    for key, aux in aux_vars.items():
        vectors, values = {}, {}
        for name, value in aux.to_dict().items():
            if isinstance(value, Vector):
                vectors[name] = {coef: _to_numpy(array) for coef, array in value.coefs.items()}
            elif isinstance(value, (set, tuple)):
                values[name] = sorted(value)
            else:
                values[name] = value
        packed[key] = AuxVarData(cls=type(aux).__name__, vectors=vectors, values=values)
    return packed


def pack_state(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """A JSON-able copy of a declearn state tree whose Vectors are moved into ``arrays``
    (as ``{"__vector__": {coef: key}}``), so that a state saves without pickle."""
    from declearn.model.api import Vector

    if isinstance(obj, Vector):
        keys = {}
        for coef, value in obj.coefs.items():
            keys[coef] = f"{path}/{coef}"
            arrays[keys[coef]] = _to_numpy(value)
        return {"__vector__": keys}
    if isinstance(obj, dict):
        return {str(k): pack_state(v, arrays, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [pack_state(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        arrays[path] = obj
        return {"__array__": path}
    return obj


def unpack_state(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`pack_state` (Vectors come back as ``NumpyVector``)."""
    from declearn.model.sklearn import NumpyVector

    if isinstance(obj, dict):
        if set(obj) == {"__vector__"}:
            return NumpyVector(
                {coef: np.array(arrays[key]) for coef, key in obj["__vector__"].items()}
            )
        if set(obj) == {"__array__"}:
            return np.array(arrays[obj["__array__"]])
        return {k: unpack_state(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, arrays) for v in obj]
    return obj


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a framework tensor (torch), possibly on a GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def available(kind: str, plugin_manager: FedplugPluginManager | None = None) -> dict[str, type]:
    """The registered declearn plug-ins of ``kind`` (``"module"``, ``"regularizer"`` or
    ``"scheduler"``) by name, from ``fedplug_register_optimizer_modules``: core's declearn names
    and those of installed plugins. Resolving them imports them (and declearn)."""
    registry = (plugin_manager or current_plugin_manager()).optimizer_modules
    found = {}
    for name in registry:
        try:
            cls = registry[name]
        except PluginError:
            continue  # a broken entry is reported when it is used by name
        if optimizer_kind(cls) == kind:
            found[name] = cls
    return found


def _resolve(kind: str, name: str, pm: FedplugPluginManager) -> type:
    """The declearn class registered as ``name``, checked to be a plug-in of ``kind``."""
    registry = pm.optimizer_modules
    if name not in registry:
        found = available(kind, pm)
        names = ", ".join(sorted(found))
        raise ConfigError(
            f"unknown optimizer {kind} {name!r}{did_you_mean(name, found)}; available: {names}. "
            f"A third-party {kind} comes "
            "from an installed plugin (fedplug_register_optimizer_modules); `fedplug optimizers` "
            "lists every name, `fedplug plugins` which plugin provides it"
        )
    cls = registry[name]
    actual = optimizer_kind(cls)
    if actual != kind:
        raise ConfigError(
            f"optimizer {actual} {name!r} was given as a {kind}; give it in "
            f"{_KINDS[actual]}=[...] instead"
        )
    return cls


def _parse(kind: str, base: type, specs: Sequence[Spec], pm: FedplugPluginManager) -> list[Any]:
    """Instantiate declearn plug-ins from instances, names or (name, config) pairs."""
    if isinstance(specs, str) or (
        isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[1], dict)
    ):
        specs = [specs]  # a single spec given where a sequence is expected
    out = []
    for spec in specs:
        if isinstance(spec, base):
            out.append(spec)
            continue
        if isinstance(spec, str):
            name, config = spec, {}
        elif (
            isinstance(spec, (tuple, list))
            and len(spec) == 2
            and isinstance(spec[0], str)
            and isinstance(spec[1], dict)
        ):
            name, config = spec
        else:
            raise ConfigError(
                f"an optimizer {kind} must be a declearn instance, a name or a (name, config) pair, "
                f"got {spec!r}"
            )
        cls = _resolve(kind, name, pm)
        try:
            out.append(cls.from_config(dict(config)))
        except (TypeError, ValueError, KeyError) as exc:
            params = ", ".join(p for p in inspect.signature(cls.__init__).parameters if p != "self")
            raise ConfigError(
                f"invalid config {config!r} for optimizer {kind} {name!r}: {exc}; "
                f"its parameters are: {params}"
            ) from exc
    return out


def _parse_rate(what: str, value: Any, pm: FedplugPluginManager) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"optimizer {what} must be a number or a scheduler, got {value!r}")
    if isinstance(value, (int, float)):
        if not np.isfinite(value) or value < 0 or (what == "lr" and value == 0):
            raise ConfigError(f"optimizer {what} must be a positive finite number, got {value!r}")
        return float(value)
    from declearn.optimizer.schedulers import Scheduler

    return _parse("scheduler", Scheduler, [value], pm)[0]


class Optimizer:
    """A declearn optimizer: learning rate, decoupled weight decay, modules and regularizers.

    :param lr: learning rate (float), or a declearn scheduler (instance or ``(name, config)``).
    :param decay: decoupled weight-decay rate (float or scheduler).
    :param modules: gradient-transform modules applied in order: declearn ``OptiModule``
        instances, registered names (``"adam"``) or ``(name, config)`` pairs
        (``("momentum", {"beta": 0.9})``). :meth:`available_modules` lists the names.
    :param regularizers: loss regularizers (``"fedprox"``, ``"lasso"``, ``"ridge"``), same forms.
    :param plugin_manager: where names are resolved (``fedplug_register_optimizer_modules``) and
        model adapters found; by default the active one (the node's or the experiment's, when
        a plan builds its optimizer), else one with every installed plugin.
    """

    def __init__(
        self,
        lr: Any,
        decay: Any = 0.0,
        modules: Sequence[Spec] = (),
        regularizers: Sequence[Spec] = (),
        *,
        plugin_manager: FedplugPluginManager | None = None,
    ) -> None:
        from declearn.optimizer import Optimizer as DeclearnOptimizer
        from declearn.optimizer.modules import OptiModule
        from declearn.optimizer.regularizers import Regularizer

        pm = plugin_manager or current_plugin_manager()
        #: regularizers given by bare name, i.e. with their default settings
        self.implicit_regularizers = [
            spec if isinstance(spec, str) else spec[0]
            for spec in ([regularizers] if isinstance(regularizers, str) else regularizers)
            if isinstance(spec, str)
            or (isinstance(spec, (tuple, list)) and len(spec) == 2 and not spec[1])
        ]
        self._optim = DeclearnOptimizer(
            lrate=_parse_rate("lr", lr, pm),
            w_decay=_parse_rate("decay", decay, pm),
            modules=_parse("module", OptiModule, modules, pm),
            regularizers=_parse("regularizer", Regularizer, regularizers, pm),
        )
        self._pm: FedplugPluginManager | None = pm
        self._adapters: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a plugin manager does not travel; the receiving process's active one is used there
        return {**self.__dict__, "_pm": None, "_adapters": {}}

    @property
    def plugin_manager(self) -> FedplugPluginManager:
        if self._pm is None:
            self._pm = current_plugin_manager()
        return self._pm

    @classmethod
    def from_dict(
        cls, spec: dict[str, Any], plugin_manager: FedplugPluginManager | None = None
    ) -> Optimizer:
        """Build from a JSON-like dict ``{"lr": ..., "decay": ..., "modules": [...],
        "regularizers": [...]}`` (``[name, config]`` lists stand for pairs), as found in
        ``model_args`` that travel to nodes and in checkpoints."""
        if not isinstance(spec, dict):
            raise ConfigError(f"an optimizer spec must be a dict, got {spec!r}")
        unknown = sorted(set(spec) - {"lr", "decay", "modules", "regularizers"})
        if unknown:
            raise ConfigError(
                f"unknown optimizer setting {unknown[0]!r}; known: lr, decay, modules, regularizers"
            )

        def pairs(items: Sequence[Spec] | str) -> list[Spec]:
            items = [items] if isinstance(items, str) else items
            return [tuple(item) if isinstance(item, list) else item for item in items]

        return cls(
            lr=spec.get("lr", 0.01),
            decay=spec.get("decay", 0.0),
            modules=pairs(spec.get("modules", [])),
            regularizers=pairs(spec.get("regularizers", [])),
            plugin_manager=plugin_manager,
        )

    # -- what exists ----------------------------------------------------------------------------
    @staticmethod
    def available_modules(plugin_manager: FedplugPluginManager | None = None) -> dict[str, type]:
        """declearn ``OptiModule`` classes by registered name (core's and installed plugins')."""
        return available("module", plugin_manager)

    @staticmethod
    def available_regularizers(
        plugin_manager: FedplugPluginManager | None = None,
    ) -> dict[str, type]:
        """declearn ``Regularizer`` classes by registered name."""
        return available("regularizer", plugin_manager)

    @staticmethod
    def available_schedulers(
        plugin_manager: FedplugPluginManager | None = None,
    ) -> dict[str, type]:
        """declearn learning-rate ``Scheduler`` classes by registered name."""
        return available("scheduler", plugin_manager)

    # -- introspection --------------------------------------------------------------------------
    @property
    def declearn(self) -> Any:
        """The wrapped ``declearn.optimizer.Optimizer``."""
        return self._optim

    @property
    def lr(self) -> float:
        return self._optim.lrate

    @property
    def module_names(self) -> list[str]:
        return [module.name for module in self._optim.modules]

    @property
    def regularizer_names(self) -> list[str]:
        return [reg.name for reg in self._optim.regularizers]

    def __repr__(self) -> str:
        config = self._optim.get_config()  # a scheduler shows as its (name, config) spec
        return (
            f"Optimizer(lr={config['lrate']!r}, decay={config['w_decay']!r}, "
            f"modules={self.module_names!r}, regularizers={self.regularizer_names!r})"
        )

    def set_lr(self, lr: float) -> None:
        """Use a constant learning rate ``lr`` from now on, keeping module states (moments...)."""
        lr = _parse_rate("lr", lr, self.plugin_manager)
        config = self._optim.get_config()
        if config["lrate"] == lr:
            return
        # the same module and regularizer instances: their settings and states carry over
        self._optim = type(self._optim)(
            lrate=lr,
            w_decay=config["w_decay"],
            regularizers=self._optim.regularizers,
            modules=self._optim.modules,
        )

    # -- node side ------------------------------------------------------------------------------
    def adapter(self, model: Any, plugin_manager: FedplugPluginManager | None = None) -> Any:
        """The adapter of ``model`` from the ``fedplug_model_adapter`` hook (cached per model)."""
        key = id(model)
        if key not in self._adapters:
            pm = plugin_manager or self.plugin_manager
            self._adapters = {key: (model, pm.model_adapter(model))}
        return self._adapters[key][1]

    def start_round(self) -> None:
        """Tell modules, regularizers and schedulers that a round starts (e.g. FedProx anchors)."""
        self._optim.start_round()
        # declearn computes the next rates right after each step, i.e. before the round counter
        # moves: refresh them so that a round-level schedule applies its new round's value from
        # the round's first step (declearn < 3 keeps them in these attributes).
        optim = self._optim
        for scheduler, attr in (
            (optim._lrate_scheduler, "_lrate"),
            (optim._wrate_scheduler, "_wrate"),
        ):
            current = scheduler.compute_value(
                step=max(scheduler.steps - 1, 0), round_=scheduler.rounds
            )
            setattr(optim, attr, current)

    def step(self, model: Any, plugin_manager: FedplugPluginManager | None = None) -> None:
        """Apply one update to ``model`` from the gradients of its last backward pass.

        Plain SGD (no module, no regularizer, no weight decay at this step) on an adapter with
        ``sgd_step(lr)`` is applied by the adapter in place, the same arithmetic as declearn's
        ``params + (-1.0 * (lr * grads))`` without building declearn vectors (a small model's
        step costs several times less); the rates then move on as declearn's do."""
        adapter = self.adapter(model, plugin_manager)
        optim = self._optim
        sgd_step = getattr(adapter, "sgd_step", None)
        if sgd_step is not None and not (optim.modules or optim.regularizers or optim.w_decay):
            sgd_step(optim.lrate)
            optim._update_rates()
            return
        optim.apply_gradients(adapter, adapter.gradients())

    # -- researcher side ------------------------------------------------------------------------
    def step_global(self, global_params: Params, aggregated: Params) -> Params:
        """New global parameters from the pseudo-gradient ``global - aggregated``."""
        params = {name: np.array(value, copy=True) for name, value in global_params.items()}
        grads = {name: params[name] - aggregated[name] for name in params}
        adapter = NumpyAdapter(params, grads)
        self._optim.apply_gradients(adapter, adapter.gradients())
        return params

    # -- auxiliary variables (Scaffold and the like) ---------------------------------------------
    @property
    def aux_modules(self) -> dict[str, str]:
        """Modules that exchange auxiliary variables with a partner on the other side of the
        federation: auxiliary-variable name (e.g. ``"scaffold"``) -> module name."""
        return {
            module.aux_name: module.name
            for module in self._optim.modules
            if getattr(module, "aux_name", None)
        }

    def collect_aux_var(self) -> dict[str, Any]:
        """declearn ``AuxVar`` objects to send to the other side, keyed by auxiliary name."""
        return self._optim.collect_aux_var()

    def process_aux_var(self, aux_vars: dict[str, Any]) -> None:
        """Feed (summed) ``AuxVar`` objects received from the other side to their modules."""
        unknown = sorted(set(aux_vars) - set(self.aux_modules))
        if unknown:
            raise ConfigError(
                f"received auxiliary variables for {unknown}, but this optimizer's modules "
                f"{self.module_names} exchange none under that name; add the partner module"
            )
        try:
            self._optim.process_aux_var(aux_vars)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"auxiliary variables could not be processed: {exc}") from exc

    def unpack_aux_vars(self, data: dict[str, AuxVarData]) -> dict[str, Any]:
        """Rebuild declearn ``AuxVar`` objects from their wire form, for this optimizer's modules.

        Only ``AuxVar`` classes registered with declearn are built, and only for auxiliary
        names this optimizer's modules use; vectors arrive as ``NumpyVector`` (declearn's torch
        vectors operate with them)."""
        from declearn.model.sklearn import NumpyVector
        from declearn.utils import access_types_mapping

        allowed = access_types_mapping("AuxVar")
        out = {}
        for key, item in data.items():
            if key not in self.aux_modules:
                raise MessageError(
                    f"auxiliary variables {key!r} were received, but this optimizer's modules "
                    f"{self.module_names} exchange none under that name"
                )
            cls = allowed.get(item.cls)
            if cls is None:
                raise MessageError(
                    f"auxiliary variables {key!r} have type {item.cls!r}, which is not a "
                    f"registered declearn AuxVar ({', '.join(sorted(allowed))})"
                )
            # writable copies: modules may update their state in place
            vectors = {
                name: NumpyVector({coef: np.array(arr) for coef, arr in vector.items()})
                for name, vector in item.vectors.items()
            }
            fields = {**item.values, **vectors}
            try:
                out[key] = cls.from_dict(fields)
            except (TypeError, ValueError, KeyError) as exc:
                raise MessageError(f"auxiliary variables {key!r} are malformed: {exc}") from exc
        return out

    # -- state ----------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return self._optim.get_config()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-like spec :meth:`from_dict` rebuilds this optimizer from (fresh state), with
        every setting explicit: what travels to nodes in ``model_args``."""
        config = self._optim.get_config()

        def plain(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [plain(item) for item in value]
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            return value

        return {
            "lr": plain(config["lrate"]),
            "decay": plain(config["w_decay"]),
            "modules": plain(config["modules"]),
            "regularizers": plain(config["regularizers"]),
        }

    def get_state(self) -> dict[str, Any]:
        """Module states (moments, ...) and scheduler positions, for checkpoints."""
        return self._optim.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self._optim.set_state(state)
        except (KeyError, RuntimeError) as exc:
            raise ConfigError(f"optimizer state does not match its modules: {exc}") from exc
