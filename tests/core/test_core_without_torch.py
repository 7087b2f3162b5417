"""Core works without torch and scikit-learn, and imports neither (nor declearn) at start-up.

Each check runs in a fresh interpreter, where ``sys.modules`` is not shared with this test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from fedplug.plugins import DEFAULT_PLUGINS


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is a JSON report."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


#: the first-party plugin distributions' plugin names (the Makefile installs them all)
FIRST_PARTY = [
    "torch",
    "sklearn",
    "flamby",
    "secagg",
    "grpc",
    "demo",
    "tensorboard",
    "mlflow",
    "ray",
]


def test_a_numpy_experiment_runs_with_torch_and_sklearn_unimportable():
    report = run_python(
        """
        import json, sys
        sys.modules["torch"] = None  # `import torch` now raises ImportError
        sys.modules["sklearn"] = None

        import numpy as np
        from fedplug import Dataset, Experiment, Node, get_plugin_manager

        pm = get_plugin_manager()
        rng = np.random.default_rng(0)
        nodes = []
        for i in range(3):
            x = rng.normal(size=(80, 3))
            y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
            nodes.append(Node(f"n{i}", Dataset(x, y, tags=["t"]), plugin_manager=pm))
        exp = Experiment(
            nodes=nodes,
            tags=["t"],
            training_plan="numpy-logreg",
            model_args={"n_features": 3},
            training_args={"batch_size": 16, "test_ratio": 0.25},
            round_limit=3,
            seed=0,
            plugin_manager=pm,
        )
        history = exp.run()
        print(json.dumps({
            "rounds": len(history),
            "accuracy": history[-1]["validation_global"]["accuracy"],
            "plugins": {info.name: info.error for info in pm.plugin_infos()},
            "plans": sorted(pm.training_plans),
        }))
        """
    )
    assert report["rounds"] == 3
    assert report["accuracy"] >= 0.85
    # every installed plugin loads (their modules import no framework) ...
    assert report["plugins"] == dict.fromkeys([*DEFAULT_PLUGINS, *FIRST_PARTY])
    # ... and their plans are listed without importing anything
    assert {"numpy-logreg", "torch-mlp", "sklearn-sgd"} <= set(report["plans"])


def test_importing_fedplug_and_loading_plugins_imports_no_framework():
    report = run_python(
        """
        import json, sys
        import fedplug
        from fedplug import get_plugin_manager

        pm = get_plugin_manager()
        names = sorted(pm.training_plans) + sorted(pm.aggregators) + sorted(pm.dataset_types)
        heavy = (
            "torch", "sklearn", "declearn", "matplotlib", "pandas", "scipy", "grpc", "cryptography"
        )
        print(json.dumps({
            "loaded": sorted(name for name in heavy if name in sys.modules),
            "plugins": sorted(name for name, _ in pm.list_name_plugin()),
            "names": names,
        }))
        """
    )
    assert report["loaded"] == []
    assert {*DEFAULT_PLUGINS, "torch", "sklearn", "grpc"} <= set(report["plugins"])
    assert "torch-mlp" in report["names"]


def test_fedplug_help_imports_no_framework():
    report = run_python(
        """
        import contextlib, io, json, sys
        from fedplug.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
            main(["plugins"])
        heavy = ("torch", "sklearn", "declearn", "grpc", "cryptography")
        print(json.dumps({"loaded": sorted(name for name in heavy if name in sys.modules)}))
        """
    )
    assert report["loaded"] == []
