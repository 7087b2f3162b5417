"""``fedplug demo --nodes N`` beyond what the embedded records make: synthetic hospitals of the
same task, made from their index alone (so a transport can make them where they train), the
results of many nodes condensed, and the limits of the demo's gRPC and secure-aggregation
modes named before anything starts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fedplug.cli import main
from fedplug.errors import ConfigError
from fedplug_demo.demo import (
    MAX_EMBEDDED_NODES,
    SYNTHETIC_RECORDS,
    demo_client,
    demo_data,
    demo_nodes,
    load_breast_cancer,
    synthetic_hospital,
)


def test_the_embedded_records_make_up_to_56_hospitals_then_they_are_synthetic():
    assert demo_data(MAX_EMBEDDED_NODES) == "embedded"
    assert demo_data(MAX_EMBEDDED_NODES + 1) == "synthetic"
    _, y = load_breast_cancer()
    embedded = demo_nodes(MAX_EMBEDDED_NODES)
    assert sum(len(node.datasets[0]) for node in embedded) == len(y)  # every record, once
    synthetic = demo_nodes(MAX_EMBEDDED_NODES + 1)
    assert [len(node.datasets[0]) for node in synthetic] == [SYNTHETIC_RECORDS] * 57
    with pytest.raises(ConfigError, match="nodes must be a positive integer"):
        demo_data(0)


def test_a_synthetic_hospital_is_made_from_its_index_and_the_seed_alone():
    n = 1000
    x, y = synthetic_hospital(417, n, seed=3)
    assert x.shape == (SYNTHETIC_RECORDS, 30) and x.dtype == np.float32 and y.dtype == np.int64
    again = synthetic_hospital(417, n, seed=3)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.array_equal(x, synthetic_hospital(417, n, seed=4)[0])
    # made anywhere (a Ray actor) or here: the same hospital
    here = demo_nodes(60, seed=3)[41]
    there = demo_client(41, 60, seed=3)
    assert here.name == there.name == "hospital-42"
    np.testing.assert_array_equal(here.datasets[0].x, there.datasets[0].x)
    with pytest.raises(ConfigError, match=r"hospital index must be in \[0, 60\)"):
        demo_client(60, 60)


def test_synthetic_hospitals_pose_the_embedded_task_with_its_label_skew():
    """Records drawn from the embedded data's Gaussian model: a classifier fitted on the real
    records classifies them about as well, and the share of benign cases rises from about 0.27
    to about 0.90 across the hospitals, as in the embedded split."""
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer()
    model = LogisticRegression(max_iter=1000).fit(x, y)
    n = 1000
    made = [synthetic_hospital(i, n) for i in range(n)]
    xs = np.concatenate([m[0] for m in made])
    ys = np.concatenate([m[1] for m in made])
    assert model.score(xs, ys) > 0.85
    first = np.mean([m[1].mean() for m in made[:100]])
    last = np.mean([m[1].mean() for m in made[-100:]])
    assert 0.25 < first < 0.36 and 0.84 < last < 0.93


def test_the_demo_with_100_hospitals_condenses_its_table(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["demo", "--plan", "sklearn", "--nodes", "100", "--rounds", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "each of the 100 draws 50 synthetic records" in printed.err
    lines = printed.out.splitlines()
    assert any(line.startswith("(94 more: median)") for line in lines)
    assert any(line.startswith("global") for line in lines)
    assert f"(each of the 100 hospitals: {out / 'results.json'})" in printed.out
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["data"] == "synthetic" and len(summary["per_node"]) == 100
    assert summary["global_accuracy"] > 0.85
    assert (out / "learning_curve.png").exists()


def test_clients_per_round_trains_a_sample_of_the_hospitals(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["demo", "--plan", "sklearn", "--nodes", "80", "--clients-per-round", "0.25"]
    assert main([*argv, "--rounds", "2", "--json", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["clients_per_round"] == 0.25
    samples = [row["nodes"] for row in results["history"]]
    assert [len(nodes) for nodes in samples] == [20, 20] and samples[0] != samples[1]
    assert len(results["history"][-1]["validation"]) == 80  # validation asks every hospital


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--transport", "grpc", "--nodes", "33"],
            "--transport grpc starts one node process per hospital: at most 32",
        ),
        (
            ["--secagg", "--nodes", "201"],
            "--secagg with 201 hospitals a round.*--clients-per-round 100",
        ),
        (["--secagg", "--nodes", "1000", "--clients-per-round", "0.5"], "--secagg with 500"),
        (
            ["--workers", "2", "--transport", "ray"],
            "--workers sets how many in-process hospitals train at once .*in the Ray actors",
        ),
    ],
)
def test_the_demo_names_its_limits_before_it_starts(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    assert main(["demo", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug: error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert not out.exists()


def test_clients_per_round_must_be_a_count_or_a_fraction(capsys):
    for bad in ("0", "1.5", "-2", "some"):
        with pytest.raises(SystemExit):
            main(["demo", "--clients-per-round", bad])
        assert "expected a count (an integer >= 1) or a fraction" in capsys.readouterr().err
