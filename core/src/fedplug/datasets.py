"""Node-side datasets: arrays or a collection of samples, with tags, and the built-in loaders.

A :class:`Dataset` holds either two arrays (``x`` features, ``y`` targets, same first dimension) or,
with ``y=None``, a collection of ``(input, target)`` samples in ``x`` (anything with ``len`` and
``x[i]``, such as a ``torch.utils.data.Dataset`` that loads images lazily). It may come with its own
held-out split (``test``, e.g. a FLamby center's predefined test set), used instead of a random one.

Loaders are registered through ``fedplug_register_dataset_types``; core provides ``numpy`` (arrays
or an ``.npz`` file) and ``csv`` (a header row, numeric columns, one target column).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.errors import ConfigError


@dataclass
class Dataset:
    """A node's data, found by experiments through ``tags``.

    :param x: features (an array), or with ``y=None`` a collection of ``(input, target)`` samples.
    :param y: targets, with the same first dimension as ``x``; None for a sample collection.
    :param tags: what experiments select the dataset by.
    :param name: shown in errors and reports.
    :param test: a held-out split that comes with the data; validation uses it, and a
        ``test_ratio`` split is refused.
    :param collate_fn: how a sample collection's samples form a batch (a DataLoader's
        ``collate_fn``); None for the framework's default.
    :param meta: facts about the data for plans that need them (e.g. which FLamby dataset).
    """

    x: Any
    y: Any = None
    tags: list[str] = field(default_factory=list)
    name: str = ""
    test: Dataset | None = None
    collate_fn: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.y is None:
            if isinstance(self.x, np.ndarray):
                raise ConfigError(
                    f"dataset {self.name!r}: x is an array but y is missing; give the targets "
                    "as y (a collection of (input, target) samples goes in x alone)"
                )
            if not (hasattr(self.x, "__len__") and hasattr(self.x, "__getitem__")):
                raise ConfigError(
                    f"dataset {self.name!r}: without y, x must be a collection of (input, target) "
                    f"samples supporting len() and indexing, got {type(self.x).__name__}"
                )
        elif (
            hasattr(self.x, "__len__") and hasattr(self.y, "__len__") and len(self.x) != len(self.y)
        ):
            raise ConfigError(
                f"dataset {self.name!r}: x has {len(self.x)} rows but y has {len(self.y)}; "
                "they must have the same number of samples"
            )
        if self.test is not None and not isinstance(self.test, Dataset):
            raise ConfigError(f"dataset {self.name!r}: test must be a Dataset, got {self.test!r}")
        self.tags = list(self.tags)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def is_samples(self) -> bool:
        """True when ``x`` is a collection of ``(input, target)`` samples rather than an array."""
        return self.y is None

    def arrays(self, who: str) -> tuple[Any, Any]:
        """``(x, y)`` for plans that need arrays; a clear error for a sample collection."""
        if self.is_samples:
            raise ConfigError(
                f"{who} trains on arrays (x, y), but dataset {self.name!r} is a collection of "
                f"samples ({type(self.x).__name__}); use a plan that loads samples in batches, "
                "such as a TorchTrainingPlan"
            )
        return self.x, self.y

    def matches(self, tags: list[str] | None) -> bool:
        """True when every tag of ``tags`` is one of this dataset's tags (Fed-BioMed's rule)."""
        return not tags or set(tags) <= set(self.tags)

    def subset(self, index: np.ndarray, suffix: str) -> Dataset:
        if self.is_samples:
            x, y = Subset(self.x, index), None
        else:
            x, y = self.x[index], self.y[index]
        return Dataset(
            x, y, self.tags, f"{self.name}{suffix}", collate_fn=self.collate_fn, meta=self.meta
        )

    def split(self, test_ratio: float, seed: int | None) -> tuple[Dataset, Dataset | None]:
        """A reproducible (train, test) split; ``test`` is None when ``test_ratio`` is 0.

        A dataset that comes with its own ``test`` split returns it, and refuses a ``test_ratio``
        (held-out data is not drawn twice)."""
        if self.test is not None:
            if test_ratio:
                raise ConfigError(
                    f"dataset {self.name!r} comes with its own test split ({len(self.test)} "
                    f"samples), so test_ratio={test_ratio} does not apply; set test_ratio=0"
                )
            return self, self.test
        n_test = round(len(self) * test_ratio)
        if n_test == 0:
            return self, None
        if n_test >= len(self):
            raise ConfigError(
                f"dataset {self.name!r} has {len(self)} samples: test_ratio={test_ratio} "
                "leaves none for training"
            )
        order = np.random.default_rng(seed).permutation(len(self))
        return self.subset(order[n_test:], ":train"), self.subset(order[:n_test], ":test")


class Subset:
    """Samples ``index`` of a sample collection, without copying them."""

    def __init__(self, samples: Any, index: np.ndarray) -> None:
        self.samples = samples
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.samples[int(self.index[i])]


def load_numpy(
    *,
    x: Any = None,
    y: Any = None,
    path: str | None = None,
    tags: list[str] | None = None,
    name: str = "",
) -> Dataset:
    """Arrays given directly, or an ``.npz`` file with arrays ``x`` and ``y`` (no pickled objects)."""
    if path is not None:
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot load numpy dataset {path!r}: {exc}") from exc
    if x is None or y is None:
        raise ConfigError("a numpy dataset needs either 'path' or both 'x' and 'y'")
    return Dataset(np.asarray(x), np.asarray(y), tags or [], name or (path or "numpy"))


def load_csv(
    *,
    path: str,
    target: str,
    tags: list[str] | None = None,
    name: str = "",
    delimiter: str = ",",
) -> Dataset:
    """A CSV file with a header row and numeric columns; ``target`` names the label column."""
    file = Path(path)
    try:
        with file.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration, csv.Error) as exc:
        raise ConfigError(f"cannot read CSV dataset {path!r}: {str(exc) or 'empty file'}") from exc
    if target not in header:
        raise ConfigError(f"CSV {path!r} has no column {target!r}; columns: {', '.join(header)}")
    if not rows:
        raise ConfigError(f"CSV {path!r} has a header but no data rows")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ConfigError(
                f"CSV {path!r} line {line} has {len(row)} values, the header has {len(header)}"
            )
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"CSV {path!r} has a non-numeric value: {exc}") from exc
    col = header.index(target)
    y = table[:, col]
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    x = np.delete(table, col, axis=1).astype(np.float32)
    return Dataset(x, y, tags or [], name or file.name)
