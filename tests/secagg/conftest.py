"""The secagg tests' FLamby run uses the FLamby test double (``tests/flamby_double``), with the
same arrangement as ``tests/flamby_datasets``: ``import flamby`` resolves to the double, and each
test starts without FLamby state (licence acceptance, dataset location) and puts back whatever
was there before, using the double's own helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DOUBLE_ROOT = Path(__file__).resolve().parent.parent / "flamby_double"
if str(DOUBLE_ROOT) not in sys.path:
    sys.path.insert(0, str(DOUBLE_ROOT))

from flamby_double_support import config_file, license_file, stashed  # noqa: E402


@pytest.fixture(autouse=True)
def _no_flamby_state_left_behind():
    """Each test starts without licence or location files (also those a child process writes),
    and the originals come back after."""
    with stashed(
        license_file("fed_tcga_brca"),
        config_file("fed_synthetic", False),
        config_file("fed_synthetic", True),
    ):
        yield
