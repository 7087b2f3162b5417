"""Plans as they travel: a registered name, or the plan class's source with its declared imports.

A node runs shipped source only when its hash (SHA-256 of the normalized source) is approved, unless
the node turned approval off (local simulation). A registered name is trusted: the node's
administrator installed the plugin that provides it.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import os
import sys
import textwrap
import types
from typing import TYPE_CHECKING

from fedplug.errors import PlanCodeError, PlanError, describe
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
    """The source a node needs to rebuild ``plan_cls``: imports, then the class definitions: its
    base classes written beside it (in the same file, notebook or script: a node cannot import
    them) first, then ``plan_cls``. A base class from elsewhere (a plugin, a library) is
    imported."""
    local = [
        cls
        for cls in reversed(plan_cls.__mro__)
        if cls is plan_cls
        or (cls.__module__ in ("__main__", plan_cls.__module__) and cls is not TrainingPlan)
    ]
    imports = list(dependencies)
    for cls in local:
        for base in cls.__bases__:
            if base in local or base.__module__ == "builtins":
                continue
            line = f"from {base.__module__} import {base.__name__}"
            if line not in imports:
                imports.append(line)
    bodies = [class_source(cls, plan_cls) for cls in local]
    return normalize_source("\n".join(imports) + "\n\n\n" + "\n\n".join(bodies))


def class_source(cls: type, plan_cls: type | None = None) -> str:
    """The source of ``cls``'s definition: from its file, or for a class defined in a notebook
    cell or an interactive session (whose module has no file), from the cell that its methods'
    code says it was compiled from."""
    try:
        return textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError) as exc:
        found = _source_from_code(cls)
        if found is not None:
            return found[0]
        plan = plan_cls or cls
        what = "" if cls is plan else f"its base class {cls.__qualname__}: "
        raise PlanError(
            f"cannot ship plan {plan.__qualname__} to nodes as source ({what}{exc}); define it "
            "in a file or a notebook cell with at least one method of its own, or register it "
            "from a plugin and refer to it by name"
        ) from exc


def _source_from_code(cls: type) -> tuple[str, str, int] | None:
    """``cls``'s definition read from the file or notebook cell its methods were compiled from
    (IPython keeps each cell in ``linecache``), with that file's name and the definition's first
    line; or None."""
    for attr in vars(cls).values():
        function = getattr(attr, "__func__", attr)  # classmethod, staticmethod
        if isinstance(attr, property):
            function = attr.fget
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        lines = linecache.getlines(code.co_filename)
        if not lines:
            continue
        try:
            tree = ast.parse("".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ClassDef)
                and node.name == cls.__name__
                and node.lineno <= code.co_firstlineno <= (node.end_lineno or node.lineno)
            ):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                source = textwrap.dedent("".join(lines[first - 1 : node.end_lineno]))
                return source, code.co_filename, first
    return None


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
    file, line = plan_origin(plan_cls)
    return PlanRef(
        source=source,
        class_name=plan_cls.__name__,
        sha256=source_hash(source),
        source_file=file,
        source_line=line,
    )


def plan_origin(plan_cls: type) -> tuple[str | None, int | None]:
    """Where ``plan_cls`` is written: its file (relative to the current directory when it lies
    under it) and the line its definition starts on (decorators included), or ``(None, None)``."""
    try:
        file = inspect.getsourcefile(plan_cls) or inspect.getfile(plan_cls)
        _, line = inspect.getsourcelines(plan_cls)
    except (OSError, TypeError):
        found = _source_from_code(plan_cls)  # a notebook cell
        if found is None:
            return None, None
        _, file, line = found
    try:
        relative = os.path.relpath(file)
        if not relative.startswith(os.pardir):
            file = relative
    except ValueError:  # another drive (Windows)
        pass
    return file, max(int(line), 1)


#: the module global where a plan module built from shipped source keeps where its class was
#: written: ``(file, first, last, line)``: shipped lines ``first`` to ``last`` are ``file``'s
#: from ``line`` on
ORIGIN_GLOBAL = "__fedplug_origin__"

_MAX_ORIGIN_FILE = 1000  # characters of a source_file kept for messages


def _shipped_origin(ref: PlanRef) -> tuple[str, int, int, int] | None:
    """Which lines of ``ref.source`` are the class the researcher wrote, and where it starts in
    their file (None when the reference does not say, or says something unusable)."""
    file, line = ref.source_file, ref.source_line
    if not isinstance(file, str) or not file or len(file) > _MAX_ORIGIN_FILE:
        return None
    if isinstance(line, bool) or not isinstance(line, int) or line < 1:
        return None
    try:
        tree = ast.parse(ref.source or "")
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == ref.class_name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return inert(file), first, node.end_lineno or node.lineno, line
    return None


def _frame_location(tb: types.TracebackType) -> tuple[str, bool]:
    """``file:line in function`` of a traceback entry, with a shipped plan's lines told as the
    researcher's file and lines; and whether the entry is in a plan shipped as source."""
    frame, lineno = tb.tb_frame, tb.tb_lineno
    code = frame.f_code
    module_globals = frame.f_globals
    origin = module_globals.get(ORIGIN_GLOBAL)
    in_plan = (
        isinstance(module_globals.get("__file__"), str)
        and code.co_filename == module_globals["__file__"]
        and str(module_globals.get("__name__", "")).startswith("fedplug_plan_")
    )
    if in_plan and isinstance(origin, tuple) and len(origin) == 4:
        file, first, last, line = origin
        if first <= lineno <= last:
            return f"{file}:{line + lineno - first} in {code.co_name}", True
    return f"{code.co_filename}:{lineno} in {code.co_name}", in_plan


def describe_plan_error(exc: BaseException) -> str:
    """``Type: message (at file:line in function)`` for an exception raised while running a
    plan: the location is the innermost line of the plan's own code, in the researcher's file
    when the plan came with its origin (not the shipped copy's ``fedplug_plan/<hash>.py``),
    followed by where the exception was raised when that is deeper, in a library."""
    tb = exc.__traceback__
    if tb is None:
        return describe(exc)
    entries = []
    while tb is not None:
        entries.append(_frame_location(tb))
        tb = tb.tb_next
    innermost = entries[-1][0]
    in_plan = [where for where, planned in entries if planned]
    if not in_plan or in_plan[-1] == innermost:
        return f"{type(exc).__name__}: {exc} (at {innermost})"
    return f"{type(exc).__name__}: {exc} (at {in_plan[-1]}; raised in {innermost})"


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
    # errors in the plan's code name the researcher's file and lines (describe_plan_error)
    setattr(module, ORIGIN_GLOBAL, _shipped_origin(ref))
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
        raise PlanCodeError(
            f"plan {ref.class_name} source failed to execute: {describe_plan_error(exc)}; a plan "
            "shipped as source must be self-contained (declare imports with add_dependency)"
        ) from exc
    plan_cls = module.__dict__.get(ref.class_name)
    if not (inspect.isclass(plan_cls) and issubclass(plan_cls, TrainingPlan)):
        raise PlanError(f"plan source defines no TrainingPlan subclass named {ref.class_name!r}")
    return plan_cls
