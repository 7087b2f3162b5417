"""A node's configuration file (TOML): who it is, where its researcher is, and what it accepts.

.. code-block:: toml

    [node]
    name = "hospital-1"            # required
    database = "node.db"           # default "<name>.db"
    approval = true                # shipped plan source runs only when its hash is approved
    require_secagg = false
    [researcher]
    address = "localhost:50051"    # required, host:port
    ca_cert = "certs/ca.pem"       # required unless insecure = true
    token_file = "certs/nodes/hospital-1.token"   # or token = "..." (at most one of them)
    cert_file = "hospital-1.pem"   # and/or a client certificate and its key (mutual TLS), for
    key_file = "hospital-1.key"    #   a researcher with node_auth = "certificate"
    insecure = false               # plaintext gRPC, loopback addresses only
    heartbeat_s = 5.0
    reconnect_s = 2.0              # first retry delay; backs off up to max_reconnect_s
    max_reconnect_s = 30.0
    [limits]                       # every key optional; omitted = no limit
    max_epochs = 100
    max_updates = 100000
    max_batch_size = 4096
    allowed_plugins = ["torch", "sklearn"]
    max_message_mb = 8192          # largest request accepted, in MiB
    max_plan_mb = 8192             # largest model a plan may build (default: max_message_mb)
    max_pending_plans = 100        # plans kept for review (oldest pending out first)
    max_pending_mb = 64            # source kept for review, in MiB

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedplug.errors import ConfigError
from fedplug.node import NodeLimits

__all__ = ["NodeConfig", "NodeLimits", "load_node_config", "node_database", "write_node_config"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REQUIRED = object()
_MIB = 1024 * 1024

# section -> key -> (expected type, its name in messages, default or _REQUIRED)
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str, Any]]] = {
    "node": {
        "name": (str, "a string", _REQUIRED),
        "database": (str, "a string (a path)", None),
        "approval": (bool, "a boolean", True),
        "require_secagg": (bool, "a boolean", False),
    },
    "researcher": {
        "address": (str, 'a string "host:port"', _REQUIRED),
        "ca_cert": (str, "a string (a path)", None),
        "token_file": (str, "a string (a path)", None),
        "token": (str, "a string", None),
        "cert_file": (str, "a string (a path)", None),
        "key_file": (str, "a string (a path)", None),
        "insecure": (bool, "a boolean", False),
        "heartbeat_s": ((int, float), "a number", 5.0),
        "reconnect_s": ((int, float), "a number", 2.0),
        "max_reconnect_s": ((int, float), "a number", 30.0),
    },
    "limits": {
        "max_epochs": (int, "an integer", None),
        "max_updates": (int, "an integer", None),
        "max_batch_size": (int, "an integer", None),
        "allowed_plugins": (list, "a list of strings", None),
        "max_message_mb": ((int, float), "a number", 8192),
        "max_plan_mb": ((int, float), "a number", None),  # default: max_message_mb
        "max_pending_plans": (int, "an integer", 100),
        "max_pending_mb": ((int, float), "a number", 64),
    },
}


@dataclass(frozen=True)
class NodeConfig:
    """A node's settings, read by :func:`load_node_config` (paths absolute, token read)."""

    path: Path
    name: str
    database: Path
    approval: bool
    require_secagg: bool
    address: str
    ca_cert: Path | None
    token: str = field(repr=False)  # "" when the node has only a client certificate
    cert_file: Path | None
    key_file: Path | None
    insecure: bool
    heartbeat_s: float
    reconnect_s: float
    max_reconnect_s: float
    limits: NodeLimits
    max_message_bytes: int
    max_pending_plans: int = 100
    max_pending_mb: float = 64.0


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and check the node config file at ``path``; every problem is a ConfigError."""
    path = Path(path).absolute()
    values = _read(path)
    node, researcher, limits = values["node"], values["researcher"], values["limits"]
    insecure = researcher["insecure"]
    ca_cert = None
    if researcher["ca_cert"] is not None:
        ca_cert = path.parent / researcher["ca_cert"]
        if not ca_cert.is_file():
            raise ConfigError(
                f"{path}: researcher.ca_cert {str(ca_cert)!r} does not exist; give the "
                "researcher's CA certificate (PEM) that the researcher handed to this node"
            )
    return NodeConfig(
        path=path,
        name=node["name"],
        database=_database(path, node),
        approval=node["approval"],
        require_secagg=node["require_secagg"],
        address=researcher["address"],
        ca_cert=ca_cert,
        token=_token(path, researcher),
        cert_file=_existing(path, researcher, "cert_file", "its client certificate (PEM)"),
        key_file=_existing(path, researcher, "key_file", "the key of its client certificate"),
        insecure=insecure,
        heartbeat_s=float(researcher["heartbeat_s"]),
        reconnect_s=float(researcher["reconnect_s"]),
        max_reconnect_s=float(researcher["max_reconnect_s"]),
        limits=NodeLimits(
            max_epochs=limits["max_epochs"],
            max_updates=limits["max_updates"],
            max_batch_size=limits["max_batch_size"],
            allowed_plugins=None
            if limits["allowed_plugins"] is None
            else tuple(limits["allowed_plugins"]),
            # a plan bigger than the largest request could never receive its parameters
            max_plan_mb=float(
                limits["max_plan_mb"]
                if limits["max_plan_mb"] is not None
                else limits["max_message_mb"]
            ),
        ),
        max_message_bytes=int(limits["max_message_mb"] * _MIB),
        max_pending_plans=limits["max_pending_plans"],
        max_pending_mb=float(limits["max_pending_mb"]),
    )


def node_database(path: str | Path) -> Path:
    """The database of the node config at ``path``, after the file's checks that need no other
    file (the token and CA certificate are not read): what the dataset and plan commands use."""
    path = Path(path).absolute()
    return _database(path, _read(path)["node"])


def _database(path: Path, node: dict[str, Any]) -> Path:
    return path.parent / (node["database"] or f"{node['name']}.db")


def _existing(path: Path, researcher: dict[str, Any], key: str, what: str) -> Path | None:
    if researcher[key] is None:
        return None
    file = path.parent / researcher[key]
    if not file.is_file():
        raise ConfigError(
            f"{path}: researcher.{key} {str(file)!r} does not exist; give {what}, which the "
            "researcher's operator issued (fedplug certs node NAME --cert or --csr)"
        )
    return file


def _token(path: Path, researcher: dict[str, Any]) -> str:
    token_file, token = researcher["token_file"], researcher["token"]
    if token_file is not None and token is not None:
        raise ConfigError(f"{path}: [researcher] has both token_file and token; keep one of them")
    if token_file is None and token is None:
        if researcher["cert_file"] is not None:
            return ""  # the node is known by its client certificate
        raise ConfigError(
            f"{path}: [researcher] needs the node's credential, which the researcher issues: "
            "token_file (a path) or token (a string), or cert_file and key_file (a client "
            "certificate)"
        )
    if token is not None:
        if not token.strip():
            raise ConfigError(f"{path}: researcher.token is empty; give the node's token")
        return token.strip()
    file = path.parent / token_file
    try:
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{path}: researcher.token_file {str(file)!r} cannot be read ({exc.strerror or exc}); "
            "put the token the researcher issued for this node there"
        ) from None
    if not text:
        raise ConfigError(
            f"{path}: researcher.token_file {str(file)!r} is empty; put the token the researcher "
            "issued for this node there"
        )
    return text


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The file's sections with defaults filled in, after every check that needs no other file."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"node config {str(path)!r} does not exist; create it with `fedplug node init "
            f"--config {path} --name NAME --researcher HOST:PORT ...`, or point --config "
            "(or FEDPLUG_NODE_CONFIG) at an existing one"
        ) from None
    except OSError as exc:
        raise ConfigError(f"node config {str(path)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_SCHEMA))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {unknown}; the sections are "
            f"{', '.join(f'[{name}]' for name in _SCHEMA)}"
        )
    values = {section: _section(path, section, raw) for section in _SCHEMA}
    _check(path, values)
    return values


def _section(path: Path, section: str, raw: dict[str, Any]) -> dict[str, Any]:
    schema = _SCHEMA[section]
    table = raw.get(section, {})
    if section != "limits" and section not in raw:
        raise ConfigError(
            f"{path}: section [{section}] is missing; it needs at least {_required(section)}"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {section} must be a section [{section}], got {table!r}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(f'{section}.{key}' for key in unknown)}; "
            f"[{section}] accepts {', '.join(schema)}"
        )
    values = {}
    for key, (expected, described, default) in schema.items():
        if key not in table:
            if default is _REQUIRED:
                raise ConfigError(f"{path}: {section}.{key} is required ({described})")
            values[key] = default
            continue
        value = table[key]
        # bool is an int in Python, but not an integer or number to a config file's reader
        if isinstance(value, bool) is not (expected is bool) or not isinstance(value, expected):
            raise ConfigError(
                f"{path}: {section}.{key} must be {described}, got {_toml(value)} "
                f"({type(value).__name__})"
            )
        values[key] = value
    return values


def _required(section: str) -> str:
    keys = [key for key, spec in _SCHEMA[section].items() if spec[2] is _REQUIRED]
    return ", ".join(f"{section}.{key}" for key in keys)


def _check(path: Path, values: dict[str, dict[str, Any]]) -> None:
    """Checks of values beyond their types."""
    name = values["node"]["name"]
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{path}: node.name {name!r} is invalid; use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    researcher = values["researcher"]
    host = _host(path, researcher["address"])
    if researcher["insecure"]:
        if not _is_loopback(host):
            raise ConfigError(
                f"{path}: researcher.insecure = true sends training data unencrypted, so it is "
                f"allowed only for a loopback address (localhost, 127.x.x.x, ::1), not "
                f"{researcher['address']!r}; set insecure = false and give researcher.ca_cert"
            )
        if researcher["ca_cert"] is not None:
            raise ConfigError(
                f"{path}: researcher.insecure = true turns TLS off, so researcher.ca_cert would "
                "be ignored; remove one of them"
            )
    elif researcher["ca_cert"] is None:
        raise ConfigError(
            f"{path}: researcher.ca_cert is required (a string, the path of the researcher's CA "
            "certificate) unless researcher.insecure = true (loopback addresses only)"
        )
    if (researcher["cert_file"] is None) != (researcher["key_file"] is None):
        given, missing = ("cert_file", "key_file")[:: 1 if researcher["key_file"] is None else -1]
        raise ConfigError(
            f"{path}: researcher.{given} needs researcher.{missing}: a client certificate is "
            "given with its key"
        )
    if researcher["cert_file"] is not None and researcher["insecure"]:
        raise ConfigError(
            f"{path}: a client certificate needs TLS; researcher.insecure = true turns it off: "
            "remove one of them"
        )
    for key in ("heartbeat_s", "reconnect_s", "max_reconnect_s"):
        if not (math.isfinite(researcher[key]) and researcher[key] > 0):
            raise ConfigError(
                f"{path}: researcher.{key} must be a number > 0, got {researcher[key]}"
            )
    if researcher["max_reconnect_s"] < researcher["reconnect_s"]:
        raise ConfigError(
            f"{path}: researcher.max_reconnect_s ({researcher['max_reconnect_s']}) must be at "
            f"least researcher.reconnect_s ({researcher['reconnect_s']})"
        )
    limits = values["limits"]
    checked = ("max_epochs", "max_updates", "max_batch_size", "max_pending_plans")
    for key in (*checked, "max_message_mb", "max_plan_mb", "max_pending_mb"):
        if limits[key] is not None and not (math.isfinite(limits[key]) and limits[key] > 0):
            kind = "a number" if key.endswith("_mb") else "an integer"
            raise ConfigError(
                f"{path}: limits.{key} must be {kind} > 0, got {limits[key]}"
                + ("" if key.endswith("_mb") else "; omit it for no limit")
            )
    plugins = limits["allowed_plugins"]
    if plugins is not None and not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError(
            f"{path}: limits.allowed_plugins must be a list of plugin names (non-empty strings), "
            f"got {_toml(plugins)}; `fedplug plugins` lists the names"
        )


def _host(path: Path, address: str) -> str:
    """The host of ``host:port`` (IPv6 in brackets: ``[::1]:50051``)."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f'{path}: researcher.address must be "host:port" (e.g. "researcher.example.org:'
            f'50051", "[::1]:50051"), got {address!r}'
        )
    return host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _toml(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def write_node_config(
    path: str | Path,
    name: str,
    address: str,
    ca_cert: str | Path | None = None,
    token_file: str | Path | None = None,
    insecure: bool = False,
    database: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> Path:
    """Write a commented node config file at ``path`` (never over an existing file).

    Relative paths given here are taken relative to the current directory (as on the command
    line) and written relative to the config file's folder when they lie under it.

    :param token_file: default ``<name>.token`` next to the config file, unless a client
        certificate is given.
    :param cert_file: the node's client certificate, with ``key_file`` its key.
    :return: the config file's absolute path.
    """
    path = Path(path).absolute()
    if not ca_cert and not insecure:
        raise ConfigError(
            "give the researcher's CA certificate (ca_cert, --ca-cert PATH), or insecure=True "
            "(--insecure) for a researcher on this machine (loopback address)"
        )
    folder = path.parent

    def where(value: str | Path | None) -> str | None:
        if value is None:
            return None
        target = Path(value).expanduser().absolute()
        return (
            target.relative_to(folder).as_posix() if target.is_relative_to(folder) else str(target)
        )

    node = {"name": name, "database": where(database)}
    researcher = {
        "address": address,
        "ca_cert": where(ca_cert),
        "token_file": where(token_file) or (None if cert_file else f"{name}.token"),
        "cert_file": where(cert_file),
        "key_file": where(key_file),
        "insecure": insecure,
    }
    defaults = {
        section: {key: spec[2] for key, spec in keys.items()} for section, keys in _SCHEMA.items()
    }
    _check(path, {**defaults, "node": node, "researcher": {**defaults["researcher"], **researcher}})
    q = json.dumps  # a TOML basic string is a JSON string
    lines = [
        "# fedplug node configuration; relative paths are relative to this file's folder.",
        "",
        "[node]",
        f"name = {q(name)}",
        f"database = {q(node['database'])}"
        if database is not None
        else f"# database = {q(name + '.db')}    # datasets and plan approvals (SQLite)",
        "approval = true          # shipped plan source runs only once its hash is approved",
        "require_secagg = false   # true: refuse rounds without secure aggregation",
        "",
        "[researcher]",
        f"address = {q(address)}",
        f"ca_cert = {q(researcher['ca_cert'])}    # the researcher's CA certificate"
        if ca_cert
        else '# ca_cert = "ca.pem"    # the researcher\'s CA certificate (unless insecure)',
        f"token_file = {q(researcher['token_file'])}    # the token the researcher issued"
        if researcher["token_file"]
        else f"# token_file = {q(name + '.token')}    # the token the researcher issued",
        f"cert_file = {q(researcher['cert_file'])}    # the client certificate it issued"
        if cert_file
        else f"# cert_file = {q(name + '.pem')}    # or a client certificate (mutual TLS)",
        f"key_file = {q(researcher['key_file'])}    # the certificate's key"
        if key_file
        else f"# key_file = {q(name + '.key')}",
        f"insecure = {'true' if insecure else 'false'}    # plaintext gRPC, loopback only",
        "heartbeat_s = 5.0",
        "reconnect_s = 2.0        # first retry delay; backs off up to max_reconnect_s",
        "max_reconnect_s = 30.0",
        "",
        "[limits]    # what this node accepts; omit a key for no limit",
        "# max_epochs = 100",
        "# max_updates = 100000",
        "# max_batch_size = 4096",
        '# allowed_plugins = ["torch", "sklearn"]    # plugins whose registered plans may run',
        "max_message_mb = 8192    # largest request accepted, in MiB",
        "max_plan_mb = 8192       # largest model a plan may build, in MiB of parameters",
        "max_pending_plans = 100  # shipped plans kept for review, oldest pending out first",
        "max_pending_mb = 64      # their source, in MiB",
        "",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write("\n".join(lines))
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; edit it, remove it, or choose another --config path"
        ) from None
    return path
