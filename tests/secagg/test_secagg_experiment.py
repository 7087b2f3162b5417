"""Secure aggregation through Experiment and real nodes on the local transport: the same model as
without it, nothing in clear for the researcher, node failures, and nodes that require it."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import ConfigError, Experiment, NodeError, Optimizer, PluginError
from fedplug import messages as msg
from fedplug.errors import SecAggError
from fedplug_demo.demo import ALGORITHMS, PLANS, TAGS, demo_nodes
from fedplug_secagg import MaskingScheme, SecAggConfig


def demo_experiment(plan="torch", algorithm="fedavg", secagg=False, rounds=3, nodes=None, **kw):
    """The embedded demo's experiment (``fedplug demo``), three hospitals, seed 0."""
    name, _, model_args, training_args = PLANS[plan]
    recipe = ALGORITHMS[algorithm]
    if recipe.node is not None:
        model_args = {**model_args, "optimizer": {"type": "fedplug", **recipe.node}}
    settings = {
        "tags": TAGS,
        "training_plan": name,
        "model_args": model_args,
        "training_args": {**training_args, "test_ratio": 0.2},
        "round_limit": rounds,
        "seed": 0,
        "progress": False,
        "agg_optimizer": Optimizer.from_dict(recipe.researcher) if recipe.researcher else None,
        "secagg": secagg,
    }
    return Experiment(nodes=demo_nodes(3, 0) if nodes is None else nodes, **{**settings, **kw})


def copy_params(params):
    return {name: np.array(value, copy=True) for name, value in params.items()}


def assert_close(got, expected, atol=1e-5):
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=atol, rtol=0)


def assert_same_model(a, b):
    np.testing.assert_equal(set(a), set(b))
    for name, value in b.items():
        np.testing.assert_array_equal(a[name], value)


def break_node(exp, name, when, state=None):
    """Make node ``name`` of ``exp`` vanish (its ``serve`` raises) on the requests ``when``
    picks, as long as ``state["broken"]`` (default: always)."""
    node = exp.transport.nodes[name]
    serve = node.serve
    state = {"broken": True} if state is None else state

    def broken(payload, size=None):
        if state["broken"] and when(msg.decode(payload)):
            raise ConnectionResetError(f"{name} lost its connection")
        return serve(payload, size)

    node.serve = broken
    return state


def train_request_of_round(index):
    return lambda m: isinstance(m, msg.TrainRequest) and m.round_index == index


def accuracies(history):
    return [row["validation_global"]["accuracy"] for row in history]


# -- the same model as without secure aggregation -----------------------------------------------


@pytest.mark.parametrize("plan", ["torch", "sklearn"])
def test_the_demo_with_secagg_gives_the_model_of_the_demo_without(plan):
    plain = demo_experiment(plan)
    plain.run()
    secure = demo_experiment(plan, secagg=True)
    assert isinstance(secure.secagg, MaskingScheme)
    secure.run()
    assert_close(secure.global_params, plain.global_params)
    assert accuracies(secure.history) == accuracies(plain.history)
    assert accuracies(secure.history)[-1] > 0.9
    for row_s, row_p in zip(secure.history, plain.history, strict=True):
        assert row_s["nodes"] == row_p["nodes"] == ["hospital-1", "hospital-2", "hospital-3"]
        assert row_s["samples"] == row_p["samples"]
        assert row_s["failures"] == {}


@pytest.mark.parametrize("algorithm", ["fedadam", "fedavgm", "fedprox"])
def test_optimizers_without_auxiliary_variables_work_with_secagg(algorithm):
    plain = demo_experiment(algorithm=algorithm)
    plain.run()
    secure = demo_experiment(algorithm=algorithm, secagg=SecAggConfig(clip=64.0))
    secure.run()
    assert_close(secure.global_params, plain.global_params)
    assert accuracies(secure.history) == accuracies(plain.history)
    assert secure.agg_optimizer is None or secure.agg_optimizer.module_names


def test_the_researcher_never_receives_clear_parameters():
    exp = demo_experiment(secagg=True, rounds=2)
    size = sum(value.size for value in exp.global_params.values())
    seen = []
    for node in exp.transport.nodes.values():

        def spy(payload, size=None, _serve=node.serve):
            reply = _serve(payload, size)
            seen.append((msg.decode(payload), msg.decode(b"".join(reply))))
            return reply

        node.serve = spy
    exp.run()
    train = [(req, rep) for req, rep in seen if isinstance(rep, msg.TrainReply)]
    assert len(train) == 6  # 3 nodes x 2 rounds
    for request, reply in train:
        assert request.secagg is not None and request.secagg.step == "mask"
        assert reply.params == {}
        assert reply.aux_vars == {}
        assert reply.secagg.step == "masked"
        assert set(reply.secagg.arrays) == {"masked"}
        masked = reply.secagg.arrays["masked"]
        assert masked.dtype == np.uint64 and masked.shape == (size,)
    steps = [rep.data.step for _, rep in seen if isinstance(rep, msg.SecAggReply)]
    assert steps == ["keys"] * 3 + ["shares"] * 3 + ["unmask"] * 3 + (
        ["keys"] * 3 + ["shares"] * 3 + ["unmask"] * 3
    )  # fresh keys every round
    for _, reply in seen:
        if isinstance(reply, msg.SecAggReply):
            assert all(value.dtype == np.uint8 for value in reply.data.arrays.values())
    assert not any(isinstance(rep, msg.ErrorReply) for _, rep in seen)


# -- failures -----------------------------------------------------------------------------------


def test_a_node_lost_mid_round_is_recovered_from_with_skip():
    runs, dropped = {}, []
    for secagg in (False, True):
        exp = demo_experiment(secagg=secagg, on_node_failure="skip")
        break_node(exp, "hospital-2", train_request_of_round(1))
        for _ in range(3):
            exp.run_once()
            if secagg:
                dropped.append(exp.secagg.dropped)
        runs[secagg] = exp
    secure, plain = runs[True], runs[False]
    assert_close(secure.global_params, plain.global_params)
    assert accuracies(secure.history) == accuracies(plain.history)
    # hospital-2 had done the key exchange: round 1 recovered from its dropout (its mask key
    # was rebuilt from the survivors' shares); round 2 had it back
    assert dropped == [[], ["hospital-2"], []]
    row = secure.history[1]
    assert row["nodes"] == ["hospital-1", "hospital-3"]
    assert "ConnectionResetError: hospital-2 lost its connection" in row["failures"]["hospital-2"]
    assert secure.history[2]["nodes"] == ["hospital-1", "hospital-2", "hospital-3"]
    assert secure.history[2]["failures"] == {}


def test_a_node_lost_mid_round_with_fail_stops_the_round_and_keeps_the_model():
    exp = demo_experiment(secagg=True)
    break_node(exp, "hospital-2", train_request_of_round(1))
    exp.run_once()
    before = copy_params(exp.global_params)
    with pytest.raises(NodeError, match="hospital-2 lost its connection") as info:
        exp.run_once()
    assert info.value.node == "hospital-2"
    assert "the global model is unchanged" in str(info.value)
    assert_same_model(exp.global_params, before)
    assert len(exp.history) == 1 and exp.round_index == 1


def test_dropouts_below_the_threshold_fail_the_round_and_the_next_attempt_succeeds():
    exp = demo_experiment(secagg=True, on_node_failure="skip")
    state = {"broken": True}
    for name in ("hospital-1", "hospital-3"):
        break_node(exp, name, train_request_of_round(1), state)
    exp.run_once()
    before, history = copy_params(exp.global_params), [dict(row) for row in exp.history]
    with pytest.raises(SecAggError, match=r"only 1 of 3 nodes .* below the recovery threshold 2"):
        exp.run_once()
    assert_same_model(exp.global_params, before)
    assert exp.history == history and exp.round_index == 1
    state["broken"] = False  # the links come back: the round runs again
    row = exp.run_once()
    assert row["round"] == 1 and row["nodes"] == ["hospital-1", "hospital-2", "hospital-3"]
    assert exp.round_index == 2


def test_a_round_that_fails_after_unmasking_can_be_run_again():
    """The round's validation fails (after the unmask step) with on_node_failure="fail"; the
    round is not applied, so running it again repeats round 0 with fresh keys, as plain
    aggregation does."""
    runs = {}
    for secagg in (False, True):
        exp = demo_experiment(secagg=secagg)
        state = break_node(exp, "hospital-2", lambda m: isinstance(m, msg.EvaluateRequest))
        with pytest.raises(NodeError, match="hospital-2 lost its connection"):
            exp.run_once()
        assert exp.round_index == 0 and exp.history == []
        state["broken"] = False
        row = exp.run_once()  # the same round again
        assert row["round"] == 0 and row["failures"] == {}
        runs[secagg] = exp
    assert_close(runs[True].global_params, runs[False].global_params)


def test_a_failing_key_exchange_excludes_the_node_for_the_round_only():
    exp = demo_experiment(secagg=True, on_node_failure="skip")
    break_node(
        exp,
        "hospital-3",
        lambda m: isinstance(m, msg.SecAggRequest) and m.round_index == 0 and m.data.step == "keys",
    )
    exp.run(2)
    first, second = exp.history
    assert first["nodes"] == ["hospital-1", "hospital-2"]
    assert "hospital-3" in first["failures"]
    assert second["nodes"] == ["hospital-1", "hospital-2", "hospital-3"]


def test_parameters_beyond_clip_fail_the_round_on_the_node_naming_the_parameter():
    exp = demo_experiment(secagg=SecAggConfig(clip=1e-3), rounds=1)
    initial = copy_params(exp.global_params)
    with pytest.raises(NodeError, match=r"SecAggError: .*parameter '.*' reaches .*beyond"):
        exp.run_once()
    assert_same_model(exp.global_params, initial)


# -- nodes that require secure aggregation ------------------------------------------------------


def test_a_node_requiring_secagg_refuses_plain_training_and_accepts_secagg():
    nodes = demo_nodes(3, 0, settings={"require_secagg": True})
    plain = demo_experiment(nodes=nodes, rounds=1)
    with pytest.raises(NodeError, match="requires secure aggregation and refuses a plain") as info:
        plain.run_once()
    assert "secagg=True" in str(info.value)
    # nothing was trained
    assert all(s.trained_round is None for node in nodes for s in node._sessions.values())
    secure = demo_experiment(nodes=nodes, secagg=True, rounds=1)
    secure.run()
    assert secure.history[0]["nodes"] == ["hospital-1", "hospital-2", "hospital-3"]


def test_the_node_keyword_of_the_previous_release_still_requires_secagg():
    with pytest.warns(DeprecationWarning, match=r"settings=\{'require_secagg': \.\.\.\}"):
        nodes = demo_nodes(3, 0, require_secagg=True)
    assert all(node.settings == {"require_secagg": True} for node in nodes)
    with pytest.raises(NodeError, match="requires secure aggregation"):
        demo_experiment(nodes=nodes, rounds=1).run_once()


def test_with_skip_a_plain_experiment_trains_without_the_nodes_that_require_secagg():
    nodes = demo_nodes(3, 0)
    nodes[1].settings["require_secagg"] = True
    exp = demo_experiment(nodes=nodes, rounds=1, on_node_failure="skip")
    row = exp.run_once()
    assert row["nodes"] == ["hospital-1", "hospital-3"]
    assert "requires secure aggregation" in row["failures"]["hospital-2"]


# -- configuration through Experiment -----------------------------------------------------------


def test_secagg_settings_forms():
    assert demo_experiment(secagg="masking").secagg.config == SecAggConfig()
    config = SecAggConfig(clip=100.0, precision_bits=20, threshold=3)
    assert demo_experiment(secagg=config).secagg.config is config
    assert demo_experiment(secagg=False).secagg is None
    with pytest.raises(PluginError, match="no secure-aggregation scheme named 'paillier'"):
        demo_experiment(secagg="paillier")
    with pytest.raises(ConfigError, match="secagg must be True, a registered scheme name"):
        demo_experiment(secagg=42)


def test_a_configured_threshold_above_the_federation_fails_before_training():
    exp = demo_experiment(secagg=SecAggConfig(threshold=4), rounds=1)
    with pytest.raises(SecAggError, match="threshold 4 exceeds the 3 nodes of the round"):
        exp.run_once()
    assert exp.history == []


# -- worker processes ---------------------------------------------------------------------------


def test_worker_processes_run_secagg_rounds():
    reference = demo_experiment(rounds=2)
    reference.run()
    with demo_experiment(secagg=True, rounds=2, processes=True, workers=2) as exp:
        exp.run()
        assert exp.transport._procs  # the nodes really lived in worker processes
    assert_close(exp.global_params, reference.global_params)
    assert accuracies(exp.history) == accuracies(reference.history)


def test_a_checkpoint_names_no_class_to_import_for_the_scheme_settings(tmp_path, monkeypatch):
    """Settings come back through the registered scheme's settings_class: a path written in
    the file (here os:system, as a hostile checkpoint would) is never imported or called."""
    from fedplug.experiment.checkpoints import read_state, write_state

    nodes = demo_nodes(3, 0)
    exp = demo_experiment(nodes=nodes, secagg=SecAggConfig(clip=64.0), rounds=2)
    exp.checkpoint_dir = tmp_path
    exp.run_once()
    path = exp.save_checkpoint()
    arrays, meta = read_state(path)
    assert meta["settings"]["secagg"] == {
        "scheme": "masking",
        "settings": {"scheme": "masking", "clip": 64.0, "precision_bits": 24, "threshold": None},
    }
    meta["settings"]["secagg"]["settings_class"] = "os:system"  # as an earlier release wrote
    write_state(path, meta, arrays)
    calls = []
    monkeypatch.setattr("os.system", lambda *args: calls.append(args))
    resumed = Experiment.load_checkpoint(path, nodes=nodes, progress=False)
    assert resumed.secagg.config == SecAggConfig(clip=64.0) and calls == []
    meta["settings"]["secagg"]["settings"]["command"] = "rm -rf /"
    write_state(path, meta, arrays)
    with pytest.raises(ConfigError, match="settings do not fit"):
        Experiment.load_checkpoint(path, nodes=nodes, progress=False)
