"""Secure aggregation for fedplug: the researcher learns only the weighted average.

from fedplug import Experiment
from fedplug_secagg import SecAggConfig

exp = Experiment(..., secagg=True)                         # the masking scheme, defaults
exp = Experiment(..., secagg=SecAggConfig(clip=100.0))     # or with settings
"""

from typing import Any

__all__ = ["MaskingNode", "MaskingScheme", "SecAggConfig"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the entry point does) must not import cryptography.
    if name in __all__:
        from fedplug_secagg import masking

        return getattr(masking, name)
    raise AttributeError(f"module 'fedplug_secagg' has no attribute {name!r}")
