"""fedplug-demo's plugin module (entry point ``demo``): the ``fedplug demo`` command.

Importing this module is cheap: the demo's modules are imported when the command line is built.
"""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_commands(register: Register) -> None:
    register("demo", "fedplug_demo.cli:demo_command")
