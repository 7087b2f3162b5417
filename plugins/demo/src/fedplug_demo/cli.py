"""The ``fedplug demo`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fedplug.errors import PluginError
from fedplug.plugins import current_plugin_manager

#: fedplug's own transport plugins, named with the distribution that provides each
TRANSPORT_PLUGINS = {"grpc": "fedplug-grpc", "ray": "fedplug-ray"}
ALGORITHMS = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _sample(text: str) -> int | float:
    """``--clients-per-round``: a count (``100``) or a fraction (``0.1``), as
    ``Experiment(clients_per_round=...)`` takes them."""
    from fedplug.errors import ConfigError
    from fedplug.experiment.config import check_sample_size

    wrong = f"expected a count (an integer >= 1) or a fraction (0 < f <= 1), got {text!r}"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        try:
            return check_sample_size(value)
        except ConfigError:
            break
    raise argparse.ArgumentTypeError(wrong)


def demo_command(demo: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """run a federated experiment on the embedded breast-cancer data"""
    demo.add_argument(
        "--plan",
        choices=["torch", "sklearn"],
        default="torch",
        help="training plan (default: torch)",
    )
    demo.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="fedavg",
        help="federated algorithm (default: fedavg); see docs/optimization.md",
    )
    demo.add_argument(
        "--rounds",
        type=_positive,
        default=None,
        help="rounds (default: 20; with --flamby, FLamby's get_nb_max_rounds)",
    )
    demo.add_argument(
        "--nodes",
        type=_positive,
        default=3,
        help="hospitals (default: 3); the embedded records make up to 56, more draw synthetic "
        "records from a model of them",
    )
    demo.add_argument(
        "--clients-per-round",
        type=_sample,
        default=None,
        metavar="N|F",
        help="train a seeded sample of the hospitals each round: a count (100) or a fraction "
        "(0.1) of them (default: all)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="nodes trained at once on threads (default: 1, nodes take turns)",
    )
    demo.add_argument(
        "--out",
        default="fedplug-demo",
        help="folder for results.json, model.npz, learning_curve.png",
    )
    demo.add_argument(
        "--json", action="store_true", help="print one JSON summary line instead of the table"
    )
    demo.add_argument(
        "--secagg",
        action="store_true",
        help="secure aggregation: the researcher learns only the average (needs fedplug-secagg)",
    )
    demo.add_argument(
        "--flamby",
        metavar="DATASET",
        default=None,
        help="run FLamby's benchmark on DATASET (e.g. fed_tcga_brca), one node per center; "
        "needs fedplug-flamby and FLamby",
    )
    demo.add_argument(
        "--num-updates",
        type=_positive,
        default=100,
        help="with --flamby: local optimizer steps per round (default: 100, FLamby's)",
    )
    demo.add_argument(
        "--accept-license",
        action="store_true",
        help="with --flamby: accept the dataset's data terms (FLamby asks otherwise)",
    )
    demo.add_argument(
        "--track",
        metavar="NAME",
        action="append",
        default=None,
        help="log the experiment with an installed tracker (repeatable): tensorboard "
        "(fedplug-tensorboard, under runs/), mlflow (fedplug-mlflow, MLflow's tracking store)",
    )
    transports = sorted(current_plugin_manager().transports)
    demo.add_argument(
        "--transport",
        # fedplug's own transports are choices when not installed, to be told how to install them
        choices=sorted({*transports, *TRANSPORT_PLUGINS}),
        default="local",
        help="local: nodes in this process (default); grpc: one node process per hospital, "
        "connected to this researcher over gRPC with TLS on loopback (fedplug-grpc); ray: the "
        "hospitals made in Ray actors, on the cluster of RAY_ADDRESS or on this machine "
        f"(fedplug-ray); or another installed transport ({', '.join(transports)})",
    )
    return run


def run(args: argparse.Namespace) -> int:
    if args.flamby is not None:
        return _flamby(args)
    from fedplug_demo.demo import run_demo

    run_demo(
        plan=args.plan,
        rounds=args.rounds or 20,
        nodes=args.nodes,
        seed=args.seed,
        out=args.out,
        as_json=args.json,
        workers=args.workers,
        algorithm=args.algorithm,
        secagg=args.secagg,
        transport=args.transport,
        tracking=args.track,
        clients_per_round=args.clients_per_round,
    )
    return 0


def _flamby(args: argparse.Namespace) -> int:
    try:
        from fedplug_flamby.demo import run_flamby_demo
    except ImportError:
        raise PluginError(
            "--flamby needs the fedplug-flamby plugin: pip install fedplug-flamby "
            "(plugins/flamby_datasets in the fedplug repository), and FLamby: pip install "
            "git+https://github.com/owkin/FLamby"
        ) from None
    run_flamby_demo(
        dataset=args.flamby,
        algorithm=args.algorithm,
        rounds=args.rounds,
        num_updates=args.num_updates,
        seed=args.seed,
        out=args.out,
        as_json=args.json,
        accept_license=args.accept_license,
        workers=args.workers,
        secagg=args.secagg,
        transport=args.transport,
    )
    return 0
