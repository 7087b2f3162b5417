"""PyTorch training plans for fedplug.

Write a plan the way Fed-BioMed users know::

    class MyPlan(TorchTrainingPlan):
        def __init__(self, model_args=None):
            super().__init__(model_args)
            self.model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2))
            self.loss = nn.CrossEntropyLoss()
            self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)  # or a fedplug.Optimizer
            self.add_dependency(["import torch", "from torch import nn"])

        def training_step(self, data, target):
            return self.loss(self.model(data), target)
"""

from typing import Any

__all__ = ["TorchAdapter", "TorchMLPPlan", "TorchTrainingPlan"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the entry point does) must not import torch.
    if name in __all__:
        from fedplug_torch import plan

        return getattr(plan, name)
    raise AttributeError(f"module 'fedplug_torch' has no attribute {name!r}")
