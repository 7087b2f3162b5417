"""Fed-Synthetic: generated federated classification data (FLamby's ``fed_synthetic``)."""

from flamby.datasets.fed_synthetic.common import (
    BATCH_SIZE,
    LR,
    NUM_CLIENTS,
    NUM_EPOCHS_POOLED,
    FedClass,
    Optimizer,
    get_nb_max_rounds,
)
from flamby.datasets.fed_synthetic.dataset import FedSynthetic, SyntheticRaw
from flamby.datasets.fed_synthetic.loss import BaselineLoss
from flamby.datasets.fed_synthetic.metric import metric
from flamby.datasets.fed_synthetic.model import Baseline

__all__ = [
    "BATCH_SIZE",
    "LR",
    "NUM_CLIENTS",
    "NUM_EPOCHS_POOLED",
    "Baseline",
    "BaselineLoss",
    "FedClass",
    "FedSynthetic",
    "Optimizer",
    "SyntheticRaw",
    "get_nb_max_rounds",
    "metric",
]
