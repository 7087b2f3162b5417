"""The plugin host: discovery through entry points, isolation of broken plugins, and registries.

A plugin is a module registered under the ``fedplug`` entry-point group; see
:mod:`fedplug.hookspecs` for the hooks it may implement. :func:`get_plugin_manager` builds a fresh
manager each call (no module-level state), so tests and embedding applications never share one.

Environment variables:

- ``FEDPLUG_DISABLE_PLUGINS=a,b``: do not load the entry points named ``a`` and ``b``.
- ``FEDPLUG_STRICT_PLUGINS=1``: a plugin that fails to load is fatal (:class:`PluginError`) instead
  of being reported with a warning and skipped.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pluggy

from fedplug import hookspecs
from fedplug.errors import PluginError

ENTRY_POINT_GROUP = "fedplug"
BUILTIN_NAME = "fedplug"

# registry kind -> (hook name, what a registered object must be, description for messages)
REGISTRY_HOOKS: dict[str, str] = {
    "training_plans": "fedplug_register_training_plans",
    "aggregators": "fedplug_register_aggregators",
    "dataset_types": "fedplug_register_dataset_types",
    "secagg_schemes": "fedplug_register_secagg_schemes",
}


@dataclass
class PluginInfo:
    """What ``fedplug plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
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

    def __init__(self, kind: str, check: Callable[[Any], str | None]) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, Any] = {}
        self._paths: dict[str, str] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, obj: Any, owner: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {owner!r} registered a {self.kind} entry with an invalid name {name!r}; "
                "names must be non-empty strings"
            )
        if name in self._owners:
            raise PluginError(
                f"{self.kind} name {name!r} is registered by both plugin {self._owners[name]!r} "
                f"and plugin {owner!r}; disable one of them with FEDPLUG_DISABLE_PLUGINS"
            )
        if isinstance(obj, str):
            if obj.count(":") != 1:
                raise PluginError(
                    f"plugin {owner!r} registered {self.kind} entry {name!r} as {obj!r}; an "
                    "import path must look like 'package.module:attribute'"
                )
            self._paths[name] = obj
        else:
            self._validate(name, obj, owner)
            self._entries[name] = obj
        self._owners[name] = owner

    def _validate(self, name: str, obj: Any, owner: str) -> None:
        problem = self._check(obj)
        if problem is not None:
            raise PluginError(
                f"plugin {owner!r} registered {self.kind} entry {name!r} as {obj!r}; "
                f"it must be {problem}"
            )

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        if name not in self._owners:
            self._unknown(name)
        return self._owners[name]

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
                    f"{self.kind} entry {name!r} of plugin {owner!r} cannot be imported from "
                    f"{path!r}: {type(exc).__name__}: {exc}"
                ) from exc
            self._validate(name, obj, owner)
            self._entries[name] = obj
        return self._entries[name]

    def _unknown(self, name: str) -> None:
        available = ", ".join(sorted(self._owners)) or "none"
        raise PluginError(
            f"no {self.kind} named {name!r} is registered (available: {available}); "
            "is the plugin that provides it installed? `fedplug plugins` lists what is loaded"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._owners

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)


def _check_plan(obj: Any) -> str | None:
    from fedplug.plan import TrainingPlan

    if inspect.isclass(obj) and issubclass(obj, TrainingPlan):
        return None
    return "a subclass of fedplug.plan.TrainingPlan"


def _check_callable(obj: Any) -> str | None:
    return None if callable(obj) else "a class or a factory (callable)"


_TYPE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "training_plans": _check_plan,
    "aggregators": _check_callable,
    "dataset_types": _check_callable,
    "secagg_schemes": _check_callable,
}


class FedplugPluginManager(pluggy.PluginManager):
    """A pluggy manager with fedplug's registries and load reports."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.load_errors: dict[str, str] = {}
        self.disabled: set[str] = set()
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

    def _build_registry(self, kind: str) -> Registry:
        registry = Registry(kind, _TYPE_CHECKS[kind])
        hook = getattr(self.hook, REGISTRY_HOOKS[kind])
        # Each implementation is called on its own so that every entry is attributed to its plugin.
        for impl in reversed(hook.get_hookimpls()):
            owner = impl.plugin_name

            def register(name: str, obj: Any, _owner: str = owner) -> None:
                registry.add(name, obj, _owner)

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
        """One :class:`PluginInfo` per loaded, failed or disabled plugin, sorted by name."""
        infos = []
        for name, plugin in self.list_name_plugin():
            hooks = sorted(caller.name for caller in self.get_hookcallers(plugin) or ())
            dist, version = self._distributions.get(name, (None, None))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, hooks=hooks))
        for name, error in self.load_errors.items():
            dist, version = self._distributions.get(name, (None, None))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, error=error))
        for name in self.disabled:
            dist, version = self._distributions.get(name, (None, None))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, disabled=True))
        return sorted(infos, key=lambda info: info.name)

    def load_entry_points(self, *, disabled: set[str], strict: bool) -> None:
        """Load every ``fedplug`` entry point; isolate (or, if ``strict``, raise on) failures."""
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
    """Build a plugin manager with fedplug's built-in plugin and, by default, every installed plugin.

    :param load_entry_points: load the plugins installed under the ``fedplug`` entry-point group
        (honouring ``FEDPLUG_DISABLE_PLUGINS`` and ``FEDPLUG_STRICT_PLUGINS``).
    """
    from fedplug import builtin

    pm = FedplugPluginManager()
    pm.register(builtin, name=BUILTIN_NAME)
    pm._distributions[BUILTIN_NAME] = ("fedplug", _version("fedplug"))
    if load_entry_points:
        strict = os.environ.get("FEDPLUG_STRICT_PLUGINS", "").strip() not in ("", "0")
        pm.load_entry_points(disabled=_env_set("FEDPLUG_DISABLE_PLUGINS"), strict=strict)
    return pm


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
