"""Plans as they travel: a registered name, or the plan class's source with its declared imports.

A node runs shipped source only when its hash (SHA-256 of the normalized source) is approved, unless
the node turned approval off (local simulation). A registered name is trusted: the node's
administrator installed the plugin that provides it.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import textwrap
import types
from typing import TYPE_CHECKING

from fedplug.errors import PlanError
from fedplug.messages import PlanRef
from fedplug.plan import TrainingPlan
from fedplug.text import inert, unsafe_characters

if TYPE_CHECKING:
    from fedplug.plugins import Registry


def normalize_source(source: str) -> str:
    """Dedented source with unified newlines and no trailing spaces: what the hash covers."""
    lines = textwrap.dedent(source.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def source_hash(source: str) -> str:
    return hashlib.sha256(normalize_source(source).encode("utf-8")).hexdigest()


def plan_source(plan_cls: type[TrainingPlan], dependencies: list[str]) -> str:
    """The source a node needs to rebuild ``plan_cls``: imports, then the class definition."""
    try:
        body = textwrap.dedent(inspect.getsource(plan_cls))
    except (OSError, TypeError) as exc:
        raise PlanError(
            f"cannot ship plan {plan_cls.__qualname__} to nodes as source ({exc}); define it in a "
            "file or notebook cell, or register it from a plugin and refer to it by name"
        ) from exc
    imports = list(dependencies)
    for base in plan_cls.__bases__:
        if base.__module__ not in ("__main__", "builtins", plan_cls.__module__):
            line = f"from {base.__module__} import {base.__name__}"
            if line not in imports:
                imports.append(line)
    return normalize_source("\n".join(imports) + "\n\n\n" + body)


def check_reviewable(source: str, class_name: str | None) -> None:
    """Refuse shipped source a reviewer could be shown something else than what runs: control
    or formatting characters other than newlines, tabs and form feeds (an escape sequence that
    erases a line in a terminal, a right-to-left override), or a class name that is not a
    Python identifier."""
    hidden = unsafe_characters(source)
    if hidden:
        raise PlanError(
            f"plan {inert(class_name)}: its source holds control or formatting characters "
            f"({', '.join(hidden[:5])}) that can hide code from whoever reviews it in a terminal; "
            "refusing it (remove them from the plan's file: ordinary code needs none)"
        )
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise PlanError(f"plan class name {inert(class_name)!r} is not a Python identifier")


def make_plan_ref(
    plan_cls: type[TrainingPlan], dependencies: list[str], registry: Registry
) -> PlanRef:
    """A name when ``plan_cls`` is registered by a plugin, else its source and hash (refused
    here, before any node sees it, when a reviewer could not read it as it runs)."""
    name = registry.name_of(plan_cls)
    if name is not None:
        return PlanRef(name=name, class_name=plan_cls.__qualname__)
    source = plan_source(plan_cls, dependencies)
    check_reviewable(source, plan_cls.__name__)
    return PlanRef(source=source, class_name=plan_cls.__name__, sha256=source_hash(source))


class _SourceLoader:
    """The loader of a plan module built from shipped source: it only serves that source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def get_source(self, name: str) -> str:
        return self.source


def load_plan_class(ref: PlanRef, registry: Registry) -> type[TrainingPlan]:
    """Resolve a :class:`PlanRef` whose source, if any, the caller already approved."""
    if ref.name is not None:
        return registry[ref.name]
    if not ref.source or not ref.class_name or not ref.sha256:
        raise PlanError(
            "a plan reference needs a registered name, or source, class_name and sha256"
        )
    if source_hash(ref.source) != ref.sha256:
        raise PlanError(
            f"plan source does not match its hash {inert(ref.sha256)}; refusing to run it"
        )
    check_reviewable(ref.source, ref.class_name)
    module = types.ModuleType(f"fedplug_plan_{ref.sha256[:16]}")
    # The module's loader serves the source, so inspect.getsource() finds the class again (a
    # researcher that rebuilt a plan from a checkpoint) and tracebacks show its lines.
    module.__file__ = f"fedplug_plan/{ref.sha256[:16]}.py"
    module.__loader__ = _SourceLoader(ref.source)
    try:
        code = compile(ref.source, module.__file__, "exec")
        sys.modules[module.__name__] = module
        exec(code, module.__dict__)
    except ImportError as exc:
        raise PlanError(
            f"plan {ref.class_name} needs a module this node does not have: {exc}; install it on "
            "the node, or fix the plan's add_dependency() lines"
        ) from exc
    except Exception as exc:
        raise PlanError(
            f"plan {ref.class_name} source failed to execute: {type(exc).__name__}: {exc}; a plan "
            "shipped as source must be self-contained (declare imports with add_dependency)"
        ) from exc
    plan_cls = module.__dict__.get(ref.class_name)
    if not (inspect.isclass(plan_cls) and issubclass(plan_cls, TrainingPlan)):
        raise PlanError(f"plan source defines no TrainingPlan subclass named {ref.class_name!r}")
    return plan_cls
