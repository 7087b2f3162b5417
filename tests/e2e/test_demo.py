"""``fedplug demo`` end to end: the installed command, run in a fresh process per test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedplug

pytestmark = pytest.mark.slow

FEDPLUG = Path(sys.executable).parent / "fedplug"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = {"rounds", "global_accuracy", "per_node", "seconds"}


def _demo(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FEDPLUG_DISABLE_PLUGINS", "FEDPLUG_STRICT_PLUGINS")
    }
    environ.update(env or {})
    environ.setdefault("MPLBACKEND", "Agg")
    return subprocess.run(
        [str(FEDPLUG), "demo", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr}"
    summary = json.loads(lines[-1])
    assert set(summary) >= SUMMARY_KEYS
    return summary


def _check_outputs(out: Path, summary: dict, rounds: int) -> None:
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == summary
    assert len(results["history"]) == rounds
    assert results["history"][-1]["validation_global"]["accuracy"] == summary["global_accuracy"]

    params = fedplug.load_params(out / "model.npz")
    assert params
    assert all(np.all(np.isfinite(value)) for value in params.values())

    png = (out / "learning_curve.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 1000


def test_torch_demo_reaches_93_percent_and_writes_its_outputs(tmp_path):
    summary = _summary(_demo(tmp_path, "--json", "--rounds", "20"))

    assert summary["rounds"] == 20
    assert summary["global_accuracy"] >= 0.93
    assert set(summary["per_node"]) == {"hospital-1", "hospital-2", "hospital-3"}
    assert all(0.0 <= value <= 1.0 for value in summary["per_node"].values())
    assert summary["seconds"] > 0
    _check_outputs(tmp_path / "fedplug-demo", summary, rounds=20)
    params = fedplug.load_params(tmp_path / "fedplug-demo" / "model.npz")
    assert params["0.weight"].shape == (64, 30)  # the torch-mlp of the demo: 30 -> 64 -> 2


def test_sklearn_demo_reaches_93_percent_and_writes_its_outputs(tmp_path):
    summary = _summary(_demo(tmp_path, "--plan", "sklearn", "--json"))

    assert summary["rounds"] == 20
    assert summary["global_accuracy"] >= 0.93
    assert len(summary["per_node"]) == 3
    _check_outputs(tmp_path / "fedplug-demo", summary, rounds=20)
    params = fedplug.load_params(tmp_path / "fedplug-demo" / "model.npz")
    assert {name: value.shape for name, value in params.items()} == {
        "coef": (1, 30),
        "intercept": (1,),
    }


def test_demo_with_five_nodes_reports_five_nodes(tmp_path):
    summary = _summary(_demo(tmp_path, "--nodes", "5", "--rounds", "3", "--json"))

    assert summary["rounds"] == 3
    assert len(summary["per_node"]) == 5
    assert set(summary["per_node"]) == {f"hospital-{i}" for i in range(1, 6)}
    assert 0.0 <= summary["global_accuracy"] <= 1.0
    results = json.loads((tmp_path / "fedplug-demo" / "results.json").read_text())
    assert len(results["history"][-1]["samples"]) == 5


def test_demo_without_the_torch_plugin_exits_2_naming_fedplug_torch(tmp_path):
    result = _demo(tmp_path, "--rounds", "1", env={"FEDPLUG_DISABLE_PLUGINS": "torch"})

    assert result.returncode == 2
    assert "fedplug-torch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "fedplug-demo" / "results.json").exists()
