"""Transports come from plugins (``fedplug_register_transports``): an experiment builds one by
name with its options, after its configuration was validated; checkpoints record the name and
the options, in this release's form and the earlier one's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedplug import ConfigError, Experiment, Optimizer, PluginError, hookimpl
from fedplug.experiment.checkpoints import read_state, write_state
from fedplug.plugins import get_plugin_manager
from fedplug.transport.local import LocalTransport

MODEL_ARGS = {"n_features": 4}


class CountingTransport(LocalTransport):
    """The local transport, counting the requests it dispatches."""

    made: list[CountingTransport] = []

    def __init__(self, nodes, label):
        super().__init__(nodes)
        self.label = label
        self.dispatched = 0
        self.closed = False
        CountingTransport.made.append(self)

    def dispatch(self, payload, nodes, **options):
        self.dispatched += 1
        return super().dispatch(payload, nodes, **options)

    def close(self):
        self.closed = True
        super().close()


def counting(*, nodes, tags, min_nodes, label="counted"):
    if nodes is None:
        raise ConfigError("the counting transport needs nodes")
    return CountingTransport(nodes, label)


class TransportPlugin:
    @hookimpl
    def fedplug_register_transports(self, register):
        register("counting", counting)


@pytest.fixture
def pm():
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(TransportPlugin(), name="counting-plugin")
    CountingTransport.made.clear()
    return pm


def experiment(nodes, pm, **kwargs):
    return Experiment(
        nodes=nodes,
        training_plan="numpy-logreg",
        model_args=MODEL_ARGS,
        training_args={"batch_size": 20, "test_ratio": 0.25},
        round_limit=2,
        seed=0,
        plugin_manager=pm,
        **kwargs,
    )


def test_hook_fedplug_register_transports(make_nodes, pm):
    assert pm.transports.owner("counting") == "counting-plugin"
    assert pm.transports.owner("local") == "fedplug.builtin.transports"
    nodes = make_nodes()
    exp = experiment(nodes, pm, transport="counting", transport_options={"label": "mine"})
    [made] = CountingTransport.made
    assert exp.transport is made and made.label == "mine"
    exp.run()
    assert made.dispatched == 4  # training and validation, two rounds
    exp.close()
    assert made.closed  # the experiment made it: the experiment closes it
    # the same model as the local transport
    local = experiment(nodes, pm)
    local.run()
    for name, value in local.global_params.items():
        assert np.array_equal(exp.global_params[name], value)


def test_an_unknown_transport_or_option_is_a_clear_error(make_nodes, pm):
    nodes = make_nodes()
    with pytest.raises(PluginError, match=r"no transport named 'carrier-pigeon'.*counting, local"):
        experiment(nodes, pm, transport="carrier-pigeon")
    with pytest.raises(ConfigError, match=r"unknown counting transport option\(s\) \['colour'\]"):
        experiment(nodes, pm, transport="counting", transport_options={"colour": "red"})
    with pytest.raises(ConfigError, match=r"\['colour'\]; known: processes, workers"):
        experiment(nodes, pm, transport_options={"colour": "red"})
    with pytest.raises(ConfigError, match="the local transport serves in-process nodes"):
        experiment(None, pm)


def test_validation_runs_before_the_transport_is_built(make_nodes, pm):
    """A refused configuration never opens a transport (nor contacts a node)."""
    with pytest.raises(ConfigError, match="'fedprox' was given without its strength"):
        experiment(
            make_nodes(),
            pm,
            transport="counting",
            agg_optimizer=Optimizer(lr=1.0, regularizers=["fedprox"]),
        )
    assert CountingTransport.made == []


def test_the_keywords_of_earlier_releases_are_forwarded_with_a_warning(make_nodes, pm):
    nodes = make_nodes()
    with (
        pytest.warns(DeprecationWarning, match=r"transport_options=\{'wait_timeout': \.\.\.\}"),
        pytest.raises(ConfigError, match="unknown local transport option"),
    ):
        experiment(nodes, pm, wait_timeout=3.0)
    with pytest.raises(ConfigError, match="workers and processes"):
        experiment(nodes, pm, transport="counting", workers=2)
    with pytest.raises(ConfigError, match="transport object comes configured"):
        experiment(None, pm, transport=LocalTransport(nodes), transport_options={"workers": 2})


def test_checkpoints_record_the_transport_and_resume_on_it(make_nodes, pm, tmp_path):
    nodes = make_nodes()
    exp = experiment(
        nodes,
        pm,
        transport="counting",
        transport_options={"label": "saved"},
        checkpoint_dir=tmp_path,
    )
    exp.run(rounds=1)
    _, meta = read_state(tmp_path / "round-00001.npz")
    assert meta["settings"]["transport"] == {"name": "counting", "options": {"label": "saved"}}
    resumed = Experiment.load_checkpoint(tmp_path, nodes=nodes, plugin_manager=pm)
    assert isinstance(resumed.transport, CountingTransport)
    assert resumed.transport.label == "saved"
    assert resumed.round_index == 1
    resumed.run()
    exp.run()
    for name, value in exp.global_params.items():
        assert np.array_equal(resumed.global_params[name], value)


def test_a_checkpoint_written_before_transports_were_plugins_still_loads(make_nodes, tmp_path):
    """Earlier checkpoints stored ``{"kind": "local"}`` (or ``"grpc"`` with its keywords)."""
    nodes = make_nodes()
    exp = experiment(nodes, get_plugin_manager(), checkpoint_dir=tmp_path)
    exp.run(rounds=1)
    path = tmp_path / "round-00001.npz"
    arrays, meta = read_state(path)
    meta["settings"]["transport"] = {"kind": "local"}
    write_state(path, meta, arrays)
    assert json.dumps(meta["settings"]["transport"]) == '{"kind": "local"}'
    resumed = Experiment.load_checkpoint(path, nodes=nodes)
    assert isinstance(resumed.transport, LocalTransport) and resumed.round_index == 1
    resumed.run()
    exp.run()
    for name, value in exp.global_params.items():
        assert np.array_equal(resumed.global_params[name], value)


def test_an_earlier_grpc_checkpoints_keywords_become_the_transports_options():
    from fedplug.experiment.checkpoints import transport_setting

    earlier = {
        "kind": "grpc",
        "server": "0.0.0.0:50051",
        "tls": ["server.pem", "server.key"],
        "credentials": None,
        "node_auth": "token",
        "client_ca": None,
        "wait_nodes": 3,
        "wait_timeout": 120.0,
        "request_timeout": None,
    }
    name, options = transport_setting(earlier)
    assert name == "grpc"
    assert options == {key: value for key, value in earlier.items() if key != "kind"}
    assert transport_setting({"name": "grpc", "options": {"server": "h:1"}}) == (
        "grpc",
        {"server": "h:1"},
    )
    assert transport_setting({"name": None, "options": {}}) == (None, {})
