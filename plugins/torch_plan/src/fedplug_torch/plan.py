"""``TorchTrainingPlan``: PyTorch models trained by fedplug nodes, and the declearn adapter."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError, PlanError
from fedplug.optimizer import Optimizer
from fedplug.plan import Params, TrainingArgs, TrainingPlan, TrainResult, check_interrupt


class TorchAdapter:
    """Lets a declearn optimizer read gradients of, and apply updates to, an ``nn.Module``."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}

    def get_weights(self, trainable: bool = True) -> Any:
        from declearn.model.torch import TorchVector

        # copies: regularizers such as FedProx keep the weights of the round's start as anchors
        return TorchVector({name: p.detach().clone() for name, p in self.params.items()})

    def apply_updates(self, updates: Any) -> None:
        with torch.no_grad():
            for name, update in updates.coefs.items():
                self.params[name].add_(update)

    def sgd_step(self, lr: float) -> None:
        """``p -= lr * p.grad`` in place: declearn's plain SGD step, bit for bit (its update
        ``-1.0 * (lr * g)`` added is ``lr * g`` subtracted); a parameter without a gradient
        stays as it is, as declearn's zero update leaves it."""
        with torch.no_grad():
            for p in self.params.values():
                if p.grad is not None:
                    p.sub_(p.grad * lr)

    def gradients(self) -> Any:
        from declearn.model.torch import TorchVector

        return TorchVector(
            {
                name: p.grad if p.grad is not None else torch.zeros_like(p)
                for name, p in self.params.items()
            }
        )


def resolve_device(asked: str) -> torch.device:
    """The torch device of the ``device`` training argument on this node.

    - ``"cpu"``: the CPU;
    - ``"cuda"`` or ``"cuda:N"``: that GPU, and a :class:`~fedplug.errors.ConfigError` when this
      node has none (or no GPU ``N``): a GPU asked for is never silently replaced by the CPU;
    - ``"auto"``: the fallback, asked for explicitly: the default GPU where the node has one,
      else the CPU.
    """
    if asked == "cpu":
        return torch.device("cpu")
    if asked == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"training argument device={asked!r} asks for a GPU, but this node has none that "
            f"torch {torch.__version__} can use (torch.cuda.is_available() is False: no NVIDIA "
            "GPU or driver, or a CPU-only build of torch); use device='auto' to train on a GPU "
            "where a node has one and on its CPU elsewhere, or device='cpu'"
        )
    index = torch.device(asked).index
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(
            f"training argument device={asked!r} asks for GPU {index}, but this node has "
            f"{count} (cuda:0 to cuda:{count - 1}); use device='cuda' for its default GPU, or "
            "device='auto' to fall back to the CPU where a node has no GPU"
        )
    return torch.device(asked)


class TorchTrainingPlan(TrainingPlan):
    """A training plan over a ``torch.nn.Module``.

    In ``__init__(self, model_args=None)``, call ``super().__init__(model_args)`` and set
    ``self.model``, ``self.loss`` and optionally ``self.optimizer`` (a ``torch.optim`` optimizer
    over ``self.parameters()``, or a :class:`fedplug.Optimizer`; default: SGD at the ``lr``
    training argument). Override :meth:`training_step` for anything beyond ``loss(model(x), y)``,
    :meth:`training_data` to train on something other than the node's tagged dataset (it may
    return a ``torch.utils.data.DataLoader``), and :meth:`training_batches` to draw the batches
    otherwise.

    Evaluation: a plan declares its metrics in :attr:`metrics` (``{"auc": roc_auc_score}``,
    FLamby's ``{"c_index": metric}``), computed once on a whole split's predictions; without
    them it uses the dataset's own (``Dataset.metrics``, e.g. a FLamby center's), and otherwise
    averages :meth:`testing_step`'s per-batch values.
    """

    framework = "torch"
    #: the plan's metrics: name -> ``fn(y_true, y_pred)`` on numpy arrays, the targets and the
    #: model's outputs of every batch of the evaluated split, concatenated (as FLamby's
    #: ``evaluate_model_on_tests`` and scikit-learn's metrics take them); a number each. Set it
    #: in the class body or in ``__init__`` (``self.metrics = {"c_index": metric}``). Empty: the
    #: dataset's own ``metrics``, else :meth:`testing_step` per batch.
    metrics: dict[str, Callable[[Any, Any], Any]] = {}

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        super().__init__(model_args)
        self.model: nn.Module | None = None
        self.loss: Callable[..., torch.Tensor] | None = None
        self.device = torch.device("cpu")
        self._tensors: dict[int, tuple[Dataset, torch.Tensor, torch.Tensor]] = {}
        # the instance's own copy: adding to it never changes the class's (or every plan's)
        self.metrics = dict(type(self).metrics)

    @classmethod
    def init_seed(cls, seed: int | None) -> None:
        if seed is not None:
            torch.manual_seed(seed)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The model's parameters, for building a torch optimizer in ``__init__``."""
        return self._model().parameters()

    def _model(self) -> nn.Module:
        if not isinstance(self.model, nn.Module):
            raise PlanError(
                f"{type(self).__name__}.model must be a torch.nn.Module set in __init__, "
                f"got {self.model!r}"
            )
        return self.model

    # -- parameters -----------------------------------------------------------------------------
    def get_parameters(self) -> Params:
        return {
            name: tensor.detach().cpu().numpy().copy()
            for name, tensor in self._model().state_dict().items()
        }

    def parameter_views(self) -> Params:
        state = self._model().state_dict()
        if all(tensor.device.type == "cpu" for tensor in state.values()):
            return {name: tensor.numpy() for name, tensor in state.items()}
        return self.get_parameters()

    def parameter_buffers(self) -> Params | None:
        state = self._model().state_dict()
        if all(t.device.type == "cpu" and t.is_contiguous() for t in state.values()):
            return {name: tensor.numpy() for name, tensor in state.items()}
        return None

    def set_parameters(self, params: Params) -> None:
        state = self._model().state_dict()
        with torch.no_grad():
            for name, value in params.items():
                tensor = state[name]
                if tensor.device.type == "cpu":
                    np.copyto(tensor.numpy(), value)
                else:
                    tensor.copy_(torch.as_tensor(np.array(value)))

    # -- training -------------------------------------------------------------------------------
    def training_step(self, data: Any, target: Any) -> torch.Tensor:
        """The loss of one batch (override for custom forward passes)."""
        if self.loss is None:
            raise PlanError(
                f"{type(self).__name__} sets no self.loss and does not override training_step"
            )
        return self.loss(self.model(data), target)

    def _torch_optimizer(self, args: TrainingArgs) -> Any:
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.parameters(), lr=args.lr or 0.01)
        optimizer = self.optimizer
        if isinstance(optimizer, Optimizer):
            if args.lr is not None:
                optimizer.set_lr(args.lr)
            if args.optimizer_args:
                raise ConfigError(
                    "training argument 'optimizer_args' applies to torch optimizers; a "
                    "fedplug.Optimizer takes its settings in its constructor"
                )
            return optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PlanError(
                f"{type(self).__name__}.optimizer must be a torch.optim optimizer or a "
                f"fedplug.Optimizer, got {type(optimizer).__name__}"
            )
        for group in optimizer.param_groups:
            if args.lr is not None:
                group["lr"] = args.lr
            for key, value in args.optimizer_args.items():
                if key not in group:
                    raise ConfigError(
                        f"optimizer_args key {key!r} is not a setting of {type(optimizer).__name__} "
                        f"(its settings: {', '.join(sorted(k for k in group if k != 'params'))})"
                    )
                group[key] = value
        return optimizer

    def _to_tensors(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset as tensors on the plan's device, converted once and kept."""
        if dataset.is_samples:
            raise PlanError(f"dataset {dataset.name!r} is a sample collection, not arrays")
        cached = self._tensors.get(id(dataset))
        if cached is None or cached[0] is not dataset:
            x, y = torch.as_tensor(dataset.x), torch.as_tensor(dataset.y)
            if x.dtype == torch.float64:
                x = x.float()
            if y.dtype == torch.float64:
                y = y.float()
            cached = (dataset, x.to(self.device), y.to(self.device))
            if len(self._tensors) >= 4:
                self._tensors.clear()
            self._tensors[id(dataset)] = cached
        return cached[1], cached[2]

    def training_batches(
        self, data: Any, args: TrainingArgs, generator: torch.Generator | None
    ) -> Iterator[tuple[Any, Any]]:
        """The round's training batches ``(x, y)`` on the plan's device, ``args.num_steps``
        of them, from :meth:`training_data`'s ``data``: shuffled each pass with ``generator``
        (the round's seed; None: torch's global generator). Override to batch otherwise."""
        steps = None
        if isinstance(data, Dataset) and data.is_samples:
            data = sample_loader(data, args.batch_size, shuffle=True, generator=generator)
        if isinstance(data, torch.utils.data.DataLoader):
            steps = (
                args.num_updates if args.num_updates is not None else (args.epochs or 1) * len(data)
            )
            done = 0
            while done < steps:
                for batch in data:
                    check_interrupt()
                    xb, yb = batch[0], batch[1]
                    yield _to(xb, self.device), _to(yb, self.device)
                    done += 1
                    if done == steps:
                        return
            return
        x, y = self._to_tensors(data)
        n = len(x)
        steps = args.num_steps(n)
        done = 0
        while done < steps:
            order = torch.randperm(n, generator=generator)
            if self.device.type != "cpu":
                order = order.to(self.device)
            for start in range(0, n, args.batch_size):
                check_interrupt()
                index = order[start : start + args.batch_size]
                yield x[index], y[index]
                done += 1
                if done == steps:
                    return

    def train(self, dataset: Dataset, args: TrainingArgs) -> TrainResult:
        model = self._model()
        device = resolve_device(args.device)
        if device != self.device:
            model.to(device)
            self.device = device
            self._tensors.clear()
        optimizer = self._torch_optimizer(args)
        declearn_step = isinstance(optimizer, Optimizer)
        if declearn_step:
            optimizer.start_round()
        generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
        data = self.training_data(dataset, args)
        n_samples = (
            len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else len(data)
        )
        model.train()
        total = torch.zeros((), device=self.device)
        steps = 0
        for xb, yb in self.training_batches(data, args, generator):
            if declearn_step:
                model.zero_grad(set_to_none=True)
            else:
                optimizer.zero_grad(set_to_none=True)
            loss = self.training_step(xb, yb)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise PlanError(f"training_step must return a scalar tensor, got {loss!r}")
            loss.backward()
            if declearn_step:
                optimizer.step(model)
            else:
                optimizer.step()
            total += loss.detach()
            steps += 1
        model.zero_grad(set_to_none=True)  # gradients are not kept between rounds
        if steps == 0:
            raise PlanError("training ran zero steps: the training data is empty")
        return TrainResult(n_samples=n_samples, n_steps=steps, loss=float(total) / steps)

    # -- evaluation -----------------------------------------------------------------------------
    def testing_step(self, data: Any, target: Any) -> dict[str, float]:
        """Metrics of one evaluation batch (override for custom metrics). Default: ``loss`` and,
        for integer targets and one output column per class, ``accuracy``."""
        output = self.model(data)
        metrics: dict[str, float] = {}
        if self.loss is not None:
            metrics["loss"] = float(self.loss(output, target))
        if not torch.is_floating_point(target) and output.dim() == 2 and output.shape[1] > 1:
            metrics["accuracy"] = (output.argmax(dim=1) == target).sum().item() / len(target)
        return metrics

    def evaluate(self, dataset: Dataset, args: TrainingArgs) -> dict[str, float]:
        """Metrics of the model on ``dataset``: the plan's :attr:`metrics`, or else the dataset's
        own (``Dataset.metrics``), each computed once on all its predictions, with the loss
        over them; without either, :meth:`testing_step`'s values averaged over the samples."""
        metrics = self.metrics or getattr(dataset, "metrics", None) or {}
        if not isinstance(metrics, dict):
            raise PlanError(
                f"{type(self).__name__}.metrics must map names to functions fn(y_true, y_pred), "
                f"got {metrics!r}"
            )
        if metrics:
            return self._whole_split_metrics(dataset, args, metrics)
        model = self._model()
        model.eval()
        totals: dict[str, float] = {}
        with torch.no_grad():
            for xb, yb in self.evaluation_batches(dataset, args):
                for key, value in self.testing_step(xb, yb).items():
                    totals[key] = totals.get(key, 0.0) + float(value) * len(xb)
        return {key: value / len(dataset) for key, value in totals.items()}

    def _whole_split_metrics(
        self, dataset: Dataset, args: TrainingArgs, metrics: dict[str, Callable[[Any, Any], Any]]
    ) -> dict[str, float]:
        model = self._model()
        was_training = model.training
        model.eval()
        predictions, targets = [], []
        try:
            with torch.no_grad():
                for xb, yb in self.evaluation_batches(dataset, args):
                    predictions.append(model(xb))
                    targets.append(yb)
        finally:
            model.train(was_training)
        if not predictions:
            return {}
        y_pred, y_true = torch.cat(predictions), torch.cat(targets)
        true, pred = y_true.detach().cpu().numpy(), y_pred.detach().cpu().numpy()
        values: dict[str, float] = {}
        for name, fn in metrics.items():
            try:
                value = fn(true, pred)
                values[name] = float(value)
            except Exception as exc:  # the metric's own code, on data it may not be defined for
                raise PlanError(
                    f"metric {name!r} ({getattr(fn, '__module__', '?')}."
                    f"{getattr(fn, '__qualname__', fn)}) failed on {dataset.name!r} "
                    f"({len(true)} samples): {type(exc).__name__}: {exc}"
                ) from None
        if self.loss is not None and "loss" not in values:
            with torch.no_grad():
                values["loss"] = float(self.loss(y_pred, y_true))
        return values

    def evaluation_batches(self, dataset: Dataset, args: TrainingArgs) -> Iterator[tuple[Any, Any]]:
        """``dataset`` in order, as batches on the plan's device: slices of its tensors, or for a
        sample collection a DataLoader's batches (``args.batch_size``, its ``collate_fn``)."""
        if dataset.is_samples:
            for xb, yb in sample_loader(dataset, args.batch_size, shuffle=False):
                yield _to(xb, self.device), _to(yb, self.device)
            return
        x, y = self._to_tensors(dataset)
        size = max(args.batch_size, 1024)
        for start in range(0, len(x), size):
            yield x[start : start + size], y[start : start + size]


def sample_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a sample-collection dataset, with the dataset's ``collate_fn``."""
    return torch.utils.data.DataLoader(
        dataset.x,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        collate_fn=dataset.collate_fn,
    )


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if torch.is_tensor(value) else value


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class TorchMLPPlan(TorchTrainingPlan):
    """A multi-layer perceptron configured by ``model_args`` (registered as ``torch-mlp``).

    - ``layers``: sizes from input to output, e.g. ``[30, 64, 2]`` (required);
    - ``activation``: ``relu`` (default), ``tanh``, ``sigmoid`` or ``gelu``;
    - ``loss``: ``cross_entropy`` (default; integer targets) or ``mse``;
    - ``optimizer``: ``{"type": "sgd" | "adam", "lr": ...}`` for a torch optimizer, or
      ``{"type": "fedplug", "lr": ..., "modules": [...], "regularizers": [...]}`` for a
      :class:`fedplug.Optimizer`; default torch SGD at the ``lr`` training argument.
    """

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        super().__init__(model_args)
        unknown = sorted(set(self.model_args) - {"layers", "activation", "loss", "optimizer"})
        if unknown:
            raise ConfigError(
                f"unknown model_args key {unknown[0]!r} for torch-mlp; "
                "known: layers, activation, loss, optimizer"
            )
        layers = self.model_args.get("layers")
        if not (
            isinstance(layers, list)
            and len(layers) >= 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in layers)
        ):
            raise ConfigError(
                f"model_args['layers'] must be a list of >= 2 positive ints, got {layers!r}"
            )
        activation = self.model_args.get("activation", "relu")
        if activation not in _ACTIVATIONS:
            raise ConfigError(
                f"model_args['activation'] must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        modules: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(layers)):
            modules.append(nn.Linear(n_in, n_out))
            if i < len(layers) - 2:
                modules.append(_ACTIVATIONS[activation]())
        self.model = nn.Sequential(*modules)
        loss = self.model_args.get("loss", "cross_entropy")
        losses = {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss}
        if loss not in losses:
            raise ConfigError(f"model_args['loss'] must be one of {sorted(losses)}, got {loss!r}")
        self.loss = losses[loss]()
        self.optimizer = self._build_optimizer(self.model_args.get("optimizer"))

    def _build_optimizer(self, spec: Any) -> Any:
        if spec is None:
            return None
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"model_args['optimizer'] must be a dict with a 'type', got {spec!r}")
        spec = dict(spec)
        kind = spec.pop("type")
        if kind == "fedplug":
            return Optimizer.from_dict(spec)
        lr = spec.pop("lr", 0.01)
        natives = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
        if kind not in natives:
            raise ConfigError(f"optimizer type must be 'fedplug', 'sgd' or 'adam', got {kind!r}")
        try:
            return natives[kind](self.parameters(), lr=lr, **spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {kind} optimizer settings {spec!r}: {exc}") from exc
