"""Deterministic synthetic classification data per center (numpy only).

Each class has a mean on the unit sphere; a record is its class mean (plus an optional per-center
shift) plus Gaussian noise of variance ``0.1 / snr`` per feature, as FLamby's classification
generator does. Centers get ``n_samples // n_centers`` records (the first ones one more for the
remainder), with balanced labels or, given ``label_heterogeneity``, Dirichlet-drawn proportions.
"""

from __future__ import annotations

import numpy as np


def generate_synthetic_dataset(
    n_centers=4,
    n_samples=1000,
    n_features=10,
    seed=42,
    snr=3,
    n_clusters=3,
    label_heterogeneity=None,
    features_heterogeneity=None,
):
    """Return one ``(X, y)`` pair per center: ``X`` float64 ``(n_c, n_features)``, ``y`` int."""
    n_samples, n_centers, n_clusters = int(n_samples), int(n_centers), int(n_clusters)
    rng = np.random.default_rng(seed)
    sizes = [n_samples // n_centers + (c < n_samples % n_centers) for c in range(n_centers)]
    means = rng.normal(size=(n_clusters, n_features))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    noise_scale = np.sqrt(0.1 / snr)
    centers = []
    for size in sizes:
        if label_heterogeneity is None:
            counts = np.array(
                [size // n_clusters + (k < size % n_clusters) for k in range(n_clusters)]
            )
        else:
            proportions = rng.dirichlet(np.full(n_clusters, float(label_heterogeneity)))
            counts = np.floor(proportions * size).astype(int)
            counts[: size - counts.sum()] += 1
        shift = features_heterogeneity * rng.random(n_features) if features_heterogeneity else 0.0
        y = np.repeat(np.arange(n_clusters), counts)
        X = means[y] + shift + rng.normal(scale=noise_scale, size=(size, n_features))
        centers.append((X, y))
    return centers
