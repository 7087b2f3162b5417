"""Make ``import flamby`` resolve to the test double, and keep its package state clean."""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from flamby_double_support import (  # noqa: E402  (needs the path above)
    config_file,
    license_accepted,
    license_file,
    stashed,
)


@pytest.fixture(autouse=True)
def _no_flamby_state_left_behind():
    """Each test starts without licence or location files, and the originals come back after."""
    with stashed(
        license_file("fed_tcga_brca"),
        config_file("fed_synthetic", False),
        config_file("fed_synthetic", True),
    ):
        yield


@pytest.fixture
def tcga_license():
    """The Fed-TCGA-BRCA licence counts as accepted during the test."""
    with license_accepted("fed_tcga_brca") as path:
        yield path
