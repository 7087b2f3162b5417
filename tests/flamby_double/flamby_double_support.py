"""Helpers for tests that use the FLamby double without leaving files in the repository.

FLamby keeps its state inside its package: the licence acceptance file
``flamby/datasets/<name>/dataset_creation_scripts/license_agreement_<name>`` and the dataset
location ``.../dataset_creation_scripts/dataset_location[_debug].yaml``. These context managers
create that state for the duration of a test and then put back exactly what was there before
(``tests/flamby_double`` must be on ``sys.path``, as its conftest arranges).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DOUBLE_ROOT = Path(__file__).resolve().parent
DATASETS_DIR = DOUBLE_ROOT / "flamby" / "datasets"


def license_file(dataset_name: str = "fed_tcga_brca") -> Path:
    """Where ``flamby.utils.accept_license`` records acceptance for ``dataset_name``."""
    return (
        DATASETS_DIR
        / dataset_name
        / "dataset_creation_scripts"
        / (f"license_agreement_{dataset_name}")
    )


def config_file(dataset_name: str = "fed_synthetic", debug: bool = False) -> Path:
    """Where FLamby keeps the dataset location of ``dataset_name``."""
    name = "dataset_location_debug.yaml" if debug else "dataset_location.yaml"
    return DATASETS_DIR / dataset_name / "dataset_creation_scripts" / name


@contextmanager
def stashed(*paths: Path) -> Iterator[None]:
    """Move the existing ``paths`` aside, and on exit remove what is there and restore them."""
    keep = Path(tempfile.mkdtemp(prefix="flamby-double-stash-"))
    moved = []
    try:
        for i, path in enumerate(paths):
            if path.exists():
                shutil.move(str(path), keep / str(i))
                moved.append((i, path))
        yield
    finally:
        for path in paths:
            if path.exists():
                path.unlink()
        for i, path in moved:
            shutil.move(str(keep / str(i)), path)
        shutil.rmtree(keep, ignore_errors=True)


@contextmanager
def license_accepted(dataset_name: str = "fed_tcga_brca") -> Iterator[Path]:
    """The licence of ``dataset_name`` counts as accepted inside the block (no stdin prompt)."""
    path = license_file(dataset_name)
    with stashed(path):
        path.touch()
        yield path


@contextmanager
def synthetic_downloaded(output_folder: str | os.PathLike, **params) -> Iterator[Path]:
    """Fed-Synthetic generated into ``output_folder`` and recorded in its config, for the block.

    ``params`` go to the generation (``n_centers``, ``n_samples``, ``n_features``, ``seed``,
    ``snr``, ``n_clusters``, ``label_heterogeneity``, ``features_heterogeneity``).
    """
    from flamby.datasets.fed_synthetic.dataset_creation_scripts import download

    with stashed(config_file("fed_synthetic", False), config_file("fed_synthetic", True)):
        yield Path(download.main(str(output_folder), **params))
