"""The plugin host: discovery through entry points, isolation of broken plugins, and registries.

A plugin is a module registered under the ``fedplug`` entry-point group; see
:mod:`fedplug.hookspecs` for the hooks it may implement. :func:`get_plugin_manager` builds a fresh
manager each call (no module-level manager), so tests and embedding applications never share one.
Core's own behaviour comes from the built-in plugins of :data:`DEFAULT_PLUGINS`, registered by
module name exactly as a third-party plugin would be.

Code that runs on behalf of a manager (a node serving a request, an experiment building its plan)
makes it the *active* one (:func:`active`), so that what plan code builds without being handed a
manager, such as a :class:`fedplug.Optimizer`, resolves names through it
(:func:`current_plugin_manager`).

Environment variables:

- ``FEDPLUG_DISABLE_PLUGINS=a,b``: do not load the entry points named ``a`` and ``b``.
- ``FEDPLUG_STRICT_PLUGINS=1``: a plugin that fails to load is fatal (:class:`PluginError`) instead
  of being reported with a warning and skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pluggy

from fedplug import hookspecs
from fedplug.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "fedplug"
CORE_DISTRIBUTION = "fedplug"

#: core's behaviour, one concern per module, registered under the module's name
DEFAULT_PLUGINS = (
    "fedplug.builtin.plans",
    "fedplug.builtin.aggregators",
    "fedplug.builtin.datasets",
    "fedplug.builtin.adapters",
    "fedplug.builtin.optimizers",
    "fedplug.builtin.transports",
    "fedplug.builtin.serving",
    "fedplug.builtin.validation",
    "fedplug.builtin.commands",
)

#: registry kind -> the contribution hook that fills it
REGISTRY_HOOKS: dict[str, str] = {
    "training_plans": "fedplug_register_training_plans",
    "aggregators": "fedplug_register_aggregators",
    "dataset_types": "fedplug_register_dataset_types",
    "secagg_schemes": "fedplug_register_secagg_schemes",
    "optimizer_modules": "fedplug_register_optimizer_modules",
    "transports": "fedplug_register_transports",
    "commands": "fedplug_register_commands",
    "trackers": "fedplug_register_trackers",
}

#: registry kind -> what one of its entries is called in messages
KIND_NAMES: dict[str, str] = {
    "training_plans": "training plan",
    "aggregators": "aggregator",
    "dataset_types": "dataset type",
    "secagg_schemes": "secure-aggregation scheme",
    "optimizer_modules": "optimizer module",
    "transports": "transport",
    "commands": "command",
    "trackers": "tracker",
}


def did_you_mean(name: object, candidates: Iterable[str]) -> str:
    """``" (did you mean 'fedavg'?)"`` when ``name`` is close to one or more of ``candidates``
    (a misspelling, or a part of a longer name), else ``""``."""
    if not isinstance(name, str) or not name:
        return ""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    lowered = name.lower()
    for candidate in candidates:  # 'logreg' for 'numpy-logreg', 'FedAvg' for 'fedavg'
        if candidate not in close and (
            candidate.lower() == lowered or (len(name) >= 3 and lowered in candidate.lower())
        ):
            close.append(candidate)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close[:3])}?)"


@dataclass
class PluginInfo:
    """What ``fedplug plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry(Mapping[str, Any]):
    """Named objects contributed by plugins through one ``fedplug_register_*`` hook.

    An entry may be registered as the object itself or, to keep a framework's import out of
    start-up, as an import path ``"package.module:attribute"``, imported on first access.
    Entries are type-checked when they are resolved.
    """

    def __init__(self, kind: str, check: Callable[[str, Any], str | None]) -> None:
        self.kind = kind
        #: what one entry is called in messages ("training plan", "aggregator", ...)
        self.noun = KIND_NAMES.get(kind, kind.replace("_", " "))
        self._check = check
        self._entries: dict[str, Any] = {}
        self._paths: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        #: names registered more than once (only kept by a lenient build): name -> plugins
        self.conflicts: dict[str, list[str]] = {}

    def add(self, name: str, obj: Any, owner: str, lenient: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {owner!r} registered {'an' if self.noun[0] in 'aeiou' else 'a'} "
                f"{self.noun} with an invalid name {name!r}; "
                "names must be non-empty strings"
            )
        if name in self._owners:
            if lenient:
                self.conflicts.setdefault(name, [self._owners[name]]).append(owner)
                return
            raise PluginError(
                f"{self.noun} name {name!r} is registered by both plugin "
                f"{self._owners[name]!r} and plugin {owner!r}; disable one of them with "
                "FEDPLUG_DISABLE_PLUGINS"
            )
        if isinstance(obj, str):
            if obj.count(":") != 1:
                raise PluginError(
                    f"plugin {owner!r} registered {self.noun} {name!r} as {obj!r}; an "
                    "import path must look like 'package.module:attribute'"
                )
            self._paths[name] = obj
        else:
            self._validate(name, obj, owner)
            self._entries[name] = obj
        self._owners[name] = owner

    def _validate(self, name: str, obj: Any, owner: str) -> None:
        problem = self._check(name, obj)
        if problem is not None:
            raise PluginError(
                f"plugin {owner!r} registered {self.noun} {name!r} as {obj!r}; it must be {problem}"
            )

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        if name not in self._owners:
            self._unknown(name)
        return self._owners[name]

    def names_of(self, owner: str) -> list[str]:
        """The names ``owner`` registered, sorted."""
        return sorted(name for name, by in self._owners.items() if by == owner)

    def name_of(self, obj: Any) -> str | None:
        """The name under which ``obj`` is registered, or None (imports nothing)."""
        path = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"
        for name in self._owners:
            if self._entries.get(name) is obj or self._paths.get(name) == path:
                return name
        return None

    def __getitem__(self, name: str) -> Any:
        if name not in self._owners:
            self._unknown(name)
        if name not in self._entries:
            path, owner = self._paths[name], self._owners[name]
            module_name, _, attr = path.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except Exception as exc:
                raise PluginError(
                    f"{self.noun} {name!r} of plugin {owner!r} cannot be imported from "
                    f"{path!r}: {type(exc).__name__}: {exc}"
                ) from exc
            self._validate(name, obj, owner)
            self._entries[name] = obj
        return self._entries[name]

    def _unknown(self, name: str) -> None:
        available = ", ".join(sorted(self._owners)) or "none"
        raise PluginError(
            f"no {self.noun} named {name!r} is registered{did_you_mean(name, self._owners)} "
            f"(available: {available}); is the plugin that provides it installed? "
            "`fedplug plugins` lists what is loaded"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._owners

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)


def _check_plan(name: str, obj: Any) -> str | None:
    from fedplug.plan import TrainingPlan

    if inspect.isclass(obj) and issubclass(obj, TrainingPlan):
        return None
    return "a subclass of fedplug.plan.TrainingPlan"


def _check_callable(name: str, obj: Any) -> str | None:
    return None if callable(obj) else "a class or a factory (callable)"


def _check_optimizer_plugin(name: str, obj: Any) -> str | None:
    """A declearn OptiModule, Regularizer or Scheduler class whose declearn name is ``name``."""
    kind = optimizer_kind(obj)
    if kind is None:
        return "a declearn OptiModule, Regularizer or Scheduler class"
    if getattr(obj, "name", None) != name:
        return (
            f"registered under its declearn name {getattr(obj, 'name', None)!r} (declearn "
            "rebuilds optimizers from their modules' names)"
        )
    return None


def optimizer_kind(obj: Any) -> str | None:
    """``"module"``, ``"regularizer"`` or ``"scheduler"`` for a declearn plug-in class, else None.

    Imports nothing: a class that is one of declearn's was made after declearn was imported."""
    if not inspect.isclass(obj) or "declearn" not in sys.modules:
        return None
    from declearn.optimizer.modules import OptiModule
    from declearn.optimizer.regularizers import Regularizer
    from declearn.optimizer.schedulers import Scheduler

    for kind, base in (("module", OptiModule), ("regularizer", Regularizer)):
        if issubclass(obj, base):
            return kind
    return "scheduler" if issubclass(obj, Scheduler) else None


_TYPE_CHECKS: dict[str, Callable[[str, Any], str | None]] = {
    "training_plans": _check_plan,
    "aggregators": _check_callable,
    "dataset_types": _check_callable,
    "secagg_schemes": _check_callable,
    "optimizer_modules": _check_optimizer_plugin,
    "transports": _check_callable,
    "commands": _check_callable,
    "trackers": _check_callable,
}


class FedplugPluginManager(pluggy.PluginManager):
    """A pluggy manager with fedplug's registries and load reports."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.load_errors: dict[str, str] = {}
        self.disabled: set[str] = set()
        #: whether installed plugins were loaded (worker processes rebuild the manager alike)
        self.entry_points_loaded = False
        self._distributions: dict[str, tuple[str | None, str | None]] = {}
        self._registries: dict[str, Registry] = {}

    # registries are built lazily and rebuilt when the set of plugins changes
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._registries.clear()
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._registries.clear()
        return super().unregister(plugin, name)

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (``training_plans``, ``aggregators``, ...), built on first use."""
        if kind not in REGISTRY_HOOKS:
            raise PluginError(f"unknown registry kind {kind!r}; known: {', '.join(REGISTRY_HOOKS)}")
        if kind not in self._registries:
            self._registries[kind] = self._build_registry(kind)
        return self._registries[kind]

    def lenient_registry(self, kind: str) -> Registry:
        """The registry of ``kind`` built even when two plugins register one name: the first
        plugin keeps it and :attr:`Registry.conflicts` lists the others (for listings and the
        command line, which must work to report the conflict)."""
        if kind not in REGISTRY_HOOKS:
            raise PluginError(f"unknown registry kind {kind!r}; known: {', '.join(REGISTRY_HOOKS)}")
        return self._build_registry(kind, lenient=True)

    @property
    def training_plans(self) -> Registry:
        return self.registry("training_plans")

    @property
    def aggregators(self) -> Registry:
        return self.registry("aggregators")

    @property
    def dataset_types(self) -> Registry:
        return self.registry("dataset_types")

    @property
    def secagg_schemes(self) -> Registry:
        return self.registry("secagg_schemes")

    @property
    def optimizer_modules(self) -> Registry:
        return self.registry("optimizer_modules")

    @property
    def transports(self) -> Registry:
        return self.registry("transports")

    @property
    def commands(self) -> Registry:
        return self.registry("commands")

    @property
    def trackers(self) -> Registry:
        return self.registry("trackers")

    def _build_registry(self, kind: str, lenient: bool = False) -> Registry:
        registry = Registry(kind, _TYPE_CHECKS[kind])
        hook = getattr(self.hook, REGISTRY_HOOKS[kind])
        # Each implementation is called on its own so that every entry is attributed to its plugin.
        for impl in reversed(hook.get_hookimpls()):
            owner = impl.plugin_name

            def register(name: str, obj: Any, _owner: str = owner) -> None:
                registry.add(name, obj, _owner, lenient)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {owner!r} failed in {REGISTRY_HOOKS[kind]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return registry

    def conflicts(self) -> list[str]:
        """Every name that two plugins register in one registry, as sentences (empty: none)."""
        found = []
        for kind in REGISTRY_HOOKS:
            registry = self._build_registry(kind, lenient=True)
            for name, owners in sorted(registry.conflicts.items()):
                plugins = " and ".join(repr(owner) for owner in sorted(owners))
                found.append(f"{KIND_NAMES[kind]} name {name!r} is registered by {plugins}")
        return found

    def distribution(self, plugin: str) -> str | None:
        """The distribution that installed plugin ``plugin`` (core's for its built-ins)."""
        return self._distributions.get(plugin, (None, None))[0]

    def model_adapter(self, model: Any) -> Any:
        """Return the adapter a plugin offers for ``model``, or raise a :class:`PluginError`."""
        adapter = self.hook.fedplug_model_adapter(model=model)
        if adapter is None:
            raise PluginError(
                f"no installed plugin can adapt a model of type {type(model).__qualname__} to "
                "fedplug.Optimizer; install the plugin for its framework (fedplug-torch, "
                "fedplug-sklearn) or use the framework's native optimizer"
            )
        return adapter

    def plugin_infos(self) -> list[PluginInfo]:
        """One :class:`PluginInfo` per loaded, failed or disabled plugin, sorted by name, with
        the names each loaded plugin registers (per registry kind)."""
        registries = {kind: self._build_registry(kind, lenient=True) for kind in REGISTRY_HOOKS}
        infos = []
        for name, plugin in self.list_name_plugin():
            hooks = sorted(caller.name for caller in self.get_hookcallers(plugin) or ())
            dist, version = self._distributions.get(name, (None, None))
            registers = {
                kind: names
                for kind, registry in registries.items()
                if (names := _names_by(registry, name))
            }
            infos.append(
                PluginInfo(
                    name=name, distribution=dist, version=version, hooks=hooks, registers=registers
                )
            )
        for name, error in self.load_errors.items():
            dist, version = self._distributions.get(name, (None, None))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, error=error))
        for name in self.disabled:
            dist, version = self._distributions.get(name, (None, None))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, disabled=True))
        return sorted(infos, key=lambda info: info.name)

    def load_entry_points(self, *, disabled: set[str], strict: bool) -> None:
        """Load every ``fedplug`` entry point; isolate (or, if ``strict``, raise on) failures."""
        self.entry_points_loaded = True
        for ep, dist_name, version in _installed_entry_points(
            importlib.metadata.entry_points, tuple(sys.path)
        ):
            self._distributions[ep.name] = (dist_name, version)
            if ep.name in disabled:
                self.disabled.add(ep.name)
                continue
            if self.has_plugin(ep.name) or ep.name in self.load_errors:
                continue
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise PluginError(
                        f"plugin {ep.name!r} ({ep.value}) failed to load: {message}"
                    ) from exc
                self.load_errors[ep.name] = message
                warnings.warn(
                    f"fedplug plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                    f"{message} (set FEDPLUG_STRICT_PLUGINS=1 to make this fatal)",
                    RuntimeWarning,
                    stacklevel=3,
                )

    # -- the same plugins in another process ----------------------------------------------------
    def portable(self) -> PortablePlugins:
        """What a worker process needs to rebuild this manager with the same plugins: installed
        plugins are found again through their entry points, built-ins by module name, and plugins
        registered in this process only are sent along (a module by its name, an object as it is:
        multiprocessing's spawn carries it to its own worker, never a peer).

        A plugin that cannot travel is refused by name with a :class:`ConfigError`, rather than
        silently missing in the worker."""
        from multiprocessing.reduction import ForkingPickler  # only for worker processes

        local: list[tuple[str, str, Any]] = []
        for name, plugin in self.list_name_plugin():
            if name in DEFAULT_PLUGINS or name in self._distributions:
                continue
            if isinstance(plugin, types.ModuleType):
                if plugin.__spec__ is None or sys.modules.get(plugin.__name__) is not plugin:
                    raise _not_portable(name, "a module that cannot be imported by name")
                local.append((name, "module", plugin.__name__))
                continue
            try:  # it travels with the worker's arguments: refuse it here, by name, if it cannot
                ForkingPickler.dumps(plugin)  # as spawn will send it
            except Exception as exc:
                raise _not_portable(name, f"an object that cannot be pickled ({exc})") from None
            local.append((name, "object", plugin))
        kept = {name for name, _ in self.list_name_plugin()}
        return PortablePlugins(self.entry_points_loaded, sorted(kept), local)


@dataclass
class PortablePlugins:
    """A plugin manager's plugins as they travel to a worker process (:meth:`rebuild` there)."""

    entry_points: bool
    names: list[str]
    local: list[tuple[str, str, Any]]

    def rebuild(self) -> FedplugPluginManager:
        pm = get_plugin_manager(load_entry_points=self.entry_points)
        for name, _ in list(pm.list_name_plugin()):
            if name not in self.names:
                pm.unregister(name=name)
        for name, kind, value in self.local:
            plugin = importlib.import_module(value) if kind == "module" else value
            pm.register(plugin, name=name)
        return pm


def _not_portable(name: str, what: str) -> ConfigError:
    return ConfigError(
        f"plugin {name!r} is registered in this process only and is {what}, so worker processes "
        "(processes=True) cannot load it; define it at module level in an importable module, "
        "install it with an entry point, or run the nodes in this process (processes=False)"
    )


def _names_by(registry: Registry, owner: str) -> list[str]:
    names = set(registry.names_of(owner))
    names |= {name for name, owners in registry.conflicts.items() if owner in owners}
    return sorted(names)


@functools.lru_cache(maxsize=8)
def _installed_entry_points(
    finder: Callable[..., Any], search_path: tuple[str, ...]
) -> tuple[tuple[importlib.metadata.EntryPoint, str | None, str | None], ...]:
    """The ``fedplug`` entry points with their distribution's name and version.

    Reading installed metadata costs milliseconds and every ``Node()`` builds a plugin manager,
    so the scan is cached per metadata finder and ``sys.path`` (what it depends on).
    """
    found = []
    for ep in finder(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.append((ep, dist.metadata["Name"] if dist else None, dist.version if dist else None))
    return tuple(found)


def _env_set(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def get_plugin_manager(*, load_entry_points: bool = True) -> FedplugPluginManager:
    """Build a plugin manager with fedplug's built-in plugins and, by default, every installed
    plugin.

    :param load_entry_points: load the plugins installed under the ``fedplug`` entry-point group
        (honouring ``FEDPLUG_DISABLE_PLUGINS`` and ``FEDPLUG_STRICT_PLUGINS``).
    """
    pm = FedplugPluginManager()
    version = _version(CORE_DISTRIBUTION)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        pm._distributions[module_name] = (CORE_DISTRIBUTION, version)
    if load_entry_points:
        strict = os.environ.get("FEDPLUG_STRICT_PLUGINS", "").strip() not in ("", "0")
        pm.load_entry_points(disabled=_env_set("FEDPLUG_DISABLE_PLUGINS"), strict=strict)
    return pm


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- the active manager -------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[FedplugPluginManager | None] = contextvars.ContextVar(
    "fedplug_active_plugin_manager", default=None
)


@contextlib.contextmanager
def active(pm: FedplugPluginManager) -> Iterator[FedplugPluginManager]:
    """Make ``pm`` the manager that code run inside the block resolves names through (this
    thread or task only)."""
    token = _ACTIVE.set(pm)
    try:
        yield pm
    finally:
        _ACTIVE.reset(token)


def current_plugin_manager() -> FedplugPluginManager:
    """The active manager (:func:`active`), else a new one with every installed plugin."""
    return _ACTIVE.get() or get_plugin_manager()
