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

#: how ``fedplug plugins`` names each registry
KIND_LABELS = {
    "training_plans": "training plans",
    "aggregators": "aggregators",
    "dataset_types": "dataset types",
    "optimizer_modules": "optimizer modules",
    "secagg_schemes": "secagg schemes",
    "transports": "transports",
    "commands": "commands",
}


@hookimpl
def fedplug_register_commands(register: Register) -> None:
    register("plugins", plugins_command)
    register("optimizers", optimizers_command)


def plugins_command(parser: argparse.ArgumentParser) -> Run:
    """list installed plugins, the names each registers, and load errors"""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return run_plugins


def run_plugins(args: argparse.Namespace) -> int:
    """Exit status 1 when two plugins register one name (each conflict is named on stderr)."""
    pm = current_plugin_manager()
    infos = pm.plugin_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
    else:
        width = min(shutil.get_terminal_size((100, 24)).columns, 120)
        print("\n".join(_describe(info, width) for info in infos))
    conflicts = pm.conflicts()
    for conflict in conflicts:
        print(f"fedplug: conflict: {conflict}", file=sys.stderr)
    if conflicts:
        print(
            "fedplug: disable one plugin of each conflict with FEDPLUG_DISABLE_PLUGINS=name",
            file=sys.stderr,
        )
    return 1 if conflicts else 0


def _describe(info: PluginInfo, width: int) -> str:
    where = " ".join(part for part in (info.distribution, info.version) if part) or "-"
    lines = [f"{info.name} ({where})"]
    if info.disabled:
        lines.append("  disabled (FEDPLUG_DISABLE_PLUGINS)")
    elif info.error:
        lines += textwrap.wrap(
            f"ERROR: {info.error}", width, initial_indent="  ", subsequent_indent="    "
        )
    for kind, names in info.registers.items():
        lines += textwrap.wrap(
            f"{KIND_LABELS[kind]}: {', '.join(names)}",
            width,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
    others = [
        hook.removeprefix("fedplug_")
        for hook in info.hooks
        if not hook.startswith("fedplug_register_")
    ]
    if others:
        lines += textwrap.wrap(
            f"hooks: {', '.join(others)}", width, initial_indent="  ", subsequent_indent="    "
        )
    return "\n".join(lines)


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
    for kind, entries in table.items():
        print(f"{kind}:")
        for name, defaults in entries.items():
            settings = ", ".join(
                f"{k}={v}" if v == "<required>" else f"{k}={v!r}" for k, v in defaults.items()
            )
            owner = registry.owner(name)
            source = "" if owner in DEFAULT_PLUGINS else f"  [plugin {owner}]"
            print(f"  {name:32} {settings}{source}")
    return 0
