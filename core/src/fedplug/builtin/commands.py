"""Core's commands: ``fedplug plugins`` and ``fedplug optimizers``."""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from fedplug.hookspecs import Register, hookimpl
from fedplug.optimizer import available
from fedplug.plugins import DEFAULT_PLUGINS, PluginInfo, current_plugin_manager

Run = Callable[[argparse.Namespace], int]

#: how ``fedplug plugins`` names each registry, in the order it lists them
KIND_LABELS = {
    "training_plans": "training plans",
    "aggregators": "aggregators",
    "dataset_types": "dataset types",
    "optimizer_modules": "optimizer modules",
    "secagg_schemes": "secagg schemes",
    "transports": "transports",
    "trackers": "trackers",
    "commands": "commands",
}
LABEL_WIDTH = max(len(label) for label in KIND_LABELS.values())
#: the heading of core's built-in plugins, listed as one
CORE_HEADING = "fedplug"
#: ``fedplug plugins`` is never wider than this, however wide the terminal
MAX_WIDTH = 120


@hookimpl
def fedplug_register_commands(register: Register) -> None:
    register("plugins", plugins_command)
    register("optimizers", optimizers_command)


def plugins_command(parser: argparse.ArgumentParser) -> Run:
    """list installed plugins, the names each registers, and load errors"""
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--hooks",
        action="store_true",
        help="one entry per plugin module (core's built-ins apart), with the hooks it implements",
    )
    view.add_argument("--json", action="store_true", help="print JSON (what --hooks shows)")
    return run_plugins


def output_width() -> int:
    """The width of a listing: the terminal's (``$COLUMNS``), at most :data:`MAX_WIDTH`."""
    return max(40, min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH))


def run_plugins(args: argparse.Namespace) -> int:
    """Exit status 1 when two plugins register one name (each conflict is named on stderr)."""
    pm = current_plugin_manager()
    infos = pm.plugin_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
    else:
        width = output_width()
        if not args.hooks:
            infos = _core_as_one(infos)
        print("\n".join(_describe(info, width, hooks=args.hooks) for info in infos))
    conflicts = pm.conflicts()
    for conflict in conflicts:
        print(f"fedplug: conflict: {conflict}", file=sys.stderr)
    if conflicts:
        print(
            "fedplug: disable one plugin of each conflict with FEDPLUG_DISABLE_PLUGINS=name",
            file=sys.stderr,
        )
    return 1 if conflicts else 0


def _core_as_one(infos: list[PluginInfo]) -> list[PluginInfo]:
    """Core's built-in plugins as one entry, first; the others as they are."""
    core = [info for info in infos if info.name in DEFAULT_PLUGINS]
    if not core:
        return infos
    merged = PluginInfo(
        name=CORE_HEADING, distribution=core[0].distribution, version=core[0].version
    )
    for info in core:
        merged.hooks += info.hooks
        for kind, names in info.registers.items():
            merged.registers.setdefault(kind, []).extend(names)
    merged.registers = {kind: sorted(names) for kind, names in merged.registers.items()}
    return [merged, *(info for info in infos if info.name not in DEFAULT_PLUGINS)]


def _heading(info: PluginInfo) -> str:
    where = " ".join(part for part in (info.distribution, info.version) if part)
    if info.name == CORE_HEADING and info.distribution == CORE_HEADING:
        return f"{where} (core)"
    return f"{info.name} ({where or 'no distribution'})"


def _describe(info: PluginInfo, width: int, hooks: bool = False) -> str:
    """One plugin's entry: its heading, then per registry the names it registers (wrapped to
    ``width``, names never split); with ``hooks``, the hooks it implements."""
    lines = [_heading(info)]
    if info.disabled:
        lines.append("  disabled (FEDPLUG_DISABLE_PLUGINS)")
    elif info.error:
        lines += textwrap.wrap(
            f"ERROR: {info.error}", width, initial_indent="  ", subsequent_indent="    "
        )
    rows = [
        (KIND_LABELS.get(kind, kind.replace("_", " ")), ", ".join(names))
        for kind, names in sorted(info.registers.items(), key=lambda item: _kind_order(item[0]))
    ]
    others = [
        hook.removeprefix("fedplug_")
        for hook in info.hooks
        if hook.startswith("fedplug_") and not hook.startswith("fedplug_register_")
    ]
    if others and (hooks or not rows):  # a plugin of hooks only says so
        rows.append(("hooks", ", ".join(sorted(set(others)))))
    for label, text in rows:
        indent = " " * (2 + LABEL_WIDTH + 2)
        lines += textwrap.wrap(
            text,
            width,
            initial_indent=f"  {label:<{LABEL_WIDTH}}  ",
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,  # a name longer than the line goes past it whole
        )
    return "\n".join(lines)


def _kind_order(kind: str) -> tuple[int, str]:
    order = list(KIND_LABELS)
    return (order.index(kind) if kind in order else len(order), kind)


def optimizers_command(parser: argparse.ArgumentParser) -> Run:
    """list the optimizer modules, regularizers and schedulers of every installed plugin"""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return run_optimizers


class _Required:
    """Stands for a parameter without a default in the ``fedplug optimizers`` listing."""

    def __repr__(self) -> str:
        return "<required>"


def _defaults(cls: type) -> dict[str, object]:
    return {
        name: _Required() if param.default is inspect.Parameter.empty else param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def run_optimizers(args: argparse.Namespace) -> int:
    pm = current_plugin_manager()
    registry = pm.optimizer_modules
    table = {
        f"{kind}s": {
            name: {k: _plain(v) for k, v in _defaults(cls).items()}
            for name, cls in sorted(available(kind, pm).items())
        }
        for kind in ("module", "regularizer", "scheduler")
    }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    width = output_width()
    name_width = max((len(name) for entries in table.values() for name in entries), default=0)
    indent = " " * (2 + name_width + 2)
    for kind, entries in table.items():
        print(f"{kind}:")
        for name, defaults in entries.items():
            settings = ", ".join(
                f"{k}={v}" if v == "<required>" else f"{k}={v!r}" for k, v in defaults.items()
            )
            owner = registry.owner(name)
            source = "" if owner in DEFAULT_PLUGINS else f" [plugin {owner}]"
            lines = textwrap.wrap(
                f"{settings or '(no settings)'}{source}",
                width,
                initial_indent=f"  {name:<{name_width}}  ",
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
            print("\n".join(lines))
    return 0
