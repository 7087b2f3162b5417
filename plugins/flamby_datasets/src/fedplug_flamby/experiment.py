"""FLamby's benchmark as a fedplug experiment: one node per center, FLamby's defaults.

:func:`flamby_experiment` uses the dataset's ``BATCH_SIZE``, ``num_updates`` local steps per round
(FLamby's way of counting; ``epochs`` for Fed-BioMed's) and ``get_nb_max_rounds(num_updates)``
rounds, and validates each round with the dataset's ``metric`` on every center's test split.
Every default can be overridden. The centers are in-process nodes (:func:`flamby_nodes`), node
processes on this machine (:func:`flamby_federation`), or deployed nodes that connect to the
researcher (``transport="grpc"``), selected by ``tags``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedplug.errors import ConfigError
from fedplug.experiment import Experiment
from fedplug.node import Node
from fedplug.optimizer import Optimizer
from fedplug_flamby.batches import ORDERS
from fedplug_flamby.datasets import center_datasets, dataset_info, dataset_module, load_flamby


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm as optimizer specs: node side (None: the dataset's own optimizer)
    and researcher side (None: apply the aggregate)."""

    node: dict[str, Any] | None
    researcher: dict[str, Any] | None
    what: str


# FLamby's strategies train with SGD on the clients. The settings were tuned without the test
# sets (bench/flamby_tuning.py): each center's train split cut into 80 % to train on and 20 % to
# validate on (stratified by event), a grid of the client rate over {0.01, 0.03, 0.1, 0.3} and of
# the server rate or FedProx's mu, FLamby's budget (100 updates, 5 rounds), the best mean
# validation C-index over seeds 0-4. Reported on the test splits over seeds 100-119 in
# docs/flamby.md ("Algorithms"); FedAvgM and FedAdagrad, chosen the same way, collapse on some
# seeds there.
def _sgd(lr: float, **extra: Any) -> dict[str, Any]:
    return {"lr": lr, **extra}


ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm(_sgd(0.03), None, "sample-weighted averaging, clients on SGD"),
    "fedavgm": Algorithm(
        _sgd(0.1), {"lr": 1.0, "modules": [["momentum", {"beta": 0.9}]]}, "server momentum"
    ),
    "fedprox": Algorithm(
        _sgd(0.03, regularizers=[["fedprox", {"alpha": 0.01}]]),
        None,
        "FedAvg with a proximal term (mu 0.01)",
    ),
    "scaffold": Algorithm(
        _sgd(0.03, modules=["scaffold-client"]),
        {"lr": 1.0, "modules": ["scaffold-server"]},
        "control variates correct client drift",
    ),
    "fedadam": Algorithm(
        _sgd(0.01), {"lr": 0.1, "modules": [["adam", {"eps": 1e-3}]]}, "Adam on the server"
    ),
    "fedyogi": Algorithm(
        _sgd(0.01), {"lr": 0.1, "modules": [["yogi", {"eps": 1e-3}]]}, "Yogi on the server"
    ),
    "fedadagrad": Algorithm(
        _sgd(0.01), {"lr": 0.1, "modules": [["adagrad", {"eps": 1e-3}]]}, "AdaGrad on the server"
    ),
}


# FLamby's own hyper-parameters (flamby/benchmarks/config_<dataset>.json; clients on SGD), as
# (node, researcher) fedplug.Optimizer specs; FLamby's FedOpt "tau" is declearn's eps.
FLAMBY_HYPERPARAMETERS: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any] | None]]] = {
    "fed_tcga_brca": {
        "fedavg": ({"lr": 0.1}, None),
        "fedprox": ({"lr": 0.1, "regularizers": [["fedprox", {"alpha": 0.1}]]}, None),
        "scaffold": (
            {"lr": 0.01, "modules": ["scaffold-client"]},
            {"lr": 1.0, "modules": ["scaffold-server"]},
        ),
        "fedadam": (
            {"lr": 0.01},
            {"lr": 0.1, "modules": [["adam", {"beta_1": 0.9, "beta_2": 0.999, "eps": 1e-8}]]},
        ),
        "fedyogi": (
            {"lr": 0.01},
            {"lr": 0.1, "modules": [["yogi", {"beta_1": 0.9, "beta_2": 0.999, "eps": 1e-8}]]},
        ),
    }
}


def flamby_nodes(
    dataset: str,
    centers: list[int] | None = None,
    *,
    accept_license: bool = False,
    tags: list[str] | None = None,
    **load_options: Any,
) -> list[Node]:
    """One in-process node per center (``center0``, ``center1``, ...) serving its FLamby data."""
    module = dataset_module(dataset)
    centers = list(range(int(module.NUM_CLIENTS))) if centers is None else list(centers)
    if not centers:
        raise ConfigError("centers is empty: a FLamby experiment needs at least one center")
    nodes = []
    for center in centers:
        data = load_flamby(
            dataset=dataset,
            center=center,
            tags=tags,
            accept_license=accept_license,
            **load_options,
        )
        nodes.append(Node(f"center{center}", data))
    return nodes


@contextlib.contextmanager
def flamby_federation(
    dataset: str,
    workdir: str | Path,
    centers: list[int] | None = None,
    *,
    accept_license: bool = False,
    wait_timeout: float = 180.0,
    report_to: Any = None,
    tags: list[str] | str | None = None,
) -> Iterator[Any]:
    """The centers as a real deployment on loopback (:func:`fedplug_grpc.deploy.local_deployment`):
    one ``fedplug node start`` process per center (``center0``, ...), each with its
    ``node.toml``, SQLite registry holding its ``flamby`` dataset, and credential, connected
    over TLS. Yields the researcher's transport once every center is connected; stops the
    processes on exit, also when interrupted. With ``report_to`` (a stream, e.g.
    ``sys.stderr``), what it does while it starts is told there. ``tags``: the datasets' tags
    (default: the dataset's name), as ``fedplug node dataset add --tags`` records them."""
    from fedplug_grpc.deploy import NodeSpec, StartupReport, local_deployment

    module = dataset_module(dataset)
    centers = list(range(int(module.NUM_CLIENTS))) if centers is None else list(centers)
    if not centers:
        raise ConfigError("centers is empty: a FLamby experiment needs at least one center")
    dataset_tags = _tags(tags, dataset)
    specs = []
    for center in centers:
        options = {"dataset": dataset, "center": center, "accept_license": accept_license}
        record = (f"{dataset}-center{center}", "flamby", list(dataset_tags), options)
        specs.append(NodeSpec(f"center{center}", [record]))
    report = StartupReport(report_to) if report_to is not None else None
    with local_deployment(
        Path(workdir).absolute(), specs, wait_timeout=wait_timeout, report=report
    ) as deployment:
        yield deployment.transport


def flamby_experiment(
    dataset: str,
    num_updates: int | None = 100,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    round_limit: int | None = None,
    algorithm: str | None = None,
    optimizer: Optimizer | dict[str, Any] | None = None,
    agg_optimizer: Optimizer | None = None,
    centers: list[int] | None = None,
    nodes: Any = None,
    training_plan: type | str | None = None,
    accept_license: bool = False,
    seed: int | None = None,
    training_args: dict[str, Any] | None = None,
    tags: list[str] | str | None = None,
    transport: str | Any = "local",
    transport_options: dict[str, Any] | None = None,
    variants: str = "declearn",
    hyperparameters: str = "fedplug",
    batch_order: str = "fedplug",
    model_args: dict[str, Any] | None = None,
    server_steps: str | None = None,
    **experiment_kwargs: Any,
) -> Experiment:
    """An :class:`~fedplug.Experiment` on FLamby dataset ``dataset`` with its benchmark defaults.

    :param num_updates: local optimizer steps per round (FLamby's count); ignored with ``epochs``.
    :param epochs: count local work in passes over each center's train split instead
        (Fed-BioMed's way); then ``round_limit`` defaults to ``NUM_EPOCHS_POOLED // epochs``.
    :param batch_size: default: the dataset's ``BATCH_SIZE``.
    :param lr: overrides the node-side optimizer's learning rate.
    :param round_limit: default: ``get_nb_max_rounds(num_updates)``, FLamby's budget.
    :param algorithm: a preset of :data:`ALGORITHMS` (``fedavg``, ``fedprox``, ``scaffold``,
        ``fedadam``, ...); None trains with the dataset's own optimizer and plain FedAvg.
    :param variants: the algorithms' update rules: ``"declearn"`` (the default: declearn's
        ``adam``/``yogi`` with bias-corrected moments, as in the FedOpt paper, and SCAFFOLD with
        the clients' unweighted mean control variate, exchanged as auxiliary variables) or
        ``"flamby"`` (FLamby's own strategies' rules, to reproduce its numbers: FedAdam/FedYogi
        steps without bias correction, the ``flamby-adam``/``flamby-yogi`` modules, and
        Scaffold with a sample-weighted control variate computed on the clients, the
        ``flamby-scaffold`` regularizer). ``server_steps=`` is its deprecated name.
    :param hyperparameters: the algorithm's settings: ``"fedplug"`` (the presets of
        :data:`ALGORITHMS`) or ``"flamby"`` (FLamby's own, :data:`FLAMBY_HYPERPARAMETERS`).
    :param batch_order: ``"fedplug"`` (the default: each round a fresh pass over a center's train
        split, shuffled by the round's seed) or ``"flamby"``: FLamby's strategies' batches (each
        client's iterator carried across rounds, shuffled from torch's global generator seeded
        by FLamby's ``set_seed(seed)``; :mod:`fedplug_flamby.batches`). With
        ``hyperparameters="flamby"`` and ``variants="flamby"``, fedplug's FedAvg, FedProx and
        Scaffold then give FLamby's own strategies' result for each seed. Needs ``seed`` and
        ``num_updates``.
    :param model_args: more of the plan's ``model_args`` (e.g. ``{"loss": "flamby"}``: FLamby's
        own ``BaselineLoss`` instead of its batched form); ``optimizer`` and ``batch_order`` are
        set through this function's arguments.
    :param optimizer: node-side :class:`fedplug.Optimizer` (replaces the preset's).
    :param agg_optimizer: researcher-side :class:`fedplug.Optimizer` (replaces the preset's).
    :param centers: the centers to federate (default: all ``NUM_CLIENTS``), as in-process nodes.
    :param nodes: existing nodes or a transport object; default: one in-process node per center
        (with the local transport).
    :param tags: the tags that select the nodes' datasets (default: the dataset's name, what
        :func:`flamby_nodes`, :func:`flamby_federation` and ``load_flamby`` tag with); e.g.
        ``["tcga"]`` for nodes whose administrators ran ``fedplug node dataset add ... --tags
        tcga``.
    :param transport: ``"local"`` (the default: in-process nodes), or a remote transport's name
        (``"grpc"``) or object: the nodes are then deployed ones, which connect to the
        researcher, and no local node is built (``centers`` and ``accept_license`` do not apply;
        each node's administrator accepts the data terms, ``fedplug node dataset add
        --accept-license``). The researcher needs FLamby installed, not the data.
    :param transport_options: the transport's settings, e.g. ``{"server": "0.0.0.0:50051",
        "tls": "certs", "wait_nodes": 6}`` for ``"grpc"``; with ``"grpc"``, ``wait_nodes``
        defaults to the dataset's number of centers (``NUM_CLIENTS``).
    :param training_plan: a subclass of the dataset's plan (e.g. with its own
        ``training_step``); default: the registered ``flamby-<dataset>`` plan.
    :param accept_license: record acceptance of the dataset's data terms (FLamby asks otherwise).
    :param experiment_kwargs: anything else :class:`~fedplug.Experiment` takes
        (``aggregator``, ``on_node_failure``, ``workers``, ``progress``, ``validate``, ...;
        Experiment's deprecated transport keywords such as ``wait_nodes=`` are forwarded to it,
        which moves them to ``transport_options`` with a DeprecationWarning).
    """
    info = dataset_info(dataset)
    module = dataset_module(dataset)
    if epochs is not None:
        num_updates = None
    elif num_updates is None:
        raise ConfigError("give num_updates (FLamby's local steps per round) or epochs")
    args: dict[str, Any] = {
        "batch_size": int(module.BATCH_SIZE) if batch_size is None else batch_size,
        "num_updates": num_updates,
        "epochs": epochs,
    }
    if lr is not None:
        args["lr"] = lr
    args.update(training_args or {})
    if round_limit is None:
        if args.get("epochs") is not None:
            round_limit = max(1, int(module.NUM_EPOCHS_POOLED) // args["epochs"])
        else:
            round_limit = max(1, int(module.get_nb_max_rounds(args["num_updates"])))

    recipe = None
    if hyperparameters not in ("fedplug", "flamby"):
        raise ConfigError(f"hyperparameters must be 'fedplug' or 'flamby', got {hyperparameters!r}")
    if algorithm is not None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        recipe = ALGORITHMS[algorithm]
        if hyperparameters == "flamby":
            known = FLAMBY_HYPERPARAMETERS.get(dataset, {})
            if algorithm not in known:
                raise ConfigError(
                    f"fedplug knows FLamby's own hyper-parameters of {sorted(known) or 'no'} "
                    f"algorithm for {dataset}, not of {algorithm!r}; use "
                    "hyperparameters='fedplug', or give optimizer= and agg_optimizer="
                )
            node_settings, researcher_settings = known[algorithm]
            recipe = Algorithm(node_settings, researcher_settings, "FLamby's settings")
    elif hyperparameters == "flamby":
        raise ConfigError("hyperparameters='flamby' applies to an algorithm: give algorithm=")
    if server_steps is not None:
        warnings.warn(
            "flamby_experiment's server_steps= is now variants= (it also selects FLamby's "
            "Scaffold)",
            DeprecationWarning,
            stacklevel=2,
        )
        variants = server_steps
    if variants not in ("declearn", "flamby"):
        raise ConfigError(f"variants must be 'declearn' or 'flamby', got {variants!r}")
    node_spec = recipe.node if recipe else None
    researcher = recipe.researcher if recipe else None
    if variants == "flamby" and recipe is not None:
        node_spec, researcher = flamby_variants(node_spec, researcher)
    if optimizer is not None:
        node_spec = optimizer.to_dict() if isinstance(optimizer, Optimizer) else dict(optimizer)
    if agg_optimizer is None and researcher is not None:
        agg_optimizer = Optimizer.from_dict(researcher)
    extra = dict(model_args or {})
    model_args = {"optimizer": node_spec} if node_spec is not None else {}
    for key in ("optimizer", "batch_order"):
        if key in extra:
            raise ConfigError(
                f"give {key} as flamby_experiment's {key}= argument, not in model_args"
            )
    model_args.update(extra)
    if batch_order not in ORDERS:
        raise ConfigError(f"batch_order must be one of {', '.join(ORDERS)}, got {batch_order!r}")
    if batch_order == "flamby":
        if seed is None:
            raise ConfigError(
                "batch_order='flamby' replays FLamby's shuffles for a seed (its set_seed(seed)): "
                "give seed="
            )
        if args.get("num_updates") is None:
            raise ConfigError(
                "batch_order='flamby' counts local work in batches, as FLamby does: give "
                "num_updates, not epochs"
            )

    dataset_tags = _tags(tags, dataset)
    remote = not (isinstance(transport, str) and transport == "local")
    if remote:
        if nodes is not None:
            raise ConfigError(
                f"give either nodes or transport={transport!r}: with a remote transport the "
                "deployed nodes connect to the researcher"
            )
        if centers is not None:
            raise ConfigError(
                "centers picks the in-process nodes flamby_experiment builds; with transport="
                f"{transport!r} the deployed nodes that connect are the federation: select them "
                "by tags, or name them in transport_options={'wait_nodes': [...]}"
            )
        waits = "wait_nodes" in (transport_options or {}) or "wait_nodes" in experiment_kwargs
        if transport == "grpc" and not waits:  # every center, unless told otherwise
            transport_options = {**(transport_options or {}), "wait_nodes": int(module.NUM_CLIENTS)}
    elif nodes is None:
        nodes = flamby_nodes(dataset, centers, accept_license=accept_license, tags=dataset_tags)
    if batch_order == "flamby":
        model_args["batch_order"] = {
            "order": "flamby",
            "seed": seed,
            "centers": _train_sizes(dataset, nodes, dataset_tags, accept_license),
        }
    experiment_kwargs.setdefault("validate", True)  # on each center's own test split
    experiment = Experiment(
        nodes=nodes,
        tags=dataset_tags,
        transport=transport,
        transport_options=transport_options,
        training_plan=training_plan or f"flamby-{dataset}",
        model_args=model_args,
        training_args=args,
        round_limit=round_limit,
        agg_optimizer=agg_optimizer,
        seed=seed,
        **experiment_kwargs,
    )
    experiment.flamby_dataset = dataset
    experiment.flamby_metric = info.metric
    return experiment


#: declearn's server-side modules -> the ones stepping as FLamby's FedOpt strategies do
FLAMBY_SERVER_MODULES = {"adam": "flamby-adam", "yogi": "flamby-yogi"}


def flamby_variants(
    node: dict[str, Any] | None, researcher: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """An algorithm's (node, researcher) optimizer specs with FLamby's update rules: declearn's
    ``adam``/``yogi`` server modules -> ``flamby-adam``/``flamby-yogi``; the ``scaffold-client``
    / ``scaffold-server`` pair -> the client-side ``flamby-scaffold`` regularizer (at the node's
    and the researcher's learning rates) and a plain server step."""
    if researcher is not None:
        researcher = {
            **researcher,
            "modules": [flamby_module(m) for m in researcher.get("modules", [])],
        }
    node_modules = [] if node is None else list(node.get("modules", []))
    if "scaffold-client" in node_modules and node is not None:
        server_lr = 1.0 if researcher is None else float(researcher.get("lr", 1.0))
        regularizer = ["flamby-scaffold", {"lr": float(node["lr"]), "server_lr": server_lr}]
        node = {
            **node,
            "modules": [m for m in node_modules if m != "scaffold-client"],
            "regularizers": [*node.get("regularizers", []), regularizer],
        }
        if researcher is not None:
            researcher = {
                **researcher,
                "modules": [m for m in researcher["modules"] if m != "scaffold-server"],
            }
    return node, researcher


def flamby_module(spec: Any) -> Any:
    """``spec`` (a module name or ``[name, config]``) with declearn's ``adam``/``yogi`` replaced
    by FLamby's unbiased-moment ``flamby-adam``/``flamby-yogi`` (same configuration)."""
    name, config = (spec, None) if isinstance(spec, str) else (spec[0], spec[1])
    name = FLAMBY_SERVER_MODULES.get(name, name)
    if config is None:
        return name
    return [name, {k: v for k, v in config.items() if k in ("beta_1", "beta_2", "eps")}]


def _train_sizes(
    dataset: str, nodes: Any, tags: list[str], accept_license: bool
) -> list[list[int]]:
    """``[[center, train size], ...]`` in FLamby's client order: from the in-process nodes'
    datasets, or else (deployed nodes) from this machine's copy of FLamby's data."""
    if isinstance(nodes, (list, tuple)) and all(isinstance(n, Node) for n in nodes):
        pairs = []
        for node in nodes:
            data = node.find_dataset(tags)
            center = data.meta.get("center")
            if not isinstance(center, int) or data.meta.get("flamby_dataset") != dataset:
                raise ConfigError(
                    f"batch_order='flamby' needs FLamby centers; node {node.name!r} serves "
                    f"{data.name!r}, which is not a center of {dataset}"
                )
            pairs.append([center, len(data)])
        return pairs
    module = dataset_module(dataset)
    pairs = []
    for center in range(int(module.NUM_CLIENTS)):
        try:
            train, _, _ = center_datasets(dataset, center, accept_license=accept_license)
        except ConfigError as exc:
            raise ConfigError(
                "batch_order='flamby' needs every center's train size, and this researcher "
                f"cannot read {dataset}'s centers to count them: {exc}"
            ) from None
        pairs.append([center, len(train)])
    return pairs


def _tags(tags: list[str] | str | None, dataset: str) -> list[str]:
    if tags is None:
        return [dataset]
    tags = [tags] if isinstance(tags, str) else list(tags)
    if not tags or not all(isinstance(tag, str) and tag for tag in tags):
        raise ConfigError(f"tags must be a non-empty list of non-empty strings, got {tags!r}")
    return tags


def flamby_results(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The last validated round's ``metric`` per center and averaged over centers (FLamby's
    "mean over client test sets"), with the round it comes from."""
    rows = [row for row in history if "validation" in row]
    if not rows:
        raise ConfigError("no round was validated; run the experiment with validate=True")
    last = rows[-1]
    per_center = {
        node: metrics[metric] for node, metrics in last["validation"].items() if metric in metrics
    }
    return {
        "round": last["round"],
        "metric": metric,
        "per_center": per_center,
        "mean": last["validation_mean"].get(metric),
    }
