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
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.optimizer import Optimizer
from fedplug.plan import TrainingArgs, check_interrupt
from fedplug_flamby.batches import FlambyOrder, loader_batches, materialize, parse_order
from fedplug_flamby.datasets import DATASETS, dataset_info, dataset_module, plan_class_name
from fedplug_flamby.losses import BATCHED_LOSSES
from fedplug_torch.plan import TorchTrainingPlan

_MODEL_ARGS = ("dataset", "optimizer", "batch_order", "loss")
_LOSSES = ("auto", "batched", "flamby")
#: declearn modules that scale each coordinate by its own gradient history
_ADAPTIVE_MODULES = frozenset({"adam", "yogi", "adagrad", "rmsprop", "flamby-adam", "flamby-yogi"})


def adaptive(optimizer: Any) -> bool:
    """True for an optimizer that scales each coordinate by its own gradient history (Adam,
    Yogi, AdaGrad, RMSprop; any torch optimizer but SGD): one that turns a gradient of float
    rounding's size into a full step."""
    if isinstance(optimizer, Optimizer):
        return bool(_ADAPTIVE_MODULES & set(optimizer.module_names))
    return not isinstance(optimizer, torch.optim.SGD)


class FlambyTrainingPlan(TorchTrainingPlan):
    """A FLamby dataset's baseline. ``model_args``:

    - ``dataset``: the FLamby dataset (unless the class fixes it in ``flamby_dataset``);
    - ``optimizer``: a :class:`fedplug.Optimizer` spec (``Optimizer.to_dict()``) to train with
      instead of the dataset's ``Optimizer(lr=LR)``;
    - ``loss``: ``"batched"`` (the dataset's ``BaselineLoss`` computed for a whole batch at once
      where FLamby loops over its records, :mod:`fedplug_flamby.losses`; equal up to float
      rounding), ``"flamby"`` (the dataset's own ``BaselineLoss``) or ``"auto"`` (the default:
      batched, unless the optimizer is adaptive (:func:`adaptive`: Adam, the dataset's own for
      Fed-TCGA-BRCA, turns gradients of float rounding's size, which FLamby's loop leaves at
      exactly zero or not, into full steps: there only FLamby's own operations give FLamby's
      numbers);
    - ``batch_order``: ``"fedplug"`` (the default: a fresh pass per round, shuffled by the
      round's seed) or FLamby's (:class:`~fedplug_flamby.batches.FlambyOrder`, as
      ``flamby_experiment(batch_order="flamby")`` fills it in).

    A tabular dataset's split (``fixed_items``) is read once and batched by index, on the
    training device (:mod:`fedplug_flamby.batches`).

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
        self.batch_order = parse_order(self.model_args.get("batch_order"))
        self._rounds_trained = 0
        self._split: tuple[Any, ...] | None = None  # (dataset, device, x, y) read once
        self.metric_name = dataset_info(name).metric
        self.flamby = dataset_module(name)
        if not self.metrics:  # a subclass may declare its own
            # evaluated once on a center's whole test split, as FLamby's evaluate_model_on_tests
            self.metrics = {self.metric_name: self.flamby.metric}
        self.model = self.flamby.Baseline()
        spec = self.model_args.get("optimizer", self.optimizer_spec)
        if spec is not None:
            self.optimizer = Optimizer.from_dict(spec)
        else:
            self.optimizer = self.flamby.Optimizer(self.parameters(), lr=self.flamby.LR)
        loss = self.model_args.get("loss", "auto")
        if loss not in _LOSSES:
            raise ConfigError(f"model_args loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        if loss == "auto":  # batched where float rounding cannot be amplified
            loss = "flamby" if adaptive(self.optimizer) else "batched"
        batched = BATCHED_LOSSES.get(name) if loss == "batched" else None
        self.loss = batched() if batched is not None else self.flamby.BaselineLoss()
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
        if self.batch_order is not None and args.num_updates is None:
            raise ConfigError(
                "batch_order='flamby' counts local work in batches, as FLamby does: give "
                "num_updates, not epochs"
            )
        result = super().train(dataset, args)
        self._rounds_trained += 1
        return result

    def training_batches(
        self, data: Any, args: TrainingArgs, generator: torch.Generator | None
    ) -> Iterator[tuple[Any, Any]]:
        """The round's batches: fedplug's order or FLamby's (``batch_order``), indexing the split
        read once when its items are fixed (FLamby's tabular datasets)."""
        if not isinstance(data, Dataset) or not data.is_samples:  # a subclass's own data
            if self.batch_order is not None:
                raise ConfigError(
                    "batch_order='flamby' draws from the node's FLamby dataset; this plan's "
                    f"training_data returned {type(data).__name__}"
                )
            yield from super().training_batches(data, args, generator)
            return
        if self.batch_order is not None:
            round_index = self._rounds_trained if self.round_index is None else self.round_index
            indices = self._flamby_order(data, args).batches(round_index)
        else:
            indices = loader_batches(
                len(data), args.batch_size, args.num_steps(len(data)), generator
            )
        split = self._read_once(data)
        if split is None:  # items that may differ between reads: FLamby's own __getitem__
            loader = torch.utils.data.DataLoader(
                data.x, batch_sampler=[i.tolist() for i in indices], collate_fn=data.collate_fn
            )
            for xb, yb, *_ in loader:
                check_interrupt()
                yield xb.to(self.device), yb.to(self.device)
            return
        x, y = split
        for index in indices:
            check_interrupt()
            index = index.to(self.device)
            yield x[index], y[index]

    def _read_once(self, data: Dataset) -> tuple[Any, Any] | None:
        """``data``'s items as two tensors on the training device, read once (None: a dataset
        whose items may change between reads, one with its own ``collate_fn``, or not FLamby's
        tensors)."""
        name = data.meta.get("flamby_dataset", self.dataset_name)
        if name not in DATASETS or not DATASETS[name].fixed_items:
            return None
        if data.collate_fn is not None:  # a batch is what it makes of its samples: per batch
            return None
        if self._split is None or self._split[0] is not data or self._split[1] != self.device:
            x, y = materialize(data.x)
            if not (torch.is_tensor(x) and torch.is_tensor(y)):
                return None
            self._split = (data, self.device, x.to(self.device), y.to(self.device))
        return self._split[2], self._split[3]

    def _flamby_order(self, data: Dataset, args: TrainingArgs) -> FlambyOrder:
        order = self.batch_order
        centers = [center for center, _ in order["centers"]]
        center = data.meta.get("center")
        if center not in centers:
            raise ConfigError(
                f"batch_order='flamby' lists centers {centers}, and this node's dataset "
                f"{data.name!r} is center {center!r}"
            )
        position = centers.index(center)
        sizes = tuple(size for _, size in order["centers"])
        if sizes[position] != len(data):
            raise ConfigError(
                f"batch_order='flamby' expects center {center} to train on {sizes[position]} "
                f"samples, and {data.name!r} has {len(data)}: FLamby's order needs every "
                "center's whole train split, as FLamby reads it"
            )
        return FlambyOrder(order["seed"], sizes, position, args.batch_size, args.num_updates)

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
