"""Fed-TCGA-BRCA's baseline: a linear Cox model (one risk score per patient)."""

from torch import nn


class Baseline(nn.Module):
    """``nn.Linear(39, 1)`` (as attribute ``fc``): covariates ``(n, 39)`` to risk scores ``(n, 1)``."""

    def __init__(self):
        super().__init__()
        input_size = 39
        self.fc = nn.Linear(input_size, 1)

    def forward(self, x):
        return self.fc(x)
