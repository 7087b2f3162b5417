"""The framework-agnostic training-plan contract, and the training arguments every plan honours.

A training plan owns a model and knows how to train and evaluate it on a node's data. Across the
framework boundary, parameters are ``dict[str, np.ndarray]``: this is what travels in messages,
what aggregators average and what the researcher's optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedplug.errors import ConfigError

if TYPE_CHECKING:
    from fedplug.datasets import Dataset

Params = dict[str, np.ndarray]

_DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class TrainingArgs:
    """How a node trains in one round. Build it with :meth:`from_dict` to get validation.

    Local work is counted either in ``epochs`` (passes over the node's training split, Fed-BioMed's
    way) or in ``num_updates`` (optimizer steps, FLamby's way), never both; neither means 1 epoch.

    ``device`` is where a plan that can use a GPU (a ``TorchTrainingPlan``) trains: ``"cpu"``
    (the default), ``"cuda"`` or ``"cuda:N"`` (that GPU; a node without it refuses the request
    with an error instead of training on its CPU), or ``"auto"``, the fallback: a node's GPU
    where it has one, else its CPU.
    """

    epochs: int | None = None
    num_updates: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    test_ratio: float = 0.0
    seed: int | None = None
    device: str = "cpu"

    @classmethod
    def from_dict(cls, values: dict[str, Any] | TrainingArgs | None) -> TrainingArgs:
        """Validate a user's dict of training arguments; a :class:`ConfigError` names the bad key."""
        if isinstance(values, TrainingArgs):
            return values
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown training argument {unknown[0]!r}; known arguments: {', '.join(sorted(known))}"
            )
        for key in ("epochs", "num_updates", "batch_size"):
            value = values.get(key)
            if value is None and key != "batch_size":
                continue
            if key == "batch_size" and value is None:
                values.pop(key, None)
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"training argument {key!r} must be a positive int, got {value!r}"
                )
        if values.get("epochs") is not None and values.get("num_updates") is not None:
            raise ConfigError(
                "training arguments 'epochs' and 'num_updates' are both set "
                f"({values['epochs']!r} and {values['num_updates']!r}); give only one"
            )
        lr = values.get("lr")
        if lr is not None and (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not lr > 0
            or not math.isfinite(lr)
        ):
            raise ConfigError(
                f"training argument 'lr' must be a positive finite number, got {lr!r}"
            )
        if lr is not None:
            values["lr"] = float(lr)
        ratio = values.get("test_ratio", 0.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ConfigError(f"training argument 'test_ratio' must be in [0, 1), got {ratio!r}")
        values["test_ratio"] = float(ratio)
        seed = values.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"training argument 'seed' must be a non-negative int, got {seed!r}")
        device = values.get("device", "cpu")
        if not isinstance(device, str) or not (
            device in _DEVICES or re.fullmatch(r"cuda:\d+", device)
        ):
            raise ConfigError(
                f"training argument 'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
            )
        opt_args = values.get("optimizer_args", {})
        if not isinstance(opt_args, dict) or not all(isinstance(k, str) for k in opt_args):
            raise ConfigError(
                f"training argument 'optimizer_args' must be a dict with str keys, got {opt_args!r}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def num_steps(self, n_samples: int) -> int:
        """Optimizer steps this round for a training split of ``n_samples``."""
        if self.num_updates is not None:
            return self.num_updates
        return (self.epochs or 1) * math.ceil(n_samples / self.batch_size)


@dataclass
class TrainResult:
    """What a plan reports after local training."""

    n_samples: int
    n_steps: int
    loss: float


_INTERRUPTED = threading.Event()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` when the run was interrupted (Ctrl-C) while this training
    runs on a thread that the signal does not reach (``Experiment(workers=N)``). Training loops
    call it between batches: :func:`batch_indices` does, and so do fedplug's plans. A plan that
    never calls it still stops, only later (at the end of its local training)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt("the run was interrupted")


@contextlib.contextmanager
def interrupting() -> Iterator[None]:
    """While inside, :func:`check_interrupt` raises in every thread of this process."""
    _INTERRUPTED.set()
    try:
        yield
    finally:
        _INTERRUPTED.clear()


def batch_indices(n_samples: int, args: TrainingArgs, rng: np.random.Generator):
    """Yield index arrays of ``args.batch_size``, reshuffled each pass, for ``args.num_steps`` steps.

    The last batch of a pass may be smaller (as a ``DataLoader`` without ``drop_last``).
    """
    if n_samples <= 0:
        raise ConfigError("cannot draw batches from an empty training set")
    steps = args.num_steps(n_samples)
    done = 0
    while done < steps:
        order = rng.permutation(n_samples)
        for start in range(0, n_samples, args.batch_size):
            check_interrupt()
            yield order[start : start + args.batch_size]
            done += 1
            if done == steps:
                return


class TrainingPlan:
    """Base class of every training plan.

    Subclasses build their model in ``__init__(self, model_args=None)`` and implement
    :meth:`get_parameters`, :meth:`set_parameters`, :meth:`train` and :meth:`evaluate`.
    A plan that may be shipped to a remote node as source declares the imports its source needs
    with :meth:`add_dependency` (``"import torch"``, ``"from torch import nn"``).
    """

    #: Name of the framework (informational; shown in experiment summaries).
    framework: ClassVar[str] = "numpy"

    def __init__(self, model_args: dict[str, Any] | None = None) -> None:
        self.model_args: dict[str, Any] = dict(model_args or {})
        self._dependencies: list[str] = []
        self.optimizer: Any = None
        #: The round a node is serving (0 for the first), set by the node before each
        #: :meth:`train`; None outside a federation. A plan whose batches depend on the round
        #: (e.g. an epoch that spans rounds) reads it here.
        self.round_index: int | None = None

    @classmethod
    def init_seed(cls, seed: int | None) -> None:
        """Seed the framework's global generator before a plan is built (model initialisation)."""

    # -- source shipping ------------------------------------------------------------------------
    def add_dependency(self, lines: list[str] | str) -> None:
        """Declare import lines a remote node must run before it can rebuild this plan's source."""
        for line in [lines] if isinstance(lines, str) else lines:
            line = line.strip()
            if not (line.startswith("import ") or line.startswith("from ")):
                raise ConfigError(f"a dependency must be an import statement, got {line!r}")
            if line not in self._dependencies:
                self._dependencies.append(line)

    @property
    def dependencies(self) -> list[str]:
        return list(self._dependencies)

    # -- the contract ---------------------------------------------------------------------------
    def get_parameters(self) -> Params:
        """The model's trainable state as named numpy arrays (copies the caller may keep)."""
        raise NotImplementedError

    def parameter_views(self) -> Params:
        """The parameters as arrays that may share memory with the model, valid until it next
        changes. A node sends its reply from them before it serves another request, saving a
        copy of the model; plans whose framework allows it override this (default:
        :meth:`get_parameters`)."""
        return self.get_parameters()

    def parameter_buffers(self) -> Params | None:
        """The arrays the model's parameters live in, when writing values into them is loading
        them: C-contiguous, writeable, the names, shapes and dtypes of :meth:`get_parameters`.
        A node receiving a model over the network writes it straight into them, piece by piece
        as it arrives, instead of assembling a copy for :meth:`set_parameters`. ``None`` (the
        default) when the framework keeps its parameters elsewhere (e.g. on a GPU)."""
        return None

    def set_parameters(self, params: Params) -> None:
        """Load named arrays as produced by :meth:`get_parameters` (same names, shapes, dtypes)."""
        raise NotImplementedError

    def training_data(self, dataset: Dataset, args: TrainingArgs) -> Dataset:
        """The data to train on; by default the node's dataset selected by the experiment's tags."""
        return dataset

    def train(self, dataset: Dataset, args: TrainingArgs) -> TrainResult:
        """Train locally for ``args.epochs`` or ``args.num_updates`` and report what was done."""
        raise NotImplementedError

    def evaluate(self, dataset: Dataset, args: TrainingArgs) -> dict[str, float]:
        """Metrics of the current model on ``dataset`` (e.g. ``accuracy``, ``loss``)."""
        raise NotImplementedError

    # -- the optimizer (its state persists across rounds on a node) -----------------------------
    def node_optimizer(self) -> Any:
        """The optimizer this plan steps with (a ``fedplug.Optimizer`` or a native one)."""
        return self.optimizer


def params_spec(params: Params) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of a parameter dict, for comparing two of them."""
    return {name: (tuple(arr.shape), arr.dtype.str) for name, arr in params.items()}
