"""fedplug-tensorboard's plugin module (entry point ``tensorboard``): the ``tensorboard`` tracker.

Importing this module is cheap: tensorboard is imported when an experiment turns the tracker on.
"""

from __future__ import annotations

from fedplug import hookimpl
from fedplug.hookspecs import Register


@hookimpl
def fedplug_register_trackers(register: Register) -> None:
    register("tensorboard", "fedplug_tensorboard.tracker:TensorBoardTracker")
