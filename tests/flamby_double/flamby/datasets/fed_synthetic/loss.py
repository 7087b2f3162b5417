"""Fed-Synthetic's loss: cross-entropy of the model outputs against the ``(n, 1)`` labels."""

import torch
from torch.nn.modules.loss import _Loss


class BaselineLoss(_Loss):
    """``CrossEntropyLoss(input, target.squeeze(1).long())``."""

    def __init__(self):
        super().__init__()
        self.ce = torch.nn.CrossEntropyLoss()

    def forward(self, input: torch.Tensor, target: torch.Tensor):
        return self.ce(input, target.squeeze(dim=1).long())
