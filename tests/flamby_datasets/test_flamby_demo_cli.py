"""``fedplug demo --flamby DATASET``: the installed command, in a fresh process per run, with the
FLamby double on ``PYTHONPATH``. The licence file a run records is removed after each test (the
autouse stash fixture)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flamby_double_support import license_file

import fedplug
from fedplug.report import results_rows

FEDPLUG = Path(sys.executable).parent / "fedplug"
CENTERS = [f"center{c}" for c in range(6)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def demo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FEDPLUG), "demo", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_flamby_demo_prints_the_json_summary_and_writes_its_outputs(tmp_path, child_env):
    out = tmp_path / "out"
    args = ("--flamby", "fed_tcga_brca", "--json", "--accept-license", "--out", str(out))
    result = demo(tmp_path, child_env(), *args)
    assert result.returncode == 0, result.stderr
    assert license_file().exists()  # --accept-license recorded FLamby's acceptance
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line, no table, no progress bar
    summary = json.loads(lines[0])
    assert summary["dataset"] == "fed_tcga_brca"
    assert summary["algorithm"] == "fedavg"
    assert summary["metric"] == "c_index"
    assert summary["rounds"] == 5 and summary["num_updates"] == 100  # FLamby's budget
    assert list(summary["per_center"]) == CENTERS
    assert all(0.0 <= value <= 1.0 for value in summary["per_center"].values())
    assert summary["mean"] == pytest.approx(sum(summary["per_center"].values()) / 6, rel=1e-12)
    assert summary["mean"] >= 0.68
    assert "rounds:" not in result.stderr

    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == summary
    assert len(results["history"]) == 5
    assert results["history"][-1]["validation_mean"]["c_index"] == summary["mean"]
    params = fedplug.load_params(out / "model.npz")
    assert params["fc.weight"].shape == (1, 39) and np.all(np.isfinite(params["fc.weight"]))
    assert (out / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)


def test_the_flamby_demo_with_scaffold_prints_the_per_center_table(tmp_path, child_env):
    args = ("--flamby", "fed_tcga_brca", "--algorithm", "scaffold", "--rounds", "2")
    result = demo(tmp_path, child_env(), *args, "--num-updates", "20", "--accept-license")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("center "))
    assert header.split() == ["center", "train", "samples", "test", "samples", "c_index", "loss"]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("center")}
    assert rows["center0"][1:3] == ["248", "63"] and rows["center5"][1:3] == ["40", "11"]
    assert set(rows) == {"center", *CENTERS}
    assert any(line.startswith("mean ") for line in lines)
    assert "2 rounds of 20 updates" in result.stdout
    results = json.loads((tmp_path / "fedplug-demo" / "results.json").read_text())
    assert results["summary"]["algorithm"] == "scaffold"
    assert results["summary"]["rounds"] == 2 and results["summary"]["num_updates"] == 20


def test_without_accept_license_the_demo_exits_2_with_the_licence_message(tmp_path, child_env):
    assert not license_file().exists()
    result = demo(tmp_path, child_env(), "--flamby", "fed_tcga_brca", "--json")
    assert result.returncode == 2
    assert result.stderr.startswith("fedplug: error: FLamby asks for acceptance of the fed_tcga")
    assert "--accept-license" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not license_file().exists()
    assert not (tmp_path / "fedplug-demo").exists()


def test_an_unknown_flamby_dataset_exits_2_listing_the_datasets(tmp_path, child_env):
    result = demo(tmp_path, child_env(), "--flamby", "fed_nope", "--accept-license")
    assert result.returncode == 2
    assert result.stderr.startswith("fedplug: error: unknown FLamby dataset 'fed_nope'")
    for name in ("fed_tcga_brca", "fed_heart_disease", "fed_isic2019", "fed_synthetic"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "fedplug-demo").exists()


def test_the_mean_row_of_the_table_treats_both_sample_columns_alike():
    """The per-center table ends with a ``mean`` row; its train and test sample columns are
    either both totals (as the ``global`` row's) or both blank, never one of each."""
    history = [
        {
            "round": 0,
            "samples": {"a": 30, "b": 10},
            "validation": {
                "a": {"c_index": 0.8, "loss": 0.5, "n_samples": 6},
                "b": {"c_index": 0.6, "loss": 0.7, "n_samples": 2},
            },
            "validation_global": {"c_index": 0.75, "loss": 0.55, "n_samples": 8},
            "validation_mean": {"c_index": 0.7, "loss": 0.6},
        }
    ]
    global_row = results_rows(history, "c_index")[-1]
    assert global_row == ["global", 40, 8, 0.75, 0.55]
    mean_row = results_rows(history, "c_index", average="mean")[-1]
    assert mean_row[0] == "mean" and mean_row[3:] == [0.7, 0.6]
    assert (mean_row[1] is None) == (mean_row[2] is None), mean_row


@pytest.mark.slow
def test_the_flamby_demo_over_grpc_runs_each_center_as_a_node_process(tmp_path, child_env):
    """Six ``fedplug node start`` processes, one per center, each with its own registry and
    FLamby data, over TLS: the per-center results of the local transport."""
    common = ("--flamby", "fed_tcga_brca", "--json", "--accept-license", "--rounds", "2")
    common += ("--num-updates", "10")
    runs = {}
    for transport in ("local", "grpc"):
        out = tmp_path / transport
        result = demo(tmp_path, child_env(), *common, "--transport", transport, "--out", str(out))
        assert result.returncode == 0, result.stderr
        runs[transport] = json.loads(result.stdout.strip().splitlines()[-1])
    grpc, local = runs["grpc"], runs["local"]
    assert grpc["transport"] == "grpc" and local["transport"] == "local"
    assert list(grpc["per_center"]) == CENTERS
    for center in CENTERS:
        assert grpc["per_center"][center] == pytest.approx(local["per_center"][center], abs=1e-6)
    for center in CENTERS:  # each center was a node process with its own registry and log
        home = tmp_path / "grpc" / "grpc" / center
        assert (home / "node.toml").exists() and (home / "node.db").exists(), center
        assert "connected" in (home / "node.log").read_text()
    assert fedplug.load_params(tmp_path / "grpc" / "model.npz")["fc.weight"].shape == (1, 39)


def test_the_flamby_demo_over_grpc_checks_the_data_terms_before_starting_nodes(tmp_path, child_env):
    args = ("--flamby", "fed_tcga_brca", "--transport", "grpc", "--out", str(tmp_path / "o"))
    result = demo(tmp_path, child_env(), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("fedplug: error: FLamby asks for acceptance of the fed_tcga")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "grpc").exists()  # no node was set up
