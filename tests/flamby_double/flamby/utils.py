"""The parts of ``flamby.utils`` that FLamby's datasets and benchmarks use.

- ``accept_license(license_link, dataset_name)``: asks on standard input (``input()``) whether the
  data terms were accepted, and records a yes as the empty file
  ``<datasets>/<dataset_name>/dataset_creation_scripts/license_agreement_<dataset_name>``; once that
  file exists it asks nothing. Like FLamby: "no" ends the process (``sys.exit()``), any other answer
  asks again, and an exhausted or closed standard input raises ``EOFError`` from ``input()``.
- ``check_dataset_from_config(dataset_name, debug)``: reads
  ``<datasets>/<dataset_name>/dataset_creation_scripts/dataset_location[_debug].yaml`` and raises
  FLamby's ``ValueError``s when it is missing or records an unfinished download/preprocessing.
- ``read_config``, ``get_config_file_path``, ``create_config``, ``write_value_in_config`` and
  ``evaluate_model_on_tests``, with FLamby's signatures.

PyYAML is not a dependency here: the config files are written as flat YAML mappings whose values
are JSON scalars or flow lists (valid YAML), and read back with a parser for that subset (which
also reads the plain scalars PyYAML's ``dump`` writes for such mappings).

As FLamby's module does, importing this one seeds torch's global generator (``torch.manual_seed(42)``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import flamby.datasets as datasets

torch.manual_seed(42)  # FLamby's flamby.utils does this at import; kept for the same global state.

# The names FLamby's helpers accept (assertion lists of flamby.utils).
_CONFIG_DATASETS = (
    "fed_camelyon16",
    "fed_heart_disease",
    "fed_synthetic",
    "fed_isic2019",
    "fed_lidc_idri",
    "fed_ixi",
    "fed_kits19",
)
_LICENSED_DATASETS = (
    "fed_camelyon16",
    "fed_heart_disease",
    "fed_isic2019",
    "fed_lidc_idri",
    "fed_ixi",
    "fed_kits19",
    "fed_tcga_brca",
)


def _creation_scripts_folder(dataset_name: str) -> str:
    datasets_dir = Path(os.path.realpath(datasets.__file__)).parent.resolve()
    return os.path.join(str(datasets_dir), dataset_name, "dataset_creation_scripts")


def evaluate_model_on_tests(model, test_dataloaders, metric, use_gpu=True, return_pred=False):
    """Evaluate ``model`` on each dataloader with ``metric(y_true, y_pred)`` (numpy arrays).

    Returns ``{"client_test_<i>": metric value}`` (and the true/predicted arrays per client when
    ``return_pred``). The model is put in eval mode, evaluated without gradients, and put back in
    train mode; torch's global random state is left as it was before each dataloader's iteration.
    """
    on_gpu = use_gpu and torch.cuda.is_available()
    if on_gpu:
        model = model.cuda()
    results, y_true_by_client, y_pred_by_client = {}, {}, {}
    model.eval()
    with torch.no_grad():
        for i, loader in enumerate(test_dataloaders):
            rng_state = torch.get_rng_state()
            batches = iter(loader)
            torch.set_rng_state(rng_state)
            preds, truths = [], []
            for X, y in batches:
                if on_gpu:
                    X, y = X.cuda(), y.cuda()
                preds.append(model(X).detach().cpu().numpy())
                truths.append(y.detach().cpu().numpy())
            y_true, y_pred = np.concatenate(truths), np.concatenate(preds)
            key = f"client_test_{i}"
            results[key] = metric(y_true, y_pred)
            if return_pred:
                y_true_by_client[key], y_pred_by_client[key] = y_true, y_pred
    model.train()
    if return_pred:
        return results, y_true_by_client, y_pred_by_client
    return results


def _parse_scalar(text: str):
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    try:
        return json.loads(text)
    except ValueError:
        pass
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


def _dump_value(value) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def read_config(config_file):
    """Read a dataset config file; ``FileNotFoundError`` if it does not exist."""
    if not os.path.exists(config_file):
        raise FileNotFoundError("Could not find the config to read.")
    config = {}
    with open(config_file) as file:
        for line in file:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"Unsupported line in {config_file}: {line!r}")
            config[key.strip()] = _parse_scalar(value)
    return config


def _write_config(config_file, config):
    with open(config_file, "w") as file:
        for key in sorted(config):
            file.write(f"{key}: {_dump_value(config[key])}\n")


def get_config_file_path(dataset_name, debug):
    """Path of ``dataset_location.yaml`` (``dataset_location_debug.yaml`` when ``debug``)."""
    assert dataset_name in _CONFIG_DATASETS, f"Dataset name {dataset_name} not valid."
    name = "dataset_location_debug.yaml" if debug else "dataset_location.yaml"
    return os.path.join(_creation_scripts_folder(dataset_name), name)


def create_config(output_folder, debug, dataset_name="fed_camelyon16"):
    """Create the config file recording ``output_folder`` (or read the existing one).

    Returns ``(config dict, config file path)``; ``ValueError`` if ``output_folder`` is not a folder.
    """
    if not os.path.isdir(output_folder):
        raise ValueError(f"{output_folder} is not recognized as a folder")
    config_file = get_config_file_path(dataset_name, debug)
    if os.path.exists(config_file):
        return read_config(config_file), config_file
    config = {
        "dataset_path": os.path.realpath(output_folder),
        "download_complete": False,
        "preprocessing_complete": False,
    }
    _write_config(config_file, config)
    return config, config_file


def write_value_in_config(config_file, key, value):
    """Set ``key`` to ``value`` in an existing config file (``FileNotFoundError`` otherwise)."""
    if not os.path.exists(config_file):
        raise FileNotFoundError(
            "The config file doesn't exist. Please create the config file before updating it."
        )
    config = read_config(config_file)
    config[key] = value
    _write_config(config_file, config)


def check_dataset_from_config(dataset_name, debug):
    """Return the dataset's config if its download and preprocessing are complete.

    Without the config file: in debug mode a ``ValueError``; otherwise FLamby prints a warning and
    falls back to the debug config, raising a ``ValueError`` when that one is missing too.
    """
    try:
        config = read_config(get_config_file_path(dataset_name, debug))
    except FileNotFoundError:
        if debug:
            raise ValueError(
                "The dataset was not downloaded, config file not found for debug mode. Please "
                "refer to the download instructions inside "
                f"FLamby/flamby/datasets/{dataset_name}/README.md"
            ) from None
        print(
            "WARNING USING DEBUG MODE DATASET EVEN THOUGH DEBUG WAS SET TO FALSE, COULD NOT FIND "
            "NON DEBUG DATASET CONFIG FILE"
        )
        try:
            config = read_config(get_config_file_path(dataset_name, True))
        except FileNotFoundError:
            raise ValueError(
                f"It seems the dataset {dataset_name} was not downloaded as the config file is "
                "not found for either normal or debug mode. Please refer to the download "
                f"instructions inside FLamby/flamby/datasets/{dataset_name}/README.md"
            ) from None
    if not config["download_complete"]:
        # FLamby's message, missing space included.
        raise ValueError(
            f"It seems the dataset {dataset_name} was only partially downloaded"
            "please restart the download script to finish the download."
        )
    if not config["preprocessing_complete"]:
        raise ValueError(
            f"It seems the preprocessing for dataset {dataset_name} is not yet finished please "
            "run the appropriate preprocessing scripts before use"
        )
    return config


def accept_license(license_link, dataset_name, save_agreement=True):
    """Ask on standard input for acceptance of the data terms, unless it was recorded before.

    A yes (``yes``, ``y``, ``ye``, ``1``, any case) is recorded as an empty file
    ``license_agreement_<dataset_name>`` in the dataset's ``dataset_creation_scripts`` folder
    (when ``save_agreement``); a no (``no``, ``n``, ``0``) exits through ``sys.exit()``; anything
    else asks again. With standard input closed or exhausted, ``input()`` raises ``EOFError``.
    """
    assert dataset_name in _LICENSED_DATASETS, f"Dataset name {dataset_name} not valid."
    agreement_file = Path(_creation_scripts_folder(dataset_name)) / (
        f"license_agreement_{dataset_name}"
    )
    if agreement_file.exists():
        return
    while True:
        answer = input(
            "Have you taken the time to read and accept the data terms on the original website, "
            f"available at the following link: {license_link} ? | (y/n)\n\n\n"
        ).lower()
        if answer in ("yes", "y", "1", "ye"):
            print("Saving license agreement")
            if save_agreement:
                agreement_file.touch()
            print("You may now proceed to download.\n")
            return
        if answer in ("no", "n", "0"):
            print(
                "Since you have not read and accepted the license terms the download of the "
                "dataset is aborted. Please come back when you have fulfilled this legal "
                "obligation."
            )
            sys.exit()
        print(
            "If you wish to proceed with the download you need to read and accept the license "
            "and data terms of the original data owners. Please read and accept the terms and "
            "answer yes.\n\n\n"
        )
