"""FLamby's benchmark baselines as fedplug training plans.

:class:`FlambyTrainingPlan` is a :class:`~fedplug_torch.TorchTrainingPlan` whose model is the
dataset's ``Baseline()``, loss ``BaselineLoss()`` and optimizer the dataset's ``Optimizer`` at its
``LR`` (or a :class:`fedplug.Optimizer`). It evaluates with the dataset's own ``metric`` on a
center's whole test split (predictions concatenated, as FLamby's ``evaluate_model_on_tests``):
its ``metrics`` are ``{<metric name>: metric}``, TorchTrainingPlan's hook. A plan written by hand
around FLamby's ``Baseline`` (a plain TorchTrainingPlan, Fed-BioMed's way) that declares no metric
gets the same on a FLamby center: the ``flamby`` dataset type gives each center the dataset's
``metric`` as its ``Dataset.metrics``.

One subclass per dataset is registered (``flamby-fed_tcga_brca``, ...), so a plan travels to nodes
by name. :func:`flamby_plan` returns it, or, with a custom optimizer, a generated subclass whose
source (with its FLamby imports) ships to nodes like any plan written by hand.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import sys
import types
from typing import Any, ClassVar

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.optimizer import Optimizer
from fedplug.plan import TrainingArgs
from fedplug_flamby.datasets import DATASETS, dataset_info, dataset_module, plan_class_name
from fedplug_torch.plan import TorchTrainingPlan

_MODEL_ARGS = ("dataset", "optimizer")


class FlambyTrainingPlan(TorchTrainingPlan):
    """A FLamby dataset's baseline. ``model_args``:

    - ``dataset``: the FLamby dataset (unless the class fixes it in ``flamby_dataset``);
    - ``optimizer``: a :class:`fedplug.Optimizer` spec (``Optimizer.to_dict()``) to train with
      instead of the dataset's ``Optimizer(lr=LR)``.

    ``self.flamby`` is the dataset's module (``flamby.datasets.<dataset>``). Subclasses may
    override ``training_step`` as with any TorchTrainingPlan; FLamby's names are declared as
    dependencies, so a subclass shipped as source can use ``Baseline``, ``BaselineLoss`` and
    ``metric`` directly.
    """

    #: The FLamby dataset of this plan class (None: taken from ``model_args["dataset"]``).
    flamby_dataset: ClassVar[str | None] = None
    #: A fedplug.Optimizer spec that replaces the dataset's optimizer (``model_args`` wins).
    optimizer_spec: ClassVar[dict[str, Any] | None] = None

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        super().__init__(model_args)
        unknown = sorted(set(self.model_args) - set(_MODEL_ARGS))
        if unknown:
            raise ConfigError(
                f"unknown model_args key {unknown[0]!r} for a FLamby plan; known: "
                f"{', '.join(_MODEL_ARGS)}"
            )
        name = self.model_args.get("dataset", self.flamby_dataset)
        if self.flamby_dataset is not None and name != self.flamby_dataset:
            raise ConfigError(
                f"{type(self).__name__} trains {self.flamby_dataset}, but model_args names "
                f"dataset {name!r}"
            )
        if name is None:
            raise ConfigError(
                "a FLamby plan needs model_args={'dataset': ...}, or use flamby_plan(dataset)"
            )
        self.dataset_name: str = name
        self.metric_name = dataset_info(name).metric
        self.flamby = dataset_module(name)
        if not self.metrics:  # a subclass may declare its own
            # evaluated once on a center's whole test split, as FLamby's evaluate_model_on_tests
            self.metrics = {self.metric_name: self.flamby.metric}
        self.model = self.flamby.Baseline()
        self.loss = self.flamby.BaselineLoss()
        spec = self.model_args.get("optimizer", self.optimizer_spec)
        if spec is not None:
            self.optimizer = Optimizer.from_dict(spec)
        else:
            self.optimizer = self.flamby.Optimizer(self.parameters(), lr=self.flamby.LR)
        # ``Optimizer`` is fedplug's in a shipped subclass, as where the researcher wrote it
        # (FLamby's is ``self.flamby.Optimizer``)
        self.add_dependency(
            [
                f"from flamby.datasets.{name} import Baseline, BaselineLoss, metric",
                "from fedplug import Optimizer",
            ]
        )

    def _check_dataset(self, dataset: Dataset) -> None:
        other = dataset.meta.get("flamby_dataset")
        if other is not None and other != self.dataset_name:
            raise ConfigError(
                f"this plan trains FLamby's {self.dataset_name}, but the node's dataset "
                f"{dataset.name!r} is center {dataset.meta.get('center')} of {other}"
            )

    def train(self, dataset: Dataset, args: TrainingArgs) -> Any:
        self._check_dataset(dataset)
        return super().train(dataset, args)

    def evaluate(self, dataset: Dataset, args: TrainingArgs) -> dict[str, float]:
        """The dataset's ``metric`` (and the loss) on all of ``dataset``'s predictions at once
        (:attr:`metrics`, set to ``{metric_name: metric}``)."""
        self._check_dataset(dataset)
        return super().evaluate(dataset, args)


def _define_dataset_plans() -> dict[str, type[FlambyTrainingPlan]]:
    plans = {}
    for name in DATASETS:
        cls = types.new_class(plan_class_name(name), (FlambyTrainingPlan,))
        cls.flamby_dataset = name
        cls.__module__ = __name__
        cls.__doc__ = f"FLamby's {DATASETS[name].title} baseline (registered as flamby-{name})."
        plans[name] = cls
        globals()[cls.__name__] = cls
    return plans


#: The registered plan class of each FLamby dataset (``FedTcgaBrcaPlan``, ...).
DATASET_PLANS = _define_dataset_plans()


class _SourceLoader:
    """The loader of a generated plan module: it only serves the module's source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def get_source(self, name: str) -> str:
        return self.source


def flamby_plan(dataset: str, optimizer: Optimizer | dict[str, Any] | None = None) -> type:
    """The training plan of a FLamby dataset's benchmark baseline.

    Without ``optimizer``: the registered plan (``flamby-<dataset>``), trained with the dataset's
    ``Optimizer`` at its ``LR``; nodes build it by name. With a :class:`fedplug.Optimizer` (or its
    spec): a subclass that trains with it, shipped to nodes as source with its FLamby imports
    (nodes that require approval run it once its hash is approved).
    """
    dataset_module(dataset)  # fails now, with the fix, when FLamby or the dataset is missing
    base = DATASET_PLANS[dataset]
    if optimizer is None:
        return base
    if isinstance(optimizer, dict):
        optimizer = Optimizer.from_dict(optimizer)
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(
            f"flamby_plan's optimizer must be a fedplug.Optimizer or its spec, got "
            f"{type(optimizer).__name__}; for a torch optimizer, subclass the plan"
        )
    spec = optimizer.to_dict()
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    class_name = f"{base.__name__}_{digest}"
    module_name = f"fedplug_flamby.generated.{class_name}"
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], class_name)
    source = (
        f"class {class_name}({base.__name__}):\n"
        f'    """{DATASETS[dataset].title} baseline trained with a fedplug.Optimizer."""\n\n'
        f"    optimizer_spec = {spec!r}\n"
    )
    # The module's loader serves its source, so that inspect.getsource (plan shipping) and
    # tracebacks find it through linecache, also after linecache.clearcache().
    filename = f"fedplug_flamby/generated/{class_name}.py"
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__loader__ = _SourceLoader(source)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module.__dict__[base.__name__] = base
    sys.modules[module_name] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    return module.__dict__[class_name]
