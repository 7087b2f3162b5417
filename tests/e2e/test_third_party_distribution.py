"""A third party's distribution, installed with pip, works by name everywhere.

``tests/third_party/acme`` (distribution ``fedplug-acme``, entry point ``acme``) registers an
aggregator, a training plan, a dataset type, an auxiliary-variable optimizer module pair, a
transport and a command, all as import paths. It is installed with pip from a copy (not
editable, outside the repository) into a private folder, which the tests put on the path of the
processes they start (and of this one, for the gRPC test). Nothing imports it by hand: fresh
researcher processes, ``fedplug node start`` processes, ``fedplug plugins``, ``fedplug
optimizers`` and ``Experiment.load_checkpoint`` all find its names through the plugin manager.
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

SOURCE = Path(__file__).resolve().parents[1] / "third_party" / "acme"
FEDPLUG = Path(sys.executable).parent / "fedplug"
TAGS = ["acme-study"]
MODEL_ARGS = {"n_features": 4, "optimizer": {"lr": 0.1, "modules": ["acme-drift-client"]}}
TRAINING_ARGS = {"batch_size": 20, "epochs": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` the distribution from a copy into a private folder (offline)."""
    work = tmp_path_factory.mktemp("acme")
    source = work / "source"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",  # offline: setuptools comes from this venv (--no-build-isolation)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_USER": "0",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    assert (target / "fedplug_acme" / "plugin.py").exists()
    assert not list(target.glob("*.pth")), "installed as a copy, not as an editable link"
    return target


def env_with(site: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FEDPLUG_DISABLE_PLUGINS", "FEDPLUG_STRICT_PLUGINS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def fedplug(site: Path, *argv: str) -> str:
    result = subprocess.run(
        [str(FEDPLUG), *argv], capture_output=True, text=True, env=env_with(site), timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def python(site: Path, code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh researcher process; its last stdout line is a JSON report."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env_with(site),
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fedplug_plugins_optimizers_and_the_plugins_own_command_see_it(site):
    listing = {entry["name"]: entry for entry in json.loads(fedplug(site, "plugins", "--json"))}
    acme = listing["acme"]
    assert (acme["distribution"], acme["version"], acme["error"]) == ("fedplug-acme", "0.3.0", None)
    expected = {
        "aggregators": ["acme-mean"],
        "training_plans": ["acme-logreg"],
        "dataset_types": ["acme-synthetic"],
        "optimizer_modules": ["acme-drift-client", "acme-drift-server"],
        "transports": ["acme-relay"],
        "commands": ["acme"],
    }
    assert acme["registers"] == expected
    optimizers = json.loads(fedplug(site, "optimizers", "--json"))
    assert optimizers["modules"]["acme-drift-client"] == {"decay": 0.01}
    assert "acme-drift-server" in optimizers["modules"]
    assert "[plugin acme]" in fedplug(site, "optimizers")
    assert json.loads(fedplug(site, "acme", "--json")) == expected
    # FEDPLUG_DISABLE_PLUGINS removes every name it registers, its optimizer modules included
    env = {**env_with(site), "FEDPLUG_DISABLE_PLUGINS": "acme"}
    result = subprocess.run(
        [str(FEDPLUG), "optimizers", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "acme-drift-client" not in json.loads(result.stdout)["modules"]


RESEARCHER = """
    import json, sys
    from fedplug import Experiment, Node, Optimizer, get_plugin_manager

    assert "fedplug_acme.drift" not in sys.modules and "declearn" not in sys.modules
    pm = get_plugin_manager()
    load = pm.dataset_types["acme-synthetic"]


    def nodes():
        return [Node(f"site-{{i}}", load(seed=i, tags={tags}), plugin_manager=pm) for i in range(3)]


    def experiment(nodes, rounds, **kwargs):
        return Experiment(
            nodes=nodes,
            tags={tags},
            training_plan="acme-logreg",
            model_args={model_args},
            training_args={training_args},
            aggregator="acme-mean",
            agg_optimizer=Optimizer.from_dict({{"lr": 1.0, "modules": ["acme-drift-server"]}}),
            transport="acme-relay",
            transport_options={{"label": "relay-1"}},
            round_limit=rounds,
            seed=0,
            progress=False,
            **kwargs,
        )
"""


def test_an_experiment_uses_every_contribution_by_name_and_resumes_from_a_checkpoint(
    site, tmp_path
):
    report = python(
        site,
        RESEARCHER.format(tags=TAGS, model_args=MODEL_ARGS, training_args=TRAINING_ARGS)
        + """
    whole = experiment(nodes(), 3)
    whole.run()
    server = whole.agg_optimizer.declearn.modules[0]

    mine = nodes()
    first = experiment(mine, 3, checkpoint_dir="checkpoints")
    first.run(rounds=2)
    first.close()
    resumed = Experiment.load_checkpoint("checkpoints", nodes=mine)
    resumed.run()
    print(json.dumps({
        "transport": [type(resumed.transport).__name__, resumed.transport.label],
        "relayed": whole.transport.relayed,
        "aggregator": type(resumed.aggregator).__name__,
        "plan": [type(resumed.training_plan).__name__, resumed.plan_ref.name],
        "server": [server.steps, server.scale],
        "resumed_server": resumed.agg_optimizer.module_names,
        "round": resumed.round_index,
        "same": all(
            (whole.global_params[k] == resumed.global_params[k]).all() for k in whole.global_params
        ),
    }))
    """,
        tmp_path,
    )
    assert report["transport"] == ["RelayTransport", "relay-1"]
    assert report["relayed"] == 3
    assert report["aggregator"] == "AcmeMean"
    assert report["plan"] == ["AcmePlan", "acme-logreg"]
    # the pair ran: each round, 3 nodes of 60 samples at 20 a batch each count 3 more steps
    assert report["server"] == [27.0, 1.0 / (1.0 + 0.01 * 27.0)]
    assert report["resumed_server"] == ["acme-drift-server"]
    assert report["round"] == 3 and report["same"] is True


def test_secure_aggregation_refuses_the_pair_before_any_node_is_contacted(site, tmp_path):
    report = python(
        site,
        RESEARCHER.format(tags=TAGS, model_args=MODEL_ARGS, training_args=TRAINING_ARGS)
        + f"""
    import time
    from fedplug.errors import SecAggError

    served = []
    mine = nodes()
    for node in mine:
        node.serve = lambda *args, **kwargs: served.append(1)
    try:
        experiment(mine, 1, secagg=True)
    except SecAggError as exc:
        local = str(exc)
    start = time.perf_counter()
    try:  # over gRPC: refused before the server listens, let alone waits for nodes
        Experiment(
            tags={TAGS},
            training_plan="acme-logreg",
            model_args={MODEL_ARGS},
            agg_optimizer=Optimizer.from_dict({{"lr": 1.0, "modules": ["acme-drift-server"]}}),
            transport="grpc",
            transport_options={{"server": "127.0.0.1:0", "wait_timeout": 120}},
            secagg=True,
        )
    except SecAggError as exc:
        remote = str(exc)
    print(json.dumps({{
        "local": local, "remote": remote, "seconds": time.perf_counter() - start,
        "served": len(served),
    }}))
    """,
        tmp_path,
    )
    for text in (report["local"], report["remote"]):
        assert "optimizer module 'acme-drift-client' on the node side" in text
        assert "'acme-drift-client' comes from plugin 'acme'" in text
    assert report["seconds"] < 1.0
    assert report["served"] == 0


def test_node_processes_over_grpc_resolve_the_plugins_names_themselves(site, tmp_path):
    """Each node is a ``fedplug node start`` process: it finds the dataset type, the plan and
    the optimizer module through its own plugin manager, with no import by hand. The model is
    the one in-process nodes give."""
    report = python(
        site,
        f"""
    import json
    from fedplug import Experiment, Node, Optimizer, get_plugin_manager
    from fedplug_grpc.deploy import NodeSpec, local_deployment

    pm = get_plugin_manager()
    specs = [
        NodeSpec(f"site-{{i}}", [(f"acme-{{i}}", "acme-synthetic", {TAGS}, {{"seed": i}})])
        for i in range(3)
    ]


    def experiment(**where):
        return Experiment(
            **where,
            tags={TAGS},
            training_plan="acme-logreg",
            model_args={MODEL_ARGS},
            training_args={TRAINING_ARGS},
            aggregator="acme-mean",
            agg_optimizer=Optimizer(lr=1.0, modules=["acme-drift-server"]),
            round_limit=2,
            seed=0,
            progress=False,
        )


    with local_deployment("deployment", specs, wait_timeout=60) as deployment:
        with experiment(transport=deployment.transport) as remote:
            remote.run()
    load = pm.dataset_types["acme-synthetic"]
    local = experiment(nodes=[Node(s.name, load(seed=i, tags={TAGS})) for i, s in enumerate(specs)])
    local.run()
    print(json.dumps({{
        "distribution": pm.distribution("acme"),
        "nodes": remote.history[-1]["nodes"],
        "same": all((remote.global_params[k] == v).all() for k, v in local.global_params.items()),
        "steps": remote.agg_optimizer.declearn.modules[0].steps,
    }}))
    """,
        tmp_path,
    )
    assert report["distribution"] == "fedplug-acme"
    assert report["nodes"] == ["site-0", "site-1", "site-2"]
    assert report["same"] is True
    assert report["steps"] == 18.0  # two rounds of 3 nodes x 3 steps, counted on the nodes
