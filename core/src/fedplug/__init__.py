"""fedplug: federated learning as a minimal core plus installable plugins.

A researcher writes a :class:`TrainingPlan` and an :class:`Experiment`; each :class:`Node` holds its
data and trains on request; rounds of local training and aggregation produce a global model.
Everything else comes from plugins (``fedplug-torch``, ``fedplug-grpc``, ``fedplug-secagg``,
third-party ones), through the hooks of :mod:`fedplug.hookspecs`: plans, aggregators, dataset
types, optimizer modules, transports, commands, secure-aggregation schemes, model adapters.
"""

from fedplug.aggregators import Aggregator, FedAverage, Median
from fedplug.datasets import Dataset
from fedplug.errors import (
    AggregationError,
    ConfigError,
    FedplugError,
    MessageError,
    NodeError,
    PlanCodeError,
    PlanError,
    PluginError,
    SecAggError,
)
from fedplug.experiment import Experiment, ExperimentConfig, load_params, mean_over_nodes
from fedplug.hookspecs import hookimpl
from fedplug.node import Node, NodeLimits
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug.optimizer import Optimizer
from fedplug.plan import TrainingArgs, TrainingPlan, TrainResult
from fedplug.plugins import get_plugin_manager
from fedplug.transport.local import LocalTransport

__all__ = [
    "AggregationError",
    "Aggregator",
    "ConfigError",
    "Dataset",
    "Experiment",
    "ExperimentConfig",
    "FedAverage",
    "FedplugError",
    "LocalTransport",
    "LogisticRegressionPlan",
    "Median",
    "MessageError",
    "Node",
    "NodeError",
    "NodeLimits",
    "Optimizer",
    "PlanCodeError",
    "PlanError",
    "PluginError",
    "SecAggError",
    "TrainResult",
    "TrainingArgs",
    "TrainingPlan",
    "get_plugin_manager",
    "hookimpl",
    "load_params",
    "mean_over_nodes",
]
