"""Fed-Synthetic's baseline: a linear layer with sigmoid outputs, one per class (as FLamby)."""

import torch
from torch import nn


class Baseline(nn.Module):
    """``sigmoid(Linear(input_dim, output_dim))`` (attribute ``linear``)."""

    def __init__(self, input_dim=10, output_dim=3):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))
