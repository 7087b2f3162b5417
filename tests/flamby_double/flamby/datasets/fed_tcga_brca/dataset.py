"""Fed-TCGA-BRCA: clinical covariates and (event, time) of 1,088 breast-cancer patients, 6 regions.

The data are FLamby's own preprocessed files, shipped in ``data/``: ``brca.csv`` (``pid``, the 39
covariates as FLamby uses them, unscaled, then ``E`` and ``T``) and ``train_test_split.csv``
(``pid``, ``fold`` = train/test, ``fold2`` = ``train_K``/``test_K`` for region K). Rows keep
``brca.csv``'s order, as FLamby's selection does.
"""

from __future__ import annotations

import csv
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from flamby.utils import accept_license

LICENSE_LINK = "https://gdc.cancer.gov/access-data/data-access-processes-and-tools"
NUM_FEATURES = 39
_DATA_DIR = Path(os.path.realpath(__file__)).parent / "data"


@lru_cache(maxsize=1)
def _read_brca(path: str) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(column names, pids, float64 array of the 41 value columns) of ``brca.csv``."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    header, body = rows[0], rows[1:]
    if len(header) != NUM_FEATURES + 3 or header[0] != "pid" or header[-2:] != ["E", "T"]:
        raise ValueError(f"{path}: unexpected columns {header[:2]}...{header[-2:]}")
    values = np.array([[float(v) for v in row[1:]] for row in body], dtype=np.float64)
    return tuple(header), tuple(row[0] for row in body), values


@lru_cache(maxsize=1)
def _read_split(path: str) -> tuple[tuple[str, str, str], ...]:
    """(pid, fold, fold2) rows of ``train_test_split.csv``."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return tuple((row["pid"], row["fold"], row["fold2"]) for row in reader)


class TcgaBrcaRaw(torch.utils.data.Dataset):
    """All 1,096 patients of ``brca.csv`` (also the 8 that the train/test split leaves out).

    Item ``idx``: ``(x, y)`` with ``x`` the 39 covariates (shape ``(39,)``, ``X_dtype``) and ``y`` =
    ``[E, T]`` (shape ``(2,)``, ``y_dtype``). Constructing it first calls
    ``flamby.utils.accept_license`` for ``fed_tcga_brca``, as FLamby does.

    Attributes as FLamby's: ``X_dtype``, ``y_dtype``, ``dic`` (paths of the two csv files); the
    selected rows are ``pids`` (patient ids), ``features`` and ``targets`` (numpy arrays) where
    FLamby keeps a pandas ``data`` frame.
    """

    def __init__(self, X_dtype=torch.float32, y_dtype=torch.float32):
        accept_license(LICENSE_LINK, "fed_tcga_brca")
        self.dic = {
            "input_preprocessed": str(_DATA_DIR / "brca.csv"),
            "train_test_split": str(_DATA_DIR / "train_test_split.csv"),
        }
        self.X_dtype = X_dtype
        self.y_dtype = y_dtype
        self.columns, pids, values = _read_brca(self.dic["input_preprocessed"])
        self._select(pids, values, np.ones(len(pids), dtype=bool))

    def _select(self, pids, values, mask):
        self.pids = [pid for pid, keep in zip(pids, mask, strict=True) if keep]
        self.features = values[mask, :NUM_FEATURES]
        self.targets = values[mask, NUM_FEATURES:]

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, idx):
        return (
            torch.tensor(self.features[idx], dtype=self.X_dtype),
            torch.tensor(self.targets[idx], dtype=self.y_dtype),
        )


class FedTcgaBrca(TcgaBrcaRaw):
    """Train or test data of one region (``center`` 0..5), or of all regions when ``pooled``.

    The split is FLamby's static one: ``fold2 == f"{train|test}_{center}"``, or ``fold ==
    "train"|"test"`` when pooled. Sizes (train/test): 248/63, 156/40, 164/42, 129/33, 129/33,
    40/11; pooled 866/222. Attributes as FLamby's: ``center``, ``train_test``, ``pooled``, ``key``.
    """

    def __init__(
        self,
        center: int = 0,
        train: bool = True,
        pooled: bool = False,
        X_dtype: torch.dtype = torch.float32,
        y_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(X_dtype=X_dtype, y_dtype=y_dtype)
        self.center = center
        self.train_test = "train" if train else "test"
        self.pooled = pooled
        self.key = f"{self.train_test}_{self.center}"
        split = _read_split(self.dic["train_test_split"])
        if pooled:
            chosen = {pid for pid, fold, _ in split if fold == self.train_test}
        else:
            assert center in range(6)
            chosen = {pid for pid, _, fold2 in split if fold2 == self.key}
        _, pids, values = _read_brca(self.dic["input_preprocessed"])
        self._select(pids, values, np.array([pid in chosen for pid in pids], dtype=bool))
