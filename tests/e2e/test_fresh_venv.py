"""Core alone is useful, and fedplug-grpc alone adds the network deployment: checked in a new
virtual environment (not this one, with every plugin), installed with pip like a user would.

``pip install ./core`` runs an experiment with the NumPy plan and imports neither grpc,
cryptography, torch nor scikit-learn; ``pip install ./plugins/grpc`` then gives ``fedplug node``
and ``fedplug certs``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

EXPERIMENT = """
import json, sys
import numpy as np
from fedplug import Dataset, Experiment, Node, get_plugin_manager

rng = np.random.default_rng(0)
nodes = []
for i in range(3):
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    nodes.append(Node(f"hospital-{i}", Dataset(x, y, tags=["study"])))
exp = Experiment(
    nodes=nodes,
    tags=["study"],
    training_plan="numpy-logreg",
    model_args={"n_features": 3},
    training_args={"batch_size": 16, "test_ratio": 0.25},
    round_limit=3,
    seed=0,
    progress=False,
)
history = exp.run()
heavy = ("grpc", "cryptography", "torch", "sklearn", "fedplug_grpc")
print(json.dumps({
    "accuracy": history[-1]["validation_global"]["accuracy"],
    "imported": sorted(name for name in heavy if name in sys.modules),
    "plugins": sorted(name for name, _ in get_plugin_manager().list_name_plugin()),
}))
"""


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_core_alone_then_with_fedplug_grpc(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], os.environ.copy())
    bin_dir = venv / "bin"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VIRTUAL_ENV", "PYTHON", "FEDPLUG_"))
    }
    env["PIP_CONSTRAINT"] = str(REPO / "constraints.txt")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
    # from copies: pip builds in the source folder, and a build/ left in the repository could
    # put files deleted since into a later install
    sources = {}
    for folder in ("core", "plugins/grpc"):
        sources[folder] = tmp_path / "src" / folder
        ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(REPO / folder, sources[folder], ignore=ignore)

    run([*pip, str(sources["core"])], env)
    listed = run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"], env)
    installed = {entry["name"].lower() for entry in json.loads(listed)}
    assert "fedplug" in installed
    assert not {"torch", "grpcio", "fedplug-grpc", "fedplug-torch"} & installed

    script = tmp_path / "experiment.py"
    script.write_text(textwrap.dedent(EXPERIMENT))
    report = json.loads(run([str(bin_dir / "python"), str(script)], env).splitlines()[-1])
    assert report["accuracy"] >= 0.85
    assert report["imported"] == []
    assert all(name.startswith("fedplug.builtin.") for name in report["plugins"])

    fedplug = str(bin_dir / "fedplug")
    help_text = run([fedplug, "--help"], env)
    assert "plugins" in help_text and "optimizers" in help_text and "node" not in help_text
    refused = subprocess.run([fedplug, "node", "start"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "invalid choice: 'node'" in refused.stderr

    run([*pip, str(sources["plugins/grpc"])], env)
    assert "usage: fedplug node" in run([fedplug, "node", "--help"], env)
    assert "usage: fedplug certs" in run([fedplug, "certs", "--help"], env)
    plugins = {
        entry["name"]: entry for entry in json.loads(run([fedplug, "plugins", "--json"], env))
    }
    assert plugins["grpc"]["registers"] == {"transports": ["grpc"], "commands": ["certs", "node"]}
    # a node set up and registered with a dataset, as a hospital's IT does it
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    csv = node_dir / "data.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    config = node_dir / "node.toml"
    run(
        [
            fedplug,
            "node",
            "init",
            "--config",
            str(config),
            "--name",
            "hospital-1",
            "--researcher",
            "localhost:50051",
            "--insecure",
        ],
        env,
    )
    run(
        [
            fedplug,
            "node",
            "dataset",
            "add",
            "--config",
            str(config),
            "--type",
            "csv",
            "--tags",
            "study",
            "--path",
            str(csv),
            "--target",
            "label",
        ],
        env,
    )
    assert "study" in run([fedplug, "node", "dataset", "list", "--config", str(config)], env)
