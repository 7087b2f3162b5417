"""FLamby's federated healthcare datasets through fedplug.

Run FLamby's Fed-TCGA-BRCA benchmark with FedAvg in a few lines::

    from fedplug_flamby import flamby_experiment

    exp = flamby_experiment("fed_tcga_brca", num_updates=100, accept_license=True)
    history = exp.run()
    print(history[-1]["validation_mean"])  # {'c_index': ..., 'loss': ...}

or build the pieces yourself: nodes serving a center each (dataset type ``flamby``,
:func:`load_flamby`) and the dataset's baseline plan (:func:`flamby_plan`).
"""

from typing import Any

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "FlambyTrainingPlan",
    "dataset_module",
    "flamby_experiment",
    "flamby_federation",
    "flamby_nodes",
    "flamby_plan",
    "flamby_results",
    "load_flamby",
]

_WHERE = {
    "ALGORITHMS": "experiment",
    "DATASETS": "datasets",
    "FlambyTrainingPlan": "plan",
    "dataset_module": "datasets",
    "flamby_experiment": "experiment",
    "flamby_federation": "experiment",
    "flamby_nodes": "experiment",
    "flamby_plan": "plan",
    "flamby_results": "experiment",
    "load_flamby": "datasets",
}


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the entry point does) must not import torch or FLamby.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"fedplug_flamby.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fedplug_flamby' has no attribute {name!r}")
