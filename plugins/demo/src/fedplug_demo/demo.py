"""The embedded demo: breast-cancer diagnosis across label-skewed "hospitals".

sklearn's breast-cancer data (569 patients, 30 features; shipped inside fedplug, no download) is
standardised and split over nodes whose share of benign cases differs (0.27 / 0.68 / 0.90 for three
nodes: the W1 workload of BENCHMARKS.md); 20 % of each node is held out for validation. The
records make at most 56 hospitals; a larger federation (``--nodes 1000``, a cross-device study)
draws each hospital's records from a Gaussian model of them, from the hospital's index alone, so
that a transport can make the hospitals where they train (``--transport ray``).

The demo is fedplug's showcase, so it names fedplug's own plugins (the plans of fedplug-torch
and fedplug-sklearn, fedplug-grpc's deployment); each is looked up when its flag is used, with
the command that installs it when it is missing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.experiment import Experiment
from fedplug.experiment.config import sample_size
from fedplug.node import Node
from fedplug.optimizer import Optimizer
from fedplug.plugins import FedplugPluginManager, active, get_plugin_manager
from fedplug.report import condensed_rows, format_table, results_rows, write_outputs
from fedplug_demo.cli import TRANSPORT_PLUGINS

TAGS = ["breast-cancer"]
W1_SIZES = (181, 189, 199)
W1_SHARES = (0.27, 0.68, 0.90)

# plan choice -> (registered plan name, plugin to install, model_args, training_args)
PLANS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "torch": (
        "torch-mlp",
        "fedplug-torch",
        {"layers": [30, 64, 2], "optimizer": {"type": "fedplug", "lr": 0.003, "modules": ["adam"]}},
        {"batch_size": 16, "epochs": 1},
    ),
    "sklearn": (
        "sklearn-sgd",
        "fedplug-sklearn",
        {
            "n_features": 30,
            "classes": [0, 1],
            "loss": "log_loss",
            "alpha": 0.0001,
            "learning_rate": "constant",
            "eta0": 0.05,
        },
        {"batch_size": 16, "epochs": 1},
    ),
}


@dataclass(frozen=True)
class Algorithm:
    """How the demo runs one federated algorithm: the node-side optimizer (None: the plan's
    default) and the researcher-side one (None: apply the aggregate)."""

    node: dict[str, Any] | None
    researcher: dict[str, Any] | None
    what: str


_NODE_SGD = {"lr": 0.05}
ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm(None, None, "sample-weighted averaging of the nodes' models"),
    "fedavgm": Algorithm(
        None, {"lr": 1.0, "modules": [["momentum", {"beta": 0.9}]]}, "server momentum"
    ),
    "fedprox": Algorithm(
        {**_NODE_SGD, "regularizers": [["fedprox", {"alpha": 1.0}]]},
        None,
        "a proximal term keeps local training near the global model",
    ),
    # server learning rates chosen with bench/algorithms.py (demo task and a drifting split)
    "fedadam": Algorithm(None, {"lr": 0.05, "modules": ["adam"]}, "Adam on the server"),
    "fedyogi": Algorithm(None, {"lr": 0.05, "modules": ["yogi"]}, "Yogi on the server"),
    "fedadagrad": Algorithm(None, {"lr": 0.1, "modules": ["adagrad"]}, "AdaGrad on the server"),
    "scaffold": Algorithm(
        {**_NODE_SGD, "modules": ["scaffold-client"]},
        {"lr": 1.0, "modules": ["scaffold-server"]},
        "control variates correct client drift",
    ),
}


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised features (float32) and labels (1 = benign) of the embedded dataset."""
    with resources.files("fedplug_demo").joinpath("data/breast_cancer.npz").open("rb") as handle:
        data = np.load(handle, allow_pickle=False)
        x, y = data["x"], data["y"]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y.astype(np.int64)


def label_skew_split(y: np.ndarray, n_nodes: int, seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per node, using every sample once, with class-1 shares spread from
    0.27 to 0.90 (exactly W1's split for three nodes)."""
    if n_nodes < 1 or n_nodes > len(y) // 10:
        raise ConfigError(f"nodes must be between 1 and {len(y) // 10}, got {n_nodes}")
    if n_nodes == 3:
        sizes, shares = np.array(W1_SIZES), np.array(W1_SHARES)
    else:
        sizes = np.full(n_nodes, len(y) // n_nodes)
        sizes[: len(y) % n_nodes] += 1
        shares = np.linspace(0.27, 0.90, n_nodes) if n_nodes > 1 else np.array([np.mean(y)])
    ones = np.round(sizes * shares).astype(int)
    ones += _spread(int(y.sum()) - int(ones.sum()), ones, sizes)
    rng = np.random.default_rng(seed)
    pools = {label: list(rng.permutation(np.flatnonzero(y == label))) for label in (0, 1)}
    parts = []
    for size, n_one in zip(sizes, ones, strict=True):
        take = [pools[1].pop() for _ in range(n_one)] + [
            pools[0].pop() for _ in range(size - n_one)
        ]
        parts.append(np.array(sorted(take)))
    return parts


def _spread(residual: int, ones: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Distribute a rounding residual of class-1 counts over nodes without exceeding their size."""
    fix = np.zeros_like(ones)
    i = 0
    while residual:
        step = 1 if residual > 0 else -1
        node = i % len(ones)
        if 0 <= ones[node] + fix[node] + step <= sizes[node]:
            fix[node] += step
            residual -= step
        i += 1
    return fix


#: the most hospitals the embedded records make (ten records each at least); beyond, the demo
#: draws synthetic records (:func:`synthetic_hospital`)
MAX_EMBEDDED_NODES = 56
#: the most hospitals ``--transport grpc`` starts, one node process each
MAX_GRPC_NODES = 32
#: the most hospitals a round of ``--secagg`` takes (fedplug-secagg's masking costs grow with the
#: square of a round's nodes: docs/secagg.md)
MAX_SECAGG_NODES = 200
#: records of each synthetic hospital (BENCHMARKS.md's W2 client size)
SYNTHETIC_RECORDS = 50


def demo_data(n_nodes: int) -> str:
    """Where the data of a federation of ``n_nodes`` hospitals comes from: ``"embedded"`` (the
    breast-cancer records split over them, up to :data:`MAX_EMBEDDED_NODES`) or
    ``"synthetic"`` (records drawn from a Gaussian model of them, any number of hospitals)."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 1:
        raise ConfigError(f"nodes must be a positive integer, got {n_nodes!r}")
    return "embedded" if n_nodes <= MAX_EMBEDDED_NODES else "synthetic"


@functools.lru_cache(maxsize=4)
def _embedded_split(n_nodes: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    x, y = load_breast_cancer()
    return x, y, label_skew_split(y, n_nodes, seed)


@functools.lru_cache(maxsize=1)
def _gaussian_model() -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(2, 30)`` and the Cholesky factor ``(30, 30)`` of the pooled within-class
    covariance of the standardised embedded records."""
    x, y = load_breast_cancer()
    x = x.astype(np.float64)
    means = np.stack([x[y == label].mean(axis=0) for label in (0, 1)])
    centred = x - means[y]
    covariance = centred.T @ centred / (len(x) - 2)
    return means, np.linalg.cholesky(covariance + 1e-6 * np.eye(x.shape[1]))


def synthetic_hospital(index: int, n_nodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of hospital ``index`` (0-based) of ``n_nodes``: :data:`SYNTHETIC_RECORDS`
    records drawn from the embedded data's Gaussian model (its class means and pooled covariance:
    the same 30 features, a task as hard), with the share of benign cases spread from 0.27 to
    0.90 over the hospitals as in the embedded split. Made from ``(seed, index)`` alone, so that
    each hospital can be made where it trains."""
    if not 0 <= index < n_nodes:
        raise ConfigError(f"hospital index must be in [0, {n_nodes}), got {index!r}")
    means, factor = _gaussian_model()
    share = 0.27 + 0.63 * index / (n_nodes - 1) if n_nodes > 1 else 0.63
    rng = np.random.default_rng([seed, index, 569])
    y = (rng.random(SYNTHETIC_RECORDS) < share).astype(np.int64)
    x = means[y] + rng.standard_normal((SYNTHETIC_RECORDS, factor.shape[0])) @ factor.T
    return x.astype(np.float32), y


def demo_client(index: int, n_nodes: int, seed: int = 0, **node_kwargs: Any) -> Node:
    """Hospital ``index`` (0-based, named ``hospital-{index + 1}``) of a demo federation of
    ``n_nodes``: its share of the embedded records, or its synthetic records beyond
    :data:`MAX_EMBEDDED_NODES` hospitals. A client factory for transports that make their clients
    where they run (``functools.partial(demo_client, n_nodes=1000, seed=0)``)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_nodes:
        raise ConfigError(f"hospital index must be in [0, {n_nodes}), got {index!r}")
    if demo_data(n_nodes) == "embedded":
        x, y, parts = _embedded_split(n_nodes, seed)
        x, y = x[parts[index]], y[parts[index]]
    else:
        x, y = synthetic_hospital(index, n_nodes, seed)
    name = f"hospital-{index + 1}"
    data = Dataset(x, y, tags=TAGS, name=f"breast-cancer-{index + 1}")
    return Node(name, data, **node_kwargs)


def demo_nodes(n_nodes: int = 3, seed: int = 0, **node_kwargs: Any) -> list[Node]:
    """The demo's ``n_nodes`` hospitals, in this process (:func:`demo_client`)."""
    demo_data(n_nodes)
    return [demo_client(i, n_nodes, seed, **node_kwargs) for i in range(n_nodes)]


def run_demo(
    plan: str = "torch",
    rounds: int = 20,
    nodes: int = 3,
    seed: int = 0,
    out: str | Path = "fedplug-demo",
    as_json: bool = False,
    progress: bool = True,
    workers: int | None = None,
    algorithm: str = "fedavg",
    secagg: bool = False,
    transport: str = "local",
    tracking: list[str] | None = None,
    clients_per_round: int | float | None = None,
) -> dict[str, Any]:
    """Run the demo experiment; print the results table (or one JSON line); write results.json
    and learning_curve.png under ``out``. Returns the JSON summary.

    With ``transport="grpc"`` each hospital is a ``fedplug node start`` process with its own
    config, SQLite registry and credential, connected over TLS on loopback (set up under
    ``out/grpc``); the processes are stopped at the end, also on Ctrl-C (at most
    :data:`MAX_GRPC_NODES`). With ``transport="ray"`` (fedplug-ray) the hospitals are made in the
    Ray actors (:func:`demo_client`), on the cluster of ``RAY_ADDRESS`` if set, else on a Ray
    instance of this machine. Another registered transport is given the in-process nodes. Beyond
    :data:`MAX_EMBEDDED_NODES` hospitals their records are synthetic (:func:`synthetic_hospital`).
    ``tracking``: the names of trackers to turn on
    (``Experiment(tracking=...)``), e.g. ``["tensorboard"]``. ``clients_per_round``: a count or
    a fraction of the hospitals trained each round (``Experiment(clients_per_round=...)``)."""
    if plan not in PLANS:
        raise ConfigError(f"--plan must be one of {sorted(PLANS)}, got {plan!r}")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    start = time.perf_counter()
    plan_name, dist, model_args, training_args = PLANS[plan]
    recipe = ALGORITHMS[algorithm]
    if recipe.node is not None:
        model_args = {**model_args, "optimizer": {"type": "fedplug", **recipe.node}}
    pm = get_plugin_manager()
    if plan_name not in pm.training_plans:
        raise ConfigError(f"the {plan} demo needs the plan {plan_name!r}: pip install {dist}")
    if secagg and "masking" not in pm.secagg_schemes:
        raise ConfigError("--secagg needs the masking scheme: pip install fedplug-secagg")
    if transport not in pm.transports:
        if transport in TRANSPORT_PLUGINS:
            dist = TRANSPORT_PLUGINS[transport]
            raise ConfigError(f"--transport {transport} needs {dist}: pip install {dist}")
        raise ConfigError(
            f"--transport must be a registered transport ({', '.join(sorted(pm.transports))}), "
            f"got {transport!r}"
        )
    if workers is not None and transport != "local":
        how = {"grpc": "in their node processes", "ray": "in the Ray actors, one per CPU"}
        raise ConfigError(
            "--workers sets how many in-process hospitals train at once (--transport local); "
            f"with --transport {transport} they train {how.get(transport, 'where it runs them')}"
        )
    data = demo_data(nodes)
    if transport == "grpc" and nodes > MAX_GRPC_NODES:
        raise ConfigError(
            f"--transport grpc starts one node process per hospital: at most {MAX_GRPC_NODES} "
            f"in the demo, got --nodes {nodes}; --transport ray (fedplug-ray) or local simulate "
            "more"
        )
    per_round = min(nodes, sample_size(clients_per_round, nodes) or nodes)
    if secagg and per_round > MAX_SECAGG_NODES:
        raise ConfigError(
            f"--secagg with {per_round} hospitals a round: the masking scheme's cost grows with "
            f"the square of a round's nodes (every pair agrees on a mask); at most "
            f"{MAX_SECAGG_NODES} in the demo (about 20 s a round); train a sample each round "
            f"(--clients-per-round {MAX_SECAGG_NODES // 2})"
        )
    with contextlib.ExitStack() as stack:
        if transport == "grpc":
            federation: Any = stack.enter_context(
                grpc_federation(
                    nodes, seed, Path(out) / "grpc", report_to=sys.stderr if progress else None
                )
            )
        elif transport == "ray":  # the hospitals are made in the Ray actors, not here
            factory = functools.partial(demo_client, n_nodes=nodes, seed=seed)
            federation = {"clients": factory, "num_clients": nodes}
        else:
            federation = demo_nodes(nodes, seed, plugin_manager=pm)
        if progress:
            where = {"grpc": "node processes", "ray": "made in Ray actors"}.get(transport)
            print(
                f"preparing the experiment: {plan_name}, {algorithm}, {nodes} hospitals"
                + (f" ({where})" if where else ""),
                file=sys.stderr,
                flush=True,
            )
            if data == "synthetic":
                print(
                    f"the 569 embedded records make at most {MAX_EMBEDDED_NODES} hospitals: each "
                    f"of the {nodes} draws {SYNTHETIC_RECORDS} synthetic records from a Gaussian "
                    "model of them",
                    file=sys.stderr,
                    flush=True,
                )
        exp = _demo_experiment(
            federation,
            plan_name,
            model_args,
            training_args,
            rounds,
            seed,
            pm,
            workers,
            recipe,
            secagg,
            progress and not as_json,
            transport,
            tracking,
            clients_per_round,
        )
        places = getattr(exp.transport, "where", None)  # fedplug-ray: where its actors run
        if progress and transport == "ray" and places:
            machines = len({place["ray_node"] for place in places})
            print(
                f"{len(places)} Ray actors on {machines} machine{'s' * (machines > 1)}, "
                f"{-(-nodes // len(places))} hospitals each at most",
                file=sys.stderr,
                flush=True,
            )
        with exp:
            history = exp.run()
        # results first: the node processes (if any) are stopped after, when the stack closes
        seconds = time.perf_counter() - start
        rows = results_rows(history, "accuracy")
        summary = {
            "rounds": len(history),
            "plan": plan_name,
            "algorithm": algorithm,
            "secagg": secagg,
            "transport": transport,
            "nodes": nodes,
            "clients_per_round": clients_per_round,
            "data": data,
            "global_accuracy": history[-1]["validation_global"].get("accuracy"),
            "per_node": {row[0]: row[3] for row in rows[:-1]},
            "seconds": round(seconds, 3),
        }
        out = Path(out)
        curve = write_outputs(
            out,
            summary,
            exp,
            "accuracy",
            f"fedplug demo: {plan_name}, {algorithm}, {nodes} hospitals",
        )
        if as_json:
            print(json.dumps(summary))
        else:
            print()
            shown = condensed_rows(rows, 3)
            headers = ["node", "train samples", "test samples", "accuracy", "loss"]
            print(format_table(headers, shown))
            if len(shown) < len(rows):
                print(f"(each of the {len(rows) - 1} hospitals: {out / 'results.json'})")
            print(f"\n{len(history)} rounds in {seconds:.2f} s; results in {out / 'results.json'}")
            print(
                f"learning curve: {curve}"
                if curve
                else "learning curve: pip install 'fedplug[plot]' for a PNG"
            )
        return summary


def _demo_experiment(
    federation: Any,
    plan_name: str,
    model_args: dict[str, Any],
    training_args: dict[str, Any],
    rounds: int,
    seed: int,
    pm: Any,
    workers: int | None,
    recipe: Algorithm,
    secagg: bool,
    progress: bool,
    transport: str = "local",
    tracking: list[str] | None = None,
    clients_per_round: int | float | None = None,
) -> Experiment:
    """The demo's experiment over ``federation``: in-process nodes (served by ``transport``), the
    options of a transport that makes the clients itself (``{"clients": factory, "num_clients":
    n}``, for ``ray``), or with ``transport="grpc"`` the researcher's transport that the node
    processes joined."""
    if transport == "grpc":
        where: dict[str, Any] = {"transport": federation}
    elif isinstance(federation, dict):  # a client factory: the transport makes the clients
        where = {"transport": transport, "transport_options": federation}
    else:
        where = {"nodes": federation, "transport": transport}
        if transport == "local":
            where["workers"] = workers
    return Experiment(
        **where,
        tags=TAGS,
        training_plan=plan_name,
        model_args=model_args,
        training_args={**training_args, "test_ratio": 0.2},
        round_limit=rounds,
        seed=seed,
        progress=progress,
        plugin_manager=pm,
        agg_optimizer=_researcher_optimizer(recipe, pm),
        secagg=secagg,
        tracking=tracking or None,
        clients_per_round=clients_per_round,
    )


def _researcher_optimizer(recipe: Algorithm, pm: FedplugPluginManager) -> Optimizer | None:
    if recipe.researcher is None:
        return None
    with active(pm):
        return Optimizer.from_dict(recipe.researcher, plugin_manager=pm)


@contextlib.contextmanager
def grpc_federation(
    n_nodes: int,
    seed: int,
    workdir: Path,
    wait_timeout: float = 120.0,
    report_to: TextIO | None = None,
) -> Iterator[Any]:
    """The demo's hospitals as a real deployment on loopback, under ``workdir``
    (:func:`fedplug_grpc.deploy.local_deployment`): TLS, one credential, ``node.toml``, SQLite
    registry and ``fedplug node start`` process per hospital, each holding its data in its own
    folder. Yields the researcher's transport once every node is connected; stops the node
    processes on exit, also when interrupted. ``report_to``: a stream told what is being done
    meanwhile (certificates, node processes, "waiting for 3 nodes: 1 connected")."""
    try:
        from fedplug_grpc.deploy import StartupReport, local_deployment
    except ImportError:
        raise ConfigError("--transport grpc needs fedplug-grpc: pip install fedplug-grpc") from None

    workdir = Path(workdir).absolute()
    specs = demo_node_specs(n_nodes, seed, workdir)
    report = StartupReport(report_to) if report_to is not None else None
    with local_deployment(workdir, specs, wait_timeout=wait_timeout, report=report) as deployment:
        yield deployment.transport


def demo_node_specs(n_nodes: int, seed: int, workdir: Path, **settings: Any) -> list[Any]:
    """The demo's hospitals as node specs (:class:`fedplug_grpc.deploy.NodeSpec`), their data
    written under ``workdir/data``; ``settings``: more NodeSpec fields for each (``node``,
    ``researcher``)."""
    from fedplug_grpc.deploy import NodeSpec

    x, y = load_breast_cancer()
    specs = []
    for i, idx in enumerate(label_skew_split(y, n_nodes, seed)):
        data = Path(workdir) / "data" / f"hospital-{i + 1}.npz"
        data.parent.mkdir(parents=True, exist_ok=True)
        np.savez(data, x=x[idx], y=y[idx])
        dataset = (f"breast-cancer-{i + 1}", "numpy", TAGS, {"path": str(data)})
        specs.append(NodeSpec(f"hospital-{i + 1}", [dataset], **settings))
    return specs
