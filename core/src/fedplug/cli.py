"""The ``fedplug`` command: every sub-command comes from a plugin (``fedplug_register_commands``).

Core's built-in plugins register ``plugins`` and ``optimizers``; ``fedplug-grpc`` registers
``node`` and ``certs``; ``fedplug-demo`` registers ``demo``. A command whose plugin fails to
set it up is left out with a warning: one broken plugin never takes the whole command line down.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

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
    pm = plugin_manager or get_plugin_manager()
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with active(pm):
            return args.run(args)
    except FedplugError as exc:
        print(f"fedplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedplug: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fedplug optimizers | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
