"""Fed-Synthetic: generated classification data, one csv file per center.

As FLamby's: the folder comes from ``dataset_location.yaml`` (``check_dataset_from_config``, which
raises FLamby's ``ValueError`` when the data were not generated) or from ``data_path``; each
center's records are split once into 66% train / 34% test by a seeded shuffle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flamby.utils import check_dataset_from_config

TRAIN_FRACTION = 0.66
SPLIT_SEED = 43


class SyntheticRaw(Dataset):
    """All records of all centers. Item: ``(X, y)``, ``X`` ``(n_features,)`` and ``y`` ``(1,)``.

    Attributes as FLamby's: ``data_dir``, ``X_dtype``, ``y_dtype``, ``debug``, ``train_fraction``,
    ``features`` (list of tensors), ``labels``, ``centers`` and ``sets`` (per record) and
    ``center_names`` (the centers found, sorted).
    """

    def __init__(self, X_dtype=torch.float32, y_dtype=torch.float32, debug=False, data_path=None):
        if data_path is None:
            self.data_dir = Path(check_dataset_from_config("fed_synthetic", debug)["dataset_path"])
        else:
            if not os.path.exists(data_path):
                raise ValueError(f"The string {data_path} is not a valid path.")
            self.data_dir = Path(data_path)
        self.X_dtype = X_dtype
        self.y_dtype = y_dtype
        self.debug = debug
        self.train_fraction = TRAIN_FRACTION

        files = sorted(self.data_dir.glob("*.data"), key=lambda f: int(f.name.split(".")[0]))
        features, labels = [], []
        self.centers, self.sets = [], []
        for center_file in files:
            table = np.loadtxt(center_file, delimiter=",", ndmin=2)
            n = table.shape[0]
            features.append(table[:, :-1])
            labels.append(table[:, -1:])
            self.centers += [int(center_file.name.split(".")[0])] * n
            n_train = int(np.floor(self.train_fraction * n))
            test = set(np.random.default_rng(SPLIT_SEED).permutation(n)[n_train:].tolist())
            self.sets += ["test" if i in test else "train" for i in range(n)]
        X = np.concatenate(features) if features else np.zeros((0, 0))
        y = np.concatenate(labels) if labels else np.zeros((0, 1))
        self.features = [torch.as_tensor(row, dtype=self.X_dtype) for row in X]
        self.labels = [torch.as_tensor(row, dtype=self.y_dtype) for row in y]
        self.center_names = np.unique(self.centers)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        assert idx < len(self.features), "Index out of range."
        return self.features[idx], self.labels[idx]


class FedSynthetic(SyntheticRaw):
    """Train or test records of one ``center``, or of all centers when ``pooled``."""

    def __init__(
        self,
        center=0,
        train=True,
        pooled=False,
        X_dtype=torch.float32,
        y_dtype=torch.float32,
        debug=False,
        data_path=None,
    ):
        super().__init__(X_dtype=X_dtype, y_dtype=y_dtype, debug=debug, data_path=data_path)
        assert center in self.center_names
        self.chosen_centers = list(self.center_names) if pooled else [center]
        self.chosen_sets = ["train"] if train else ["test"]
        keep = [
            s in self.chosen_sets and c in self.chosen_centers
            for s, c in zip(self.sets, self.centers, strict=True)
        ]
        self.features = [v for v, k in zip(self.features, keep, strict=True) if k]
        self.labels = [v for v, k in zip(self.labels, keep, strict=True) if k]
        self.sets = [v for v, k in zip(self.sets, keep, strict=True) if k]
        self.centers = [v for v, k in zip(self.centers, keep, strict=True) if k]
