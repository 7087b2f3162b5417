"""The ``fedplug`` command: every sub-command comes from a plugin (``fedplug_register_commands``).

Core's built-in plugins register ``plugins`` and ``optimizers``; ``fedplug-grpc`` registers
``node`` and ``certs``; ``fedplug-demo`` registers ``demo``. A command whose plugin fails to
set it up is left out with a warning: one broken plugin never takes the whole command line down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from fedplug.errors import FedplugError
from fedplug.plugins import FedplugPluginManager, active, get_plugin_manager


def build_parser(pm: FedplugPluginManager | None = None) -> argparse.ArgumentParser:
    """The command-line parser with the commands of ``pm``'s plugins (default: every installed
    plugin's)."""
    pm = pm or get_plugin_manager()
    parser = argparse.ArgumentParser(
        prog="fedplug",
        description="Federated learning: a minimal core plus installable plugins.",
    )
    parser.add_argument(
        "--version",
        action=VersionAction,
        plugin_manager=pm,
        help="print fedplug's version and the installed plugin distributions' versions",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    registry = pm.lenient_registry("commands")
    for name, owners in registry.conflicts.items():
        warnings.warn(
            f"command {name!r} is registered by plugins {owners}; using {owners[0]!r}'s "
            "(`fedplug plugins` lists the conflict)",
            RuntimeWarning,
            stacklevel=2,
        )
    for name in sorted(registry):
        try:
            setup = registry[name]
            doc = (setup.__doc__ or "").strip().splitlines()
            command = subparsers.add_parser(
                name, help=doc[0] if doc else None, description=doc[0] if doc else None
            )
            command.set_defaults(run=setup(command))
        except Exception as exc:  # a broken plugin's command, not the whole command line
            subparsers._name_parser_map.pop(name, None)
            subparsers._choices_actions[:] = [
                action for action in subparsers._choices_actions if action.dest != name
            ]
            warnings.warn(
                f"command {name!r} of plugin {registry.owner(name)!r} is left out: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
    return parser


def main(
    argv: Sequence[str] | None = None, plugin_manager: FedplugPluginManager | None = None
) -> int:
    """Run ``fedplug ARGV`` with the commands of ``plugin_manager``'s plugins (default: every
    installed plugin's); return the exit code."""
    try:
        return _main(argv, plugin_manager)
    except BrokenPipeError:  # `fedplug optimizers | head`: the reader has all it wanted
        # what is still buffered goes nowhere, instead of failing again at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None, plugin_manager: FedplugPluginManager | None) -> int:
    pm = plugin_manager or get_plugin_manager()
    parser = build_parser(pm)
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, a usage error: written out while a pipe is open
        sys.stdout.flush()
        raise
    if args.command is None:
        parser.print_help()
        sys.stdout.flush()
        return 0
    try:
        with active(pm):
            status = args.run(args)
        sys.stdout.flush()  # a closed pipe is a BrokenPipeError here, not at interpreter exit
        return status
    except FedplugError as exc:
        print(f"fedplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedplug: interrupted", file=sys.stderr)
        return 130


class VersionAction(argparse.Action):
    """``fedplug --version``: fedplug's version, then each installed plugin distribution's with
    the plugins it provides (looked up only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, plugin_manager: Any, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.plugin_manager = plugin_manager

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text(self.plugin_manager))
        parser.exit()


def version_text(pm: FedplugPluginManager) -> str:
    """What ``fedplug --version`` prints."""
    import importlib.metadata
    import platform

    try:
        core = importlib.metadata.version("fedplug")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        core = "unknown"
    lines = [f"fedplug {core} (Python {platform.python_version()})"]
    plugins: dict[tuple[str, str], list[str]] = {}
    for info in pm.plugin_infos():
        if info.distribution in (None, "fedplug"):
            continue
        state = " (disabled)" if info.disabled else " (failed to load)" if info.error else ""
        key = (info.distribution, info.version or "unknown version")
        plugins.setdefault(key, []).append(f"{info.name}{state}")
    if plugins:
        width = max(len(f"{dist} {version}") for dist, version in plugins)
        lines.append("plugin distributions:")
        for (dist, version), names in sorted(plugins.items()):
            label = "plugin" if len(names) == 1 else "plugins"
            lines.append(f"  {f'{dist} {version}':<{width}}  {label} {', '.join(names)}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
