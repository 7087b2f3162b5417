"""Generate Fed-Synthetic into a folder and record it in ``dataset_location[_debug].yaml``.

As FLamby's script: one headerless csv file ``<center>.data`` per center (features, then the
label), any previous config erased, then ``download_complete`` / ``preprocessing_complete`` and
the generation parameters written to the config. Usage:
``python -m flamby.datasets.fed_synthetic.dataset_creation_scripts.download --output-folder DIR``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from flamby.datasets.fed_synthetic.synthetic_generator import generate_synthetic_dataset
from flamby.utils import create_config, get_config_file_path, write_value_in_config

DEFAULTS = {
    "n_centers": 4,
    "n_samples": 1000,
    "n_features": 10,
    "seed": 42,
    "snr": 3,
    "n_clusters": 3,
    "label_heterogeneity": None,
    "features_heterogeneity": None,
}


def main(output_folder, debug=False, **kwargs):
    """Write the centers' files into ``output_folder`` and the config; return the config path."""
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown generation parameters: {sorted(unknown)}")
    params = {**DEFAULTS, **kwargs}
    os.makedirs(output_folder, exist_ok=True)
    config_path = get_config_file_path("fed_synthetic", debug)
    if os.path.exists(config_path):
        os.remove(config_path)
    _, config_file = create_config(output_folder, debug, "fed_synthetic")
    for center, (X, y) in enumerate(generate_synthetic_dataset(**params)):
        np.savetxt(
            os.path.join(output_folder, f"{center}.data"),
            np.column_stack([X, y.astype(float)]),
            delimiter=",",
            fmt="%.17g",
        )
    write_value_in_config(config_file, "download_complete", True)
    write_value_in_config(config_file, "preprocessing_complete", True)
    write_value_in_config(config_file, "classification", True)
    for key, value in params.items():
        write_value_in_config(config_file, key, value)
    return config_file


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-folder", required=True, help="Where to store the data.")
    parser.add_argument("--debug", action="store_true", help="Write the debug config.")
    parser.add_argument("--centers", type=int, default=DEFAULTS["n_centers"])
    parser.add_argument("--samples", type=int, default=DEFAULTS["n_samples"])
    parser.add_argument("--features", type=int, default=DEFAULTS["n_features"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--snr", type=float, default=DEFAULTS["snr"])
    parser.add_argument("--clusters", type=int, default=DEFAULTS["n_clusters"])
    parser.add_argument("--label-heterogeneity", type=float, default=None)
    parser.add_argument("--features-heterogeneity", type=float, default=None)
    args = parser.parse_args()
    main(
        args.output_folder,
        debug=args.debug,
        n_centers=args.centers,
        n_samples=args.samples,
        n_features=args.features,
        seed=args.seed,
        snr=args.snr,
        n_clusters=args.clusters,
        label_heterogeneity=args.label_heterogeneity,
        features_heterogeneity=args.features_heterogeneity,
    )
