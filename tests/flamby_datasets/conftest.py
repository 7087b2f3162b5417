"""The fedplug-flamby tests run against the FLamby test double (``tests/flamby_double``).

``import flamby`` resolves to the double, and every test starts without FLamby state (licence
acceptance, dataset location) and puts back whatever was there before, using the double's own
helpers; child processes get the double through the ``child_env`` fixture.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

DOUBLE_ROOT = Path(__file__).resolve().parent.parent / "flamby_double"
if str(DOUBLE_ROOT) not in sys.path:
    sys.path.insert(0, str(DOUBLE_ROOT))

from flamby_double_support import (  # noqa: E402  (needs the path above)
    config_file,
    license_accepted,
    license_file,
    stashed,
)


def _child_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FEDPLUG_DISABLE_PLUGINS", "FEDPLUG_STRICT_PLUGINS")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(DOUBLE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


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


@pytest.fixture(autouse=True)
def _plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the installed plugins, whatever the developer's shell exports."""
    monkeypatch.delenv("FEDPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("FEDPLUG_STRICT_PLUGINS", raising=False)


@pytest.fixture
def child_env():
    """``child_env(**extra)``: the environment of a child Python: the FLamby double importable,
    every plugin enabled (whatever the developer's shell exports), non-interactive plotting."""
    return _child_env


@pytest.fixture
def tcga_license():
    """The Fed-TCGA-BRCA licence counts as accepted during the test (the acceptance file)."""
    with license_accepted("fed_tcga_brca") as path:
        yield path
