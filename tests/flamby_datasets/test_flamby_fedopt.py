"""FLamby's FedAdam and FedYogi server steps (``flamby-adam``, ``flamby-yogi``): equal, to float64
precision, to FLamby's own update rule (``flamby.strategies.fed_opt``: moments of the averaged
update without bias correction), unlike declearn's bias-corrected ``adam``."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import Optimizer, get_plugin_manager
from fedplug.plugins import active


def flamby_rounds(kind, start, deltas, lr, beta_1=0.9, beta_2=0.999, tau=1e-3):
    """FLamby's FedOpt server loop, written from its definition: the averaged update ``d``
    moves ``m`` and ``v``; the model moves by ``lr * m / (sqrt(v) + tau)``."""
    params = {k: v.copy() for k, v in start.items()}
    m = {k: np.zeros_like(v) for k, v in start.items()}
    v = {k: np.zeros_like(x) for k, x in start.items()}
    trajectory = []
    for delta in deltas:
        for k in params:
            d = delta[k]
            m[k] = beta_1 * m[k] + (1 - beta_1) * d
            if kind == "adam":
                v[k] = beta_2 * v[k] + (1 - beta_2) * d * d
            else:
                v[k] = v[k] - (1 - beta_2) * d * d * np.sign(v[k] - d * d)
            params[k] = params[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
        trajectory.append({k: x.copy() for k, x in params.items()})
    return trajectory


def fedplug_rounds(optimizer, start, deltas):
    params = {k: v.copy() for k, v in start.items()}
    trajectory = []
    for delta in deltas:
        optimizer.start_round()
        aggregated = {k: params[k] + delta[k] for k in params}  # what the nodes averaged to
        params = optimizer.step_global(params, aggregated)
        trajectory.append({k: x.copy() for k, x in params.items()})
    return trajectory


@pytest.fixture
def rounds():
    rng = np.random.default_rng(4)
    start = {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=3)}
    deltas = [{k: 0.05 * rng.normal(size=x.shape) for k, x in start.items()} for _ in range(6)]
    return start, deltas


@pytest.mark.parametrize("kind", ["adam", "yogi"])
def test_the_server_step_is_flambys_own(rounds, kind):
    start, deltas = rounds
    with active(get_plugin_manager()):
        optimizer = Optimizer(lr=0.02, modules=[(f"flamby-{kind}", {"eps": 1e-3})])
        ours = fedplug_rounds(optimizer, start, deltas)
    theirs = flamby_rounds(kind, start, deltas, lr=0.02)
    for mine, reference in zip(ours, theirs, strict=True):
        for name in reference:
            np.testing.assert_allclose(mine[name], reference[name], rtol=0, atol=1e-12)


def test_declearns_bias_corrected_adam_steps_differently(rounds):
    start, deltas = rounds
    with active(get_plugin_manager()):
        tiny = {"eps": 1e-12}  # to compare the moments alone
        flamby = fedplug_rounds(
            Optimizer(lr=0.02, modules=[("flamby-adam", tiny)]), start, deltas[:1]
        )
        plain = fedplug_rounds(Optimizer(lr=0.02, modules=[("adam", tiny)]), start, deltas[:1])
    ratio = np.abs(flamby[0]["w"] - start["w"]) / np.abs(plain[0]["w"] - start["w"])
    # the first step: (1 - beta_1) / sqrt(1 - beta_2) = 3.16 times declearn's
    np.testing.assert_allclose(ratio, 0.1 / np.sqrt(0.001), rtol=1e-6)


def test_the_state_resumes_the_same_trajectory(rounds):
    start, deltas = rounds
    with active(get_plugin_manager()):
        whole = fedplug_rounds(Optimizer(lr=0.02, modules=["flamby-yogi"]), start, deltas)
        first = Optimizer(lr=0.02, modules=["flamby-yogi"])
        halfway = fedplug_rounds(first, start, deltas[:3])[-1]
        resumed = Optimizer(lr=0.02, modules=["flamby-yogi"])
        resumed.set_state(first.get_state())
        rest = fedplug_rounds(resumed, halfway, deltas[3:])
    for name in start:
        np.testing.assert_array_equal(rest[-1][name], whole[-1][name])


def test_bad_settings_are_refused():
    with active(get_plugin_manager()), pytest.raises(Exception, match="beta_2 must be a number"):
        Optimizer(lr=0.02, modules=[("flamby-adam", {"beta_2": 1.5})])


@pytest.mark.parametrize("algorithm", ["fedadam", "fedyogi"])
def test_flamby_experiment_steps_as_flamby_with_variants_flamby(tcga_license, algorithm):
    from fedplug_flamby import ALGORITHMS, flamby_experiment

    kind = algorithm[3:]  # adam, yogi
    preset = ALGORITHMS[algorithm].researcher
    common = {"num_updates": 5, "round_limit": 2, "seed": 0, "validate": False, "progress": False}
    ours = flamby_experiment("fed_tcga_brca", algorithm=algorithm, variants="flamby", **common)
    [(name, config)] = ours.agg_optimizer.to_dict()["modules"]
    assert name == f"flamby-{kind}" and config["eps"] == preset["modules"][0][1]["eps"]
    default = flamby_experiment("fed_tcga_brca", algorithm=algorithm, **common)
    assert default.agg_optimizer.to_dict()["modules"][0][0] == kind
    ours.run()
    default.run()
    # same local training at round 0, different server steps: different models
    assert any(
        not np.allclose(ours.global_params[k], default.global_params[k]) for k in ours.global_params
    )
    with pytest.raises(Exception, match="variants must be 'declearn' or 'flamby'"):
        flamby_experiment("fed_tcga_brca", algorithm=algorithm, variants="flamb", **common)
    # the name of the last release still works, with a warning
    with pytest.warns(DeprecationWarning, match="server_steps= is now variants="):
        old = flamby_experiment(
            "fed_tcga_brca", algorithm=algorithm, server_steps="flamby", **common
        )
    assert old.agg_optimizer.to_dict()["modules"][0][0] == f"flamby-{kind}"
