"""A third-party fedplug plugin: the coordinate-wise trimmed-mean aggregator.

Install it (``pip install ./examples/third_party_plugin``) and select it by name::

    Experiment(..., aggregator="trimmed-mean")
"""

from __future__ import annotations

import numpy as np

from fedplug import Aggregator, hookimpl


class TrimmedMean(Aggregator):
    """Drops the ``trim`` largest and smallest values of each coordinate, averages the rest."""

    name = "trimmed-mean"

    def __init__(self, trim: int = 1) -> None:
        self.trim = trim

    def begin(self, global_params):
        super().begin(global_params)
        self._replies = []

    def _add(self, params, n_samples):
        self._replies.append(params)

    def _result(self):
        k = min(self.trim, (len(self._replies) - 1) // 2)
        out = {}
        for name in self._spec:
            stacked = np.sort(np.stack([reply[name] for reply in self._replies]), axis=0)
            out[name] = stacked[k : len(self._replies) - k].mean(axis=0)
        return out


@hookimpl
def fedplug_register_aggregators(register):
    register("trimmed-mean", TrimmedMean)
