"""The ``fedplug node`` commands: set up and start a node, manage its datasets and plan approvals.

fedplug-grpc registers the command (``fedplug_register_commands``) with :func:`node_command`,
which builds the ``node`` parser it is given: every sub-command sets ``func``, which returns an
exit code and reports a :class:`~fedplug.errors.FedplugError` as ``fedplug node: error: ...`` on
stderr with code 2.

``--config`` defaults to ``$FEDPLUG_NODE_CONFIG``, else ``node.toml`` in the current directory.

A running node loads its datasets once, when it starts. ``node start`` holds an advisory lock on
``<database>.lock`` (beside the node's database, holding its process id) while it runs, so that
``dataset add`` and ``dataset remove`` can tell the administrator that the running node needs a
restart to see the change (:func:`running_node`). The kernel drops the lock when the process
ends, however it ends, so a stale file means nothing.

Loader options of ``dataset add`` (``--path data.csv``, ``--center 2``, ``--accept-license``) are
not declared: they are whatever the dataset type's loader accepts. argparse parses a sub-command
with its parser's ``parse_known_args`` and hands unrecognized arguments back to the top-level
parser, whose ``parse_args`` would refuse them; so ``dataset add`` is built by
:class:`_LoaderOptionsParser`, which keeps them in ``args.loader_args`` instead. They become the
loader's keyword arguments through :func:`parse_loader_args` and :func:`check_loader_options`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedplug.errors import ConfigError, FedplugError, PluginError
from fedplug.text import SOURCE_WHITESPACE, inert, unsafe_characters
from fedplug_grpc.nodestore import (
    PLAN_STATUSES,
    DatasetRecord,
    NodeStore,
    PlanRecord,
    validate_dataset,
)

Handler = Callable[[argparse.Namespace], int]


class _LoaderOptionsParser(argparse.ArgumentParser):
    """An argument parser that, with ``loader_options=True``, keeps the arguments it does not
    know in ``args.loader_args`` rather than returning them as unrecognized."""

    def __init__(self, *args: Any, loader_options: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loader_options = loader_options

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if self.loader_options:
            namespace.loader_args = list(extras)
            extras = []
        return namespace, extras


def parse_loader_args(tokens: Sequence[str]) -> dict[str, Any]:
    """Loader options from ``--key value`` arguments.

    ``--data-path x`` gives key ``data_path`` (dashes become underscores); ``--key=value`` works
    too. A value is parsed as JSON when it is JSON (``2``, ``0.5``, ``true``, ``[1, 2]``,
    ``"2"`` for the string), else kept as a string; a key without a value means true.
    """
    options: dict[str, Any] = {}
    pending: str | None = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            text, has_value, value = token[2:].partition("=")
            key = text.replace("-", "_")
            if not key.isidentifier():
                raise ConfigError(f"option {token!r} is not a valid option name")
            if key in options:
                raise ConfigError(f"option --{text} is given twice; give it once")
            options[key] = _json_or_text(value) if has_value else True
            pending = None if has_value else key
        elif pending is not None:
            options[pending] = _json_or_text(token)
            pending = None
        else:
            raise ConfigError(
                f"unexpected argument {token!r}; the dataset loader's options are given as "
                "--key value"
            )
    return options


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_loader_options(
    type_name: str, loader: Callable[..., Any], options: dict[str, Any]
) -> dict[str, Any]:
    """``options`` checked against ``loader``'s signature, with relative paths made absolute.

    Options named ``path`` or ending in ``_path`` that hold a relative path are resolved against
    the current directory (a node may run elsewhere).
    """
    if "tags" in options or "name" in options:
        raise ConfigError("give a dataset's tags and name with --tags and --name")
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [
            name
            for name, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("tags", "name")
        ]
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in accepted) or "none"
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            given = ", ".join(f"--{name.replace('_', '-')}" for name in unknown)
            raise ConfigError(
                f"dataset type {type_name!r} does not accept {given}; its options are {flags}"
            )
        missing = [n for n in accepted if params[n].default is params[n].empty and n not in options]
        if missing:
            needed = ", ".join(f"--{name.replace('_', '-')}" for name in missing)
            raise ConfigError(f"dataset type {type_name!r} needs {needed} (its options: {flags})")
    resolved = dict(options)
    for key, value in options.items():
        if (key == "path" or key.endswith("_path")) and isinstance(value, str) and value:
            resolved[key] = str(Path(value).expanduser().absolute())
    return resolved


# -- the parser -------------------------------------------------------------------------------


def node_command(node: argparse.ArgumentParser) -> Handler:
    """run a hospital's node; manage its datasets and training-plan approvals"""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="node config file (default: $FEDPLUG_NODE_CONFIG, else ./node.toml)",
    )
    node.description = "Run a node and manage its datasets and training-plan approvals."
    node.set_defaults(func=_usage(node))
    commands = node.add_subparsers(dest="node_command", metavar="COMMAND")

    init = commands.add_parser("init", parents=[config], help="write a node config file")
    init.add_argument("--name", required=True, help="the node's name, e.g. hospital-1")
    init.add_argument("--researcher", required=True, metavar="HOST:PORT", help="its address")
    init.add_argument("--ca-cert", metavar="PATH", help="the researcher's CA certificate (PEM)")
    init.add_argument(
        "--token-file", metavar="PATH", help="the node's token (default: NAME.token by the config)"
    )
    init.add_argument(
        "--cert-file", metavar="PATH", help="the node's client certificate (mutual TLS)"
    )
    init.add_argument("--key-file", metavar="PATH", help="the client certificate's key")
    init.add_argument("--database", metavar="PATH", help="SQLite database (default: NAME.db)")
    init.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC (loopback researcher only)"
    )
    init.set_defaults(func=_cmd_init)

    start = commands.add_parser("start", parents=[config], help="connect to the researcher")
    start.set_defaults(func=_cmd_start)

    dataset = commands.add_parser("dataset", help="register, list and remove datasets")
    dataset.set_defaults(func=_usage(dataset))
    datasets = dataset.add_subparsers(
        dest="dataset_command", metavar="COMMAND", parser_class=_LoaderOptionsParser
    )
    add = datasets.add_parser(
        "add",
        parents=[config],
        loader_options=True,
        allow_abbrev=False,
        help="register a dataset (further --key value options go to its loader)",
        description="Register a dataset. Options other than those below go to the dataset "
        "type's loader: --key value (a JSON value, else a string; a bare --flag means true), "
        "e.g. --path data.csv --target label.",
    )
    add.add_argument("--type", required=True, help="dataset type, e.g. csv, numpy, flamby")
    add.add_argument("--tags", required=True, help="comma-separated tags experiments select by")
    add.add_argument("--name", help="unique name (default: the tags joined with '-')")
    add.add_argument("--no-check", action="store_true", help="store it without loading it once")
    add.set_defaults(func=_cmd_dataset_add)
    listing = datasets.add_parser("list", parents=[config], help="list registered datasets")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_cmd_dataset_list)
    remove = datasets.add_parser("remove", parents=[config], help="unregister a dataset")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=_cmd_dataset_remove)

    plan = commands.add_parser("plan", help="review shipped training plans")
    plan.set_defaults(func=_usage(plan))
    plans = plan.add_subparsers(dest="plan_command", metavar="COMMAND")
    listing = plans.add_parser("list", parents=[config], help="list plans seen by the node")
    listing.add_argument("--status", choices=PLAN_STATUSES)
    listing.add_argument("--json", action="store_true", help="print JSON (without the sources)")
    listing.set_defaults(func=_cmd_plan_list)
    show = plans.add_parser("show", parents=[config], help="print a plan's status and source")
    show.add_argument("ref", metavar="REF", help="hash or unique prefix (8+ hex digits)")
    show.set_defaults(func=_cmd_plan_show)
    for verb, func in (("approve", _cmd_plan_approve), ("reject", _cmd_plan_reject)):
        decide = plans.add_parser(verb, parents=[config], help=f"{verb} a plan")
        decide.add_argument("ref", metavar="REF", help="hash or unique prefix (8+ hex digits)")
        decide.add_argument("--note", default="", help="why (kept with the decision)")
        decide.set_defaults(func=func)
    return lambda args: args.func(args)


def _usage(parser: argparse.ArgumentParser) -> Handler:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


# -- the commands -----------------------------------------------------------------------------


def _reporting(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FedplugError as exc:
            print(f"fedplug node: error: {exc}", file=sys.stderr)
            return 2

    return run


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("FEDPLUG_NODE_CONFIG") or "node.toml")


def _store(args: argparse.Namespace) -> NodeStore:
    from fedplug_grpc.nodeconfig import node_database

    return NodeStore(node_database(_config_path(args)))


@_reporting
def _cmd_init(args: argparse.Namespace) -> int:
    from fedplug_grpc.nodeconfig import write_node_config

    path = write_node_config(
        _config_path(args),
        name=args.name,
        address=args.researcher,
        ca_cert=args.ca_cert,
        token_file=args.token_file,
        insecure=args.insecure,
        database=args.database,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    print(f"wrote {path}")
    for option, value in (
        ("--ca-cert", args.ca_cert),
        ("--token-file", args.token_file),
        ("--cert-file", args.cert_file),
        ("--key-file", args.key_file),
    ):
        target = Path(os.path.abspath(Path(value).expanduser())) if value else None
        if target is not None and not target.exists():
            print(
                f"warning: {option} {value} is {target} (a relative path on the command line is "
                f"taken from the current directory, {Path.cwd()}), which does not exist yet; "
                f"{path.name} refers to it there",
                file=sys.stderr,
            )
    print(
        f"next: fedplug node dataset add --config {path} --type TYPE --tags TAGS ..., "
        f"then fedplug node start --config {path}"
    )
    return 0


def _lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def _running_lock(database: Path) -> Iterator[None]:
    """Hold ``<database>.lock`` while a node serves ``database`` (a no-op where advisory locks
    are not available, or the folder is read-only)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        handle = _lock_path(database).open("a+")
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another node serves this database: it keeps the lock
            yield
            return
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield  # the lock goes with the file's closing, or with the process


def running_node(database: Path) -> int | None:
    """The process id of the ``fedplug node start`` serving ``database``, if one runs
    (0 when it runs but its id cannot be read); None when none does."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = _lock_path(database).open("r")
    except OSError:  # no lock file: no node was ever started on this database
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _restart_notice(args: argparse.Namespace, store: NodeStore, change: str) -> None:
    """Tell the administrator that a running node sees ``change`` only once restarted."""
    pid = running_node(store.path)
    if pid is None:
        return
    who = f"the node running on this database (pid {pid})" if pid else "a running node"
    print(
        f"warning: {who} loaded its datasets when it started: {change} once it is restarted. "
        f"Stop it (Ctrl-C or SIGTERM), then run `fedplug node start --config "
        f"{_config_path(args)}` again",
        file=sys.stderr,
    )


@_reporting
def _cmd_start(args: argparse.Namespace) -> int:
    from fedplug_grpc.nodeconfig import load_node_config

    config = load_node_config(_config_path(args))
    try:
        from fedplug_grpc.transport import serve_node
    except ImportError as exc:
        raise PluginError(
            f"`fedplug node start` needs fedplug's gRPC transport, which cannot be imported "
            f"({exc}); install fedplug with its gRPC dependencies (grpcio)"
        ) from None
    with _running_lock(config.database):
        return serve_node(config)


@_reporting
def _cmd_dataset_add(args: argparse.Namespace) -> int:
    from fedplug.plugins import get_plugin_manager

    pm = get_plugin_manager()
    loader = pm.dataset_types[args.type]
    options = check_loader_options(args.type, loader, parse_loader_args(args.loader_args))
    tags = [tag.strip() for tag in args.tags.split(",")]
    name = args.name if args.name is not None else "-".join(tags)
    validate_dataset(name, args.type, tags, options)
    store = _store(args)
    if any(record.name == name for record in store.datasets()):
        raise ConfigError(
            f"a dataset named {name!r} is already registered; choose another --name, or remove "
            f"it first with `fedplug node dataset remove {name}`"
        )
    if not args.no_check:
        record = DatasetRecord(name, args.type, tags, options, "")
        dataset = store.load_dataset(record, pm, stored=False)
        test = f", test split: {len(dataset.test)} samples" if dataset.test is not None else ""
        print(f"loaded {name!r}: {len(dataset)} samples{test}")
    store.add_dataset(name, args.type, tags, options)
    print(f"added dataset {name!r} (type {args.type}, tags {', '.join(tags)}) to {store.path}")
    _restart_notice(args, store, f"it will serve {name!r} only")
    return 0


@_reporting
def _cmd_dataset_list(args: argparse.Namespace) -> int:
    from fedplug.report import format_table

    records = _store(args).datasets()
    if args.json:
        print(json.dumps([asdict(record) for record in records], indent=2))
        return 0
    if not records:
        print("no datasets; register one with `fedplug node dataset add`")
        return 0
    rows = [
        [
            record.name,
            record.type,
            ",".join(record.tags),
            " ".join(f"{key}={json.dumps(value)}" for key, value in record.options.items()),
        ]
        for record in records
    ]
    print(format_table(["name", "type", "tags", "options"], rows))
    return 0


@_reporting
def _cmd_dataset_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    store.remove_dataset(args.name)
    print(f"removed dataset {args.name!r}")
    _restart_notice(args, store, f"it stops serving {args.name!r} only")
    return 0


@_reporting
def _cmd_plan_list(args: argparse.Namespace) -> int:
    from fedplug.report import format_table

    records = _store(args).plans(args.status)
    if args.json:
        listing = [{k: v for k, v in asdict(r).items() if k != "source"} for r in records]
        print(json.dumps(listing, indent=2))
        return 0
    if not records:
        print("no training plans" + (f" with status {args.status}" if args.status else ""))
        return 0
    rows = [
        [
            inert(r.sha256[:16]),
            inert(r.class_name or "-"),
            r.status,
            r.first_seen,
            r.decided or "-",
            inert(r.note),
            _hidden_warning(r) or "",
        ]
        for r in records
    ]
    headers = ["sha256", "class", "status", "first seen", "decided", "note", "warning"]
    print(format_table(headers, rows))
    return 0


def _hidden_warning(plan: PlanRecord) -> str | None:
    """A flag for a plan whose source or class name holds characters a terminal acts on
    (recorded by an older node: this one refuses such plans)."""
    hidden = unsafe_characters(plan.source or "") + unsafe_characters(plan.class_name or "", "")
    if not hidden:
        return None
    return f"HIDDEN CHARACTERS {' '.join(dict.fromkeys(hidden))}: do not approve"


@_reporting
def _cmd_plan_show(args: argparse.Namespace) -> int:
    plan = _store(args).get_plan(args.ref)
    warning = _hidden_warning(plan)
    if warning:
        print(
            f"warning: {warning}. This plan's text holds control or formatting characters, shown "
            "below as escapes (e.g. \\x1b): in a terminal they can hide or reorder code, so the "
            "source you would read is not the one that would run."
        )
    print(f"sha256:     {inert(plan.sha256)}")
    print(f"class:      {inert(plan.class_name or '-')}")
    print(f"status:     {plan.status}")
    print(f"first seen: {plan.first_seen}")
    print(f"decided:    {plan.decided or '-'}")
    if plan.note:
        print(f"note:       {inert(plan.note)}")
    print()
    source = plan.source if plan.source is not None else "(source not received yet)"
    print(inert(source, keep=SOURCE_WHITESPACE))
    return 0


def _decide(args: argparse.Namespace, status: str) -> int:
    store = _store(args)
    if status == "approved":
        try:
            warning = _hidden_warning(store.get_plan(args.ref))
        except ConfigError:  # approving a hash the node has not seen yet
            warning = None
        if warning:
            raise ConfigError(
                f"refusing to approve plan {args.ref}: {warning.lower()}; its source holds "
                "characters that can hide code from a review (this node would not run it anyway)"
            )
    decide = store.approve_plan if status == "approved" else store.reject_plan
    plan = decide(args.ref, note=args.note)
    print(f"{status} plan {plan.sha256} ({inert(plan.class_name or 'not received yet')})")
    return 0


@_reporting
def _cmd_plan_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approved")


@_reporting
def _cmd_plan_reject(args: argparse.Namespace) -> int:
    return _decide(args, "rejected")
