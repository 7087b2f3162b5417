"""FLamby's federated strategies (``flamby.strategies``): FedAvg, FedProx and Scaffold.

The double implements the three strategies fedplug's reproduction is checked against, with
FLamby's constructor arguments and FLamby's loop: one persistent model, optimizer and
:class:`~flamby.strategies.utils.DataLoaderWithMemory` per client, clients trained one after the
other, updates (new - old parameters, as float32 numpy arrays) averaged with the clients' train
sizes as weights and added to every client's model. FLamby's differential-privacy and
tensorboard options are accepted but not implemented (the double has no opacus).
"""

from flamby.strategies.fed_avg import FedAvg
from flamby.strategies.fed_prox import FedProx
from flamby.strategies.scaffold import Scaffold

__all__ = ["FedAvg", "FedProx", "Scaffold"]
