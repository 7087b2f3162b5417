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
import math
from dataclasses import InitVar, dataclass, field
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
    :param metrics: the data's own evaluation metrics, ``name -> fn(y_true, y_pred)`` on a whole
        split's targets and predictions (numpy arrays) returning a number, such as a FLamby
        dataset's ``metric``; plans that declare none of their own evaluate with them
        (``TorchTrainingPlan``).
    :param check_finite: refuse arrays ``x`` and ``y`` that hold NaN or infinite values (a
        :class:`~fedplug.errors.ConfigError` naming the first one's row and column), which would
        otherwise surface later as a diverged loss. Pass False for a plan that handles missing
        values itself. A sample collection is not scanned (its samples load lazily).
    """

    x: Any
    y: Any = None
    tags: list[str] = field(default_factory=list)
    name: str = ""
    test: Dataset | None = None
    collate_fn: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    check_finite: InitVar[bool] = True

    def __post_init__(self, check_finite: bool) -> None:
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
        if not isinstance(self.metrics, dict) or not all(
            isinstance(key, str) and callable(fn) for key, fn in self.metrics.items()
        ):
            raise ConfigError(
                f"dataset {self.name!r}: metrics must map names to functions "
                f"fn(y_true, y_pred), got {self.metrics!r}"
            )
        if check_finite:
            for what, values in (("x", self.x), ("y", self.y)):
                _check_finite(self.name, what, values)
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
            x,
            y,
            self.tags,
            f"{self.name}{suffix}",
            collate_fn=self.collate_fn,
            meta=self.meta,
            metrics=self.metrics,
            check_finite=False,  # rows of data already checked (or deliberately not)
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


#: elements scanned at a time for NaN and infinities (bounds the scan's temporary memory)
_SCAN_ELEMENTS = 1 << 22


def first_non_finite(values: Any) -> tuple[tuple[int, ...], int] | None:
    """The index of the first NaN or infinite element of a float or complex numpy array and how
    many there are, or None (also for anything else: integer arrays, sample collections)."""
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "fc" or values.size == 0:
        return None
    if values.ndim == 0:
        return None if np.isfinite(values) else ((), 1)
    rows = max(1, _SCAN_ELEMENTS // max(1, values[0].size))
    first: tuple[int, ...] | None = None
    count = 0
    for start in range(0, len(values), rows):
        bad = ~np.isfinite(values[start : start + rows])
        found = int(np.count_nonzero(bad))
        if found and first is None:
            index = np.argwhere(bad)[0]
            first = (int(index[0]) + start, *(int(i) for i in index[1:]))
        count += found
    return None if first is None else (first, count)


def _check_finite(name: str, what: str, values: Any) -> None:
    found = first_non_finite(values)
    if found is None:
        return
    index, count = found
    notes = ["counting from 0"] if index else []
    if count > 1:
        notes.append(f"{count} non-finite values in all")
    if not index:
        where = ""
    elif len(index) == 1:
        where = f" at row {index[0]}"
    elif len(index) == 2:
        where = f" at row {index[0]}, column {index[1]}"
    else:
        where = f" at row {index[0]}, position {index[1:]}"
    where += f" ({'; '.join(notes)})" if notes else ""
    raise ConfigError(
        f"dataset {name!r}: {what} holds {values[index]}{where}; NaN and infinite values make "
        "training diverge: fill or drop them before adding the dataset (e.g. numpy.nan_to_num, "
        "or pandas' fillna/dropna), or build the Dataset with check_finite=False if its plan "
        "handles missing values itself"
    )


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
    """A CSV file with a header row and numeric columns; ``target`` names the label column.

    Every cell must hold a finite number: an empty cell, a word, ``nan`` or ``inf`` is refused
    with its line in the file and its column's name (fedplug does not impute missing values;
    fill or drop them first). Blank lines are skipped."""
    file = Path(path)
    try:
        with file.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader)
            rows, lines = [], []
            for row in reader:
                if not any(cell.strip() for cell in row) and len(row) <= 1:
                    continue  # a blank line (often the file's last)
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, StopIteration, csv.Error) as exc:
        raise ConfigError(f"cannot read CSV dataset {path!r}: {str(exc) or 'empty file'}") from exc
    if target not in header:
        raise ConfigError(f"CSV {path!r} has no column {target!r}; columns: {', '.join(header)}")
    if not rows:
        raise ConfigError(f"CSV {path!r} has a header but no data rows")
    for line, row in zip(lines, rows, strict=True):
        if len(row) != len(header):
            raise ConfigError(
                f"CSV {path!r} line {line} has {len(row)} values, the header has {len(header)}"
            )
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        _raise_bad_cell(path, header, rows, lines)
        raise ConfigError(f"CSV {path!r} has a non-numeric value: {exc}") from exc
    if not np.isfinite(table).all():
        _raise_bad_cell(path, header, rows, lines)
    col = header.index(target)
    y = table[:, col]
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    with np.errstate(over="ignore"):
        x = np.delete(table, col, axis=1).astype(np.float32)
    found = first_non_finite(x)
    if found is not None:  # finite in float64, beyond float32's range
        (row, feature), _ = found
        column = [i for i in range(len(header)) if i != col][feature]
        raise ConfigError(
            f"CSV {path!r} line {lines[row]}, column {header[column]!r} (column {column + 1}) "
            f"holds {rows[row][column].strip()!r}, beyond the range of a 32-bit float "
            f"(±{np.finfo(np.float32).max:.3g}), in which features are kept; rescale the column"
        )
    return Dataset(x, y, tags or [], name or file.name)


def _raise_bad_cell(path: str, header: list[str], rows: list[list[str]], lines: list[int]) -> None:
    """Raise a ConfigError naming the first cell of ``rows`` that is not a finite number: its
    line in the file, its column's name and number, and what it holds."""
    for line, row in zip(lines, rows, strict=True):
        for col, cell in enumerate(row):
            try:
                value = float(cell)
            except ValueError:
                problem = "is empty" if not cell.strip() else f"holds {cell!r}, a non-numeric value"
            else:
                if math.isfinite(value):
                    continue
                problem = f"holds {cell.strip()!r}, which is not a finite number"
            raise ConfigError(
                f"CSV {path!r} line {line}, column {header[col]!r} (column {col + 1}) {problem}; "
                "every cell must hold a number: fill or drop the rows with missing or "
                "non-numeric values before adding the dataset (fedplug does not impute them)"
            )
