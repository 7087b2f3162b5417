"""Fed-TCGA-BRCA: federated survival analysis over 6 regions (FLamby's ``fed_tcga_brca``)."""

from flamby.datasets.fed_tcga_brca.common import (
    BATCH_SIZE,
    LR,
    NUM_CLIENTS,
    NUM_EPOCHS_POOLED,
    FedClass,
    Optimizer,
    get_nb_max_rounds,
)
from flamby.datasets.fed_tcga_brca.dataset import FedTcgaBrca, TcgaBrcaRaw
from flamby.datasets.fed_tcga_brca.loss import BaselineLoss
from flamby.datasets.fed_tcga_brca.metric import metric
from flamby.datasets.fed_tcga_brca.model import Baseline

__all__ = [
    "BATCH_SIZE",
    "LR",
    "NUM_CLIENTS",
    "NUM_EPOCHS_POOLED",
    "Baseline",
    "BaselineLoss",
    "FedClass",
    "FedTcgaBrca",
    "Optimizer",
    "TcgaBrcaRaw",
    "get_nb_max_rounds",
    "metric",
]
