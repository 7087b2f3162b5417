"""The ``ray`` transport on a real two-node Ray cluster: clients spread over both Ray nodes, the
same model as the local transport, clients made on the cluster by a factory, an actor killed
mid-round, and nothing left behind (the fixture checks it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fedplug_ray.clients import TAGS, synthetic_client

from fedplug import ConfigError, Experiment
from fedplug.cli import main

FEDPLUG = Path(sys.executable).with_name("fedplug")

SETTINGS = {
    "tags": TAGS,
    "training_plan": "numpy-logreg",
    "model_args": {"n_features": 20, "n_classes": 2},
    "training_args": {"epochs": 1, "batch_size": 16, "lr": 0.1},
    "seed": 3,
    "progress": False,
}


def run(transport, options=None, nodes=None, rounds=3, **extra):
    with Experiment(
        nodes=nodes,
        transport=transport,
        transport_options=options,
        round_limit=rounds,
        **{**SETTINGS, **extra},
    ) as exp:
        history = exp.run()
        return exp, history, {k: np.array(v) for k, v in exp.global_params.items()}


def test_ray_clients_spread_over_the_cluster_and_train_the_local_model(ray_cluster):
    nodes = [synthetic_client(i) for i in range(12)]
    exp, history, on_ray = run("ray", {"address": ray_cluster, "actors": 4}, nodes=nodes)
    where = exp.transport.where  # where each actor ran: both Ray nodes (2 CPUs each)
    _, _, local = run("local", nodes=[synthetic_client(i) for i in range(12)])
    assert len(history) == 3 and all(len(row["nodes"]) == 12 for row in history)
    for key in local:  # the same requests, replies folded in the same order: the same bits
        np.testing.assert_array_equal(on_ray[key], local[key])
    assert len(where) == 4 and len({w["ray_node"] for w in where}) == 2


def test_clients_made_on_the_cluster_by_a_factory(ray_cluster):
    """10x more clients than actors, built in the actors from their ids: the researcher sees
    only their names and tags, and trains the same model as with the clients built here."""
    options = {
        "address": ray_cluster,
        "clients": "fedplug_ray.clients:synthetic_client",
        "num_clients": 40,
        "actors": 4,
    }
    exp, history, on_cluster = run("ray", options, rounds=2)
    tags = exp.transport.node_tags()
    assert sorted(tags) == sorted(f"client{i}" for i in range(40))
    assert all(value == [TAGS] for value in tags.values())
    assert len(history[-1]["nodes"]) == 40
    _, _, here = run("local", nodes=[synthetic_client(i) for i in range(40)], rounds=2)
    for key in here:
        np.testing.assert_array_equal(on_cluster[key], here[key])


def test_an_actor_killed_mid_round_fails_its_clients_and_comes_back(ray_cluster):
    """Killing an actor's process while a round runs fails that actor's clients not yet served
    (on_node_failure='skip' continues with the rest); Ray starts the actor again, which builds
    its clients again, and all of them train in the next rounds."""
    options = {
        "address": ray_cluster,
        "clients": "fedplug_ray.clients:synthetic_client",
        "num_clients": 16,
        "actors": 4,
    }
    share = {f"client{i}" for i in (1, 5, 9, 13)}  # actor 1's clients (client i -> actor i % 4)
    with Experiment(
        transport="ray",
        transport_options=options,
        round_limit=3,
        on_node_failure="skip",
        **{**SETTINGS, "training_args": {"epochs": 300, "batch_size": 16, "lr": 0.1}},
    ) as exp:
        transport = exp.transport
        victim = transport.where[1]["pid"]
        dispatch = transport.dispatch
        killed = []

        def kill_after_first_reply(payload, nodes, **options):
            for item in dispatch(payload, nodes, **options):
                if not killed:  # actor 1 is busy with its share: kill its process
                    os.kill(victim, signal.SIGKILL)
                    killed.append(time.monotonic())
                yield item

        transport.dispatch = kill_after_first_reply
        history = exp.run()
        failed = set(history[0]["failures"])
        assert failed and failed <= share  # only the killed actor's clients, not all served
        assert len(history[0]["nodes"]) == 16 - len(failed)
        assert [len(row["nodes"]) for row in history[1:]] == [16, 16]
        assert transport.describe()[1]["pid"] != victim  # a new process holds its share


def test_secure_aggregation_over_ray_gives_the_local_model(ray_cluster):
    """The masking protocol's extra exchanges (keys, shares) travel through the actors like any
    request: the masked sum unmasks to the same model as on local nodes, bit for bit."""
    options = {"address": ray_cluster, "actors": 3}
    _, history, on_ray = run(
        "ray", options, nodes=[synthetic_client(i) for i in range(9)], rounds=2, secagg=True
    )
    _, _, local = run("local", nodes=[synthetic_client(i) for i in range(9)], rounds=2, secagg=True)
    assert [len(row["nodes"]) for row in history] == [9, 9]
    for key in local:
        np.testing.assert_array_equal(on_ray[key], local[key])


def test_a_sample_of_the_clients_each_round(ray_cluster):
    """clients_per_round on Ray: each round asks only its seeded sample of the 40 clients, and the
    model is the local transport's for the same samples."""
    options = {
        "address": ray_cluster,
        "clients": "fedplug_ray.clients:synthetic_client",
        "num_clients": 40,
    }
    _, history, on_ray = run("ray", options, rounds=3, clients_per_round=0.25)
    nodes = [synthetic_client(i) for i in range(40)]
    _, local_history, local = run("local", nodes=nodes, rounds=3, clients_per_round=0.25)
    assert [sorted(r["nodes"]) for r in history] == [sorted(r["nodes"]) for r in local_history]
    assert all(len(row["nodes"]) == 10 for row in history)
    for key in local:
        np.testing.assert_array_equal(on_ray[key], local[key])


def test_scaffold_auxiliary_variables_travel_through_the_actors(ray_cluster):
    """Scaffold's client and server states ride the requests and replies as on local nodes: the
    same model, and the clients' states kept in the actors between rounds."""
    from fedplug import Optimizer

    settings = {
        **SETTINGS,
        "training_plan": "torch-mlp",
        "model_args": {
            "layers": [20, 2],
            "optimizer": {"type": "fedplug", "lr": 0.1, "modules": ["scaffold-client"]},
        },
    }
    models = {}
    for transport, options in (("ray", {"address": ray_cluster, "actors": 3}), ("local", None)):
        with Experiment(
            nodes=[synthetic_client(i) for i in range(9)],
            transport=transport,
            transport_options=options,
            round_limit=3,
            agg_optimizer=Optimizer(lr=1.0, modules=["scaffold-server"]),
            **settings,
        ) as exp:
            history = exp.run()
            assert [len(row["nodes"]) for row in history] == [9, 9, 9]
            models[transport] = {k: np.array(v) for k, v in exp.global_params.items()}
    for key in models["local"]:
        np.testing.assert_array_equal(models["ray"][key], models["local"][key])


def test_a_checkpointed_ray_experiment_resumes_on_the_cluster(ray_cluster, tmp_path):
    """The checkpoint records the transport by name with its options (the cluster's address, the
    client factory): load_checkpoint builds the actor pool again and finishes the run, with the
    model of an uninterrupted one."""
    options = {
        "address": ray_cluster,
        "clients": "fedplug_ray.clients:synthetic_client",
        "num_clients": 12,
        "actors": 2,
    }
    _, _, whole = run("ray", options, rounds=4)
    with Experiment(
        transport="ray",
        transport_options=options,
        round_limit=2,
        checkpoint_dir=tmp_path,
        **SETTINGS,
    ) as first:
        first.run()
    with Experiment.load_checkpoint(tmp_path, round_limit=4) as rest:
        assert rest.round_index == 2
        history = rest.run()
        resumed = {k: np.array(v) for k, v in rest.global_params.items()}
    assert len(history) == 4
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_gpu_fractions_put_two_actors_on_each_gpu(ray_cluster):
    """num_gpus_per_client=0.5 on the cluster's two GPUs (declared by its worker node): a pool of
    four actors, all on the machine with the GPUs, two sharing each GPU, each seeing only its own
    (Ray sets CUDA_VISIBLE_DEVICES); the model is the local transport's."""
    options = {
        "address": ray_cluster,
        "clients": "fedplug_ray.clients:synthetic_client",
        "num_clients": 12,
        "num_cpus_per_client": 0.5,
        "num_gpus_per_client": 0.5,
    }
    exp, history, on_gpus = run("ray", options, rounds=2)
    where = exp.transport.where
    assert len(where) == 4  # the GPUs' room (2 / 0.5), not the CPUs' (4 / 0.5)
    assert len({w["ray_node"] for w in where}) == 1  # the worker node: the head has no GPU
    assert sorted(gpu for w in where for gpu in w["gpus"]) == ["0", "0", "1", "1"]
    assert all(len(row["nodes"]) == 12 for row in history)
    _, _, local = run("local", nodes=[synthetic_client(i) for i in range(12)], rounds=2)
    for key in local:
        np.testing.assert_array_equal(on_gpus[key], local[key])
    too_many = {**options, "actors": 5}
    with pytest.raises(ConfigError, match=r"actors=5, but the Ray cluster .* holds 4 actors"):
        run("ray", too_many, rounds=1)


def test_the_demo_makes_its_1000_hospitals_on_the_cluster(ray_cluster, tmp_path):
    """``fedplug demo --transport ray --nodes 1000``, run as a user runs it, on the cluster of
    RAY_ADDRESS: the hospitals are made in the actors, and the results are the local demo's."""
    argv = ["demo", "--nodes", "1000", "--plan", "sklearn", "--rounds", "2", "--json", "--out"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MPLBACKEND": "Agg"}
    on_ray = subprocess.run(
        [str(FEDPLUG), *argv, "ray-out", "--transport", "ray"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert "1000 hospitals (made in Ray actors)" in on_ray.stderr
    assert "4 Ray actors on 2 machines, 250 hospitals each at most" in on_ray.stderr
    summary = json.loads(on_ray.stdout.splitlines()[-1])
    assert summary["transport"] == "ray" and len(summary["per_node"]) == 1000
    assert main([*argv, str(tmp_path / "local-out")]) == 0
    local = json.loads((tmp_path / "local-out" / "results.json").read_text())["summary"]
    assert summary["per_node"] == local["per_node"]
    assert summary["global_accuracy"] == local["global_accuracy"] > 0.85
    ray_model = np.load(tmp_path / "ray-out" / "model.npz")
    local_model = np.load(tmp_path / "local-out" / "model.npz")
    for key in local_model.files:
        np.testing.assert_array_equal(ray_model[key], local_model[key])
