"""The ``fedplug`` command."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedplug",
        description="Federated learning: a minimal core plus installable plugins.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run a federated experiment on the embedded breast-cancer data"
    )
    demo.add_argument(
        "--plan",
        choices=["torch", "sklearn"],
        default="torch",
        help="training plan (default: torch)",
    )
    demo.add_argument(
        "--algorithm",
        choices=["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"],
        default="fedavg",
        help="federated algorithm (default: fedavg); see docs/optimization.md",
    )
    demo.add_argument(
        "--rounds",
        type=_positive,
        default=None,
        help="rounds (default: 20; with --flamby, FLamby's get_nb_max_rounds)",
    )
    demo.add_argument("--nodes", type=_positive, default=3, help="hospitals (default: 3)")
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
        "--transport",
        choices=["local", "grpc"],
        default="local",
        help="local: nodes in this process (default); grpc: one node process per hospital, "
        "connected to this researcher over gRPC with TLS on loopback",
    )

    plugins = commands.add_parser(
        "plugins", help="list installed plugins, their hooks and load errors"
    )
    plugins.add_argument("--json", action="store_true", help="print JSON")

    optimizers = commands.add_parser(
        "optimizers", help="list declearn optimizer modules, regularizers and schedulers"
    )
    optimizers.add_argument("--json", action="store_true", help="print JSON")

    from fedplug.certs import add_certs_commands
    from fedplug.node_cli import add_node_commands

    add_node_commands(commands)
    add_certs_commands(commands)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.flamby is not None:
        return _cmd_flamby_demo(args)
    from fedplug.demo import run_demo

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
    )
    return 0


def _cmd_flamby_demo(args: argparse.Namespace) -> int:
    from fedplug.errors import PluginError

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


def _cmd_plugins(args: argparse.Namespace) -> int:
    from fedplug.plugins import get_plugin_manager
    from fedplug.report import format_table

    infos = get_plugin_manager().plugin_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    rows = [
        [
            info.name,
            info.distribution or "-",
            info.version or "-",
            "disabled"
            if info.disabled
            else (
                "ERROR: " + info.error
                if info.error
                else ", ".join(h.removeprefix("fedplug_") for h in info.hooks)
            ),
        ]
        for info in infos
    ]
    print(format_table(["plugin", "distribution", "version", "hooks / status"], rows))
    return 0


class _Required:
    """Stands for a parameter without a default in the ``fedplug optimizers`` listing."""

    def __repr__(self) -> str:
        return "<required>"


def _defaults(cls: type) -> dict[str, object]:
    return {
        name: _Required() if param.default is inspect.Parameter.empty else param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def _cmd_optimizers(args: argparse.Namespace) -> int:
    from fedplug.optimizer import Optimizer

    listing = {
        "modules": Optimizer.available_modules(),
        "regularizers": Optimizer.available_regularizers(),
        "schedulers": Optimizer.available_schedulers(),
    }
    table = {
        kind: {
            name: {
                k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                for k, v in _defaults(cls).items()
            }
            for name, cls in sorted(entries.items())
        }
        for kind, entries in listing.items()
    }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for kind, entries in table.items():
        print(f"{kind}:")
        for name, defaults in entries.items():
            settings = ", ".join(
                f"{k}={v}" if v == "<required>" else f"{k}={v!r}" for k, v in defaults.items()
            )
            print(f"  {name:32} {settings}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from fedplug.errors import FedplugError

    handler = {"demo": _cmd_demo, "plugins": _cmd_plugins, "optimizers": _cmd_optimizers}.get(
        args.command, getattr(args, "func", None)
    )
    try:
        return handler(args)
    except FedplugError as exc:
        print(f"fedplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
