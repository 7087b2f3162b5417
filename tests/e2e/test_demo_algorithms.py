"""`fedplug demo --algorithm A` runs every algorithm on the demo task, for both plans."""

import numpy as np
import pytest

from fedplug import load_params
from fedplug_demo.demo import ALGORITHMS, run_demo


@pytest.fixture(scope="module")
def fedavg_models(tmp_path_factory):
    models = {}
    for plan in ("torch", "sklearn"):
        out = tmp_path_factory.mktemp(f"fedavg-{plan}")
        run_demo(plan=plan, rounds=10, out=out, as_json=True, progress=False)
        models[plan] = load_params(out / "model.npz")
    return models


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["torch", "sklearn"])
@pytest.mark.parametrize("algorithm", sorted(set(ALGORITHMS) - {"fedavg"}))
def test_each_algorithm_learns_the_demo_task_its_own_way(
    plan, algorithm, tmp_path, capsys, fedavg_models
):
    summary = run_demo(
        plan=plan, algorithm=algorithm, rounds=10, out=tmp_path, as_json=True, progress=False
    )
    assert summary["algorithm"] == algorithm
    assert summary["global_accuracy"] >= 0.93
    model = load_params(tmp_path / "model.npz")
    baseline = fedavg_models[plan]
    assert any(not np.allclose(model[name], baseline[name]) for name in model)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
