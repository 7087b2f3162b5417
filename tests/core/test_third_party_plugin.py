"""A third-party distribution, really installed with pip, is discovered through its entry point.

The template in ``examples/third_party_plugin`` registers the ``trimmed-mean`` aggregator under
the ``fedplug`` entry-point group. It is installed once per module into a private ``--target``
folder (offline, no build isolation) and put on ``sys.path`` only while a test needs it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedplug import Dataset, Experiment, TrainingArgs, get_plugin_manager
from fedplug.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_plugin"
MODULE = "fedplug_trimmed_mean"


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` the template (from a copy, so the source tree stays clean)."""
    work = tmp_path_factory.mktemp("third_party")
    source = work / "source"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = work / "site"
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",  # offline: setuptools comes from this venv (--no-build-isolation)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_USER": "0",  # --target and --user exclude each other
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return site


@pytest.fixture
def trimmed_mean_installed(installed_site: Path):
    """The installed plugin on ``sys.path`` for one test; nothing of it is left afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(installed_site))  # also invalidates importlib's caches
        yield installed_site
    sys.modules.pop(MODULE, None)
    importlib.invalidate_caches()


def test_the_installed_plugin_is_discovered_with_its_distribution(trimmed_mean_installed, capsys):
    pm = get_plugin_manager()
    info = {info.name: info for info in pm.plugin_infos()}["trimmed-mean"]
    assert info.distribution == "fedplug-trimmed-mean"
    assert info.version == "0.1.0"
    assert info.hooks == ["fedplug_register_aggregators"]
    assert info.error is None

    cls = pm.aggregators["trimmed-mean"]
    assert pm.aggregators.owner("trimmed-mean") == "trimmed-mean"
    assert cls.__name__ == "TrimmedMean"
    # the class comes from the pip-installed copy, not from the examples source tree
    assert Path(sys.modules[cls.__module__].__file__).is_relative_to(trimmed_mean_installed)

    assert main(["plugins", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["trimmed-mean"]["distribution"] == "fedplug-trimmed-mean"


def _nodes(make_nodes, make_data):
    """Four honest nodes and a large one whose labels are flipped (an outlier)."""
    honest = [Dataset(*make_data(120, seed), tags=["tm"], name=f"h{seed}") for seed in range(4)]
    x, y = make_data(400, 99)
    outlier = Dataset(x, 1 - y, tags=["tm"], name="flipped")
    return make_nodes(datasets=[*honest, outlier])


def _run(nodes, aggregator: str) -> Experiment:
    exp = Experiment(
        nodes=nodes,
        tags=["tm"],
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        training_args={"batch_size": 16, "epochs": 1},
        aggregator=aggregator,
        round_limit=4,
        seed=0,
    )
    exp.run()
    return exp


def test_trimmed_mean_experiment_resists_an_outlier_node(
    trimmed_mean_installed, make_nodes, make_data
):
    nodes = _nodes(make_nodes, make_data)
    trimmed = _run(nodes, "trimmed-mean")
    fedavg = _run(nodes, "fedavg")
    assert type(trimmed.aggregator).__name__ == "TrimmedMean"
    assert len(trimmed.history) == 4
    assert trimmed.history[-1]["nodes"] == fedavg.history[-1]["nodes"]

    assert not np.allclose(trimmed.global_params["weight"], fedavg.global_params["weight"])
    x_test, y_test = make_data(1000, 1234)
    test = Dataset(x_test, y_test)
    args = TrainingArgs()
    trimmed_acc = trimmed.training_plan.evaluate(test, args)["accuracy"]
    fedavg_acc = fedavg.training_plan.evaluate(test, args)["accuracy"]
    assert trimmed_acc >= 0.85
    assert trimmed_acc > fedavg_acc + 0.1


def test_nothing_of_the_plugin_is_left_after_the_tests_that_installed_it():
    assert MODULE not in sys.modules
    assert not any("third_party" in str(entry) for entry in sys.path)
    pm = get_plugin_manager()
    assert "trimmed-mean" not in pm.aggregators
    assert "trimmed-mean" not in {info.name for info in pm.plugin_infos()}
