"""Node-side datasets: an in-memory (features, targets) pair with tags, and the built-in loaders.

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
    """Features ``x`` and targets ``y`` (same first dimension), found by experiments through ``tags``."""

    x: Any
    y: Any
    tags: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if hasattr(self.x, "shape") and hasattr(self.y, "shape") and len(self.x) != len(self.y):
            raise ConfigError(
                f"dataset {self.name!r}: x has {len(self.x)} rows but y has {len(self.y)}; "
                "they must have the same number of samples"
            )
        self.tags = list(self.tags)

    def __len__(self) -> int:
        return len(self.x)

    def matches(self, tags: list[str] | None) -> bool:
        """True when every tag of ``tags`` is one of this dataset's tags (Fed-BioMed's rule)."""
        return not tags or set(tags) <= set(self.tags)

    def subset(self, index: np.ndarray, suffix: str) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.tags, f"{self.name}{suffix}")

    def split(self, test_ratio: float, seed: int | None) -> tuple[Dataset, Dataset | None]:
        """A reproducible (train, test) split; ``test`` is None when ``test_ratio`` is 0."""
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
