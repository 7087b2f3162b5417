"""TLS certificates and node credentials for the gRPC transport (``fedplug certs``).

A *certs directory*, kept by the researcher::

    DIR/ca.pem, ca.key            the CA (ECDSA P-256, CA=True, pathlen=0, keyCertSign)
    DIR/server.pem, server.key    the researcher's server certificate, signed by the CA; SANs: the
                                  host names and IP addresses the nodes connect to; serverAuth
    DIR/credentials.json          {"fedplug_credentials": 1, "nodes": {NAME: {...}}}: per node
                                  the SHA-256 of its token ("sha256") or of its client
                                  certificate ("cert_sha256"), and when it was "created"
    DIR/nodes/NAME.token          one node's secret token, to hand to that hospital
    DIR/nodes/NAME.pem, NAME.key  or one node's client certificate (clientAuth, CN = NAME) and
                                  key; no key when the hospital sent a signing request instead

Keys and tokens are written with mode 0600, every file atomically (temporary file + rename).

Trust model: the researcher runs the gRPC server; hospital nodes connect out to it. A node
trusts only the ``ca.pem`` it was given out of band (no trust on first use) and checks that the
server certificate names the host it dials. The researcher knows a node by its token, sent as gRPC
metadata inside the TLS channel, and stores only the SHA-256 digest of each token, so
``credentials.json`` reveals no token. Or, with ``node_auth="certificate"`` on the researcher's
transport (mutual TLS), by a client certificate signed by the same CA *and* pinned by its SHA-256
fingerprint in ``credentials.json``: removing the node revokes its certificate without a CRL.
A hospital that keeps its private key at home sends a certificate signing request instead
(``fedplug certs node NAME --csr FILE``). ``cryptography`` is imported only when a function
needs it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedplug.errors import ConfigError, FedplugError

if TYPE_CHECKING:
    from cryptography import x509

DEFAULT_DIR = "fedplug-certs"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 825
CREDENTIALS = "credentials.json"
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_-]+)*\.?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KINDS = ("sha256", "cert_sha256")  # a node's token digest, its certificate's fingerprint


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError(
            "TLS certificates need the cryptography package, which is not installed; "
            "install it with: pip install 'fedplug[grpc]'"
        ) from None


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write ``data`` to ``path`` atomically; ``secret`` files get mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"could not write {path}: {exc.strerror}; check that the directory is writable"
        ) from None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"could not create the directory {path}: {exc.strerror}") from None


def _hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    if isinstance(hosts, str):
        hosts = [hosts]
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(str(host))))
            continue
        except ValueError:
            pass
        tld = str(host).rstrip(".").rsplit(".", 1)[-1]
        if not isinstance(host, str) or not _DNS_NAME.fullmatch(host) or tld.isdigit():
            raise ConfigError(
                f"host {host!r} is neither a DNS name nor an IP address; give the bare name or "
                "address the nodes connect to, e.g. researcher.example.org or 10.0.0.5 "
                "(no scheme, port or brackets)"
            )
        names.append(x509.DNSName(host))
    if not names:
        raise ConfigError("no hosts given; give at least one host name or IP address (--host)")
    return names


def _days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise ConfigError(f"days must be a positive integer, got {days!r}")
    return days


def _usage(**flags: bool) -> x509.KeyUsage:
    from cryptography import x509

    names = "digital_signature content_commitment key_encipherment data_encipherment "
    names += "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names.split()})


def _issue(root: Path, stem: str, cn: str, days: int, ca: tuple | None, extensions: list) -> Any:
    """Write a new P-256 key to ``DIR/stem.key`` and its certificate to ``DIR/stem.pem``, signed
    by ``ca`` = (certificate, key), or self-signed; ``extensions`` = [(extension, critical)]."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer, signer = (ca[0].subject, ca[1]) if ca else (name, key)
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)  # and never after the CA's own expiry:
    not_after = min(not_after, ca[0].not_valid_after_utc) if ca else not_after
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    cert = builder.sign(signer, hashes.SHA256())
    key_pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    _write(root / f"{stem}.key", key_pem, secret=True)
    _write(root / f"{stem}.pem", cert.public_bytes(s.Encoding.PEM))
    return cert, key


def _issue_server(root: Path, ca: tuple, sans: list, days: int) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[1].public_key())
    extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(sans), False),
        (aki, False),
    ]
    _issue(root, "server", "fedplug researcher", days, ca, extensions)


def init_certs(
    directory: str | os.PathLike[str],
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Path:
    """Create a new CA and a server certificate for ``hosts`` in ``directory`` (created).
    Node credentials already in the directory are kept: tokens do not depend on the CA.

    :param hosts: DNS names and IP addresses the nodes will connect to.
    :param days: validity of both certificates.
    :param force: replace an existing CA; every node must then be given the new ``ca.pem``.
    :returns: the directory.
    """
    _require_cryptography()
    from cryptography import x509

    root, sans, days = Path(directory), _hosts(hosts), _days(days)
    files = ["ca.pem", "ca.key", "server.pem", "server.key"]
    existing = [name for name in files if (root / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{root} already holds {', '.join(existing)}; pass --force (force=True) to replace "
            "the CA, after which every node needs the new ca.pem, or choose another directory"
        )
    _mkdir(root)
    ca_extensions = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_usage(key_cert_sign=True, crl_sign=True), True),
    ]
    ca = _issue(root, "ca", f"fedplug CA {secrets.token_hex(4)}", days, None, ca_extensions)
    _issue_server(root, ca, sans, days)
    return root


def server_certificate(
    directory: str | os.PathLike[str],
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Path:
    """Issue a new server certificate and key for ``hosts`` with the directory's existing CA,
    e.g. to add a host name; nodes keep their ``ca.pem``. ``force`` replaces an existing one.

    :returns: the directory.
    """
    _require_cryptography()
    root, sans, days = Path(directory), _hosts(hosts), _days(days)
    if (root / "server.pem").exists() and not force:
        raise ConfigError(f"{root / 'server.pem'} exists; pass force=True to replace it")
    _issue_server(root, _load_ca(root), sans, days)
    return root


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid node name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. hospital-a)"
        )
    return name


def _read_credentials(path: Path) -> dict[str, dict[str, str]]:
    """The ``nodes`` table of a credentials file, checked."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no credentials file at {path}; create node credentials with: "
            "fedplug certs node NAME --dir DIR"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"could not read the credentials file {path}: {exc}") from None
    doc = doc if isinstance(doc, dict) else {}
    nodes = doc.get("nodes")
    if doc.get("fedplug_credentials") != 1 or not isinstance(nodes, dict):
        raise ConfigError(
            f"{path} is not a fedplug credentials file (expected "
            '{"fedplug_credentials": 1, "nodes": {...}}); recreate it with fedplug certs node'
        )
    for name, entry in nodes.items():
        digests = [entry.get(k) for k in _KINDS] if isinstance(entry, dict) else [None, None]
        valid = [d is None or _SHA256_HEX.fullmatch(str(d)) for d in digests]
        if not _NODE_NAME.fullmatch(name) or digests == [None, None] or not all(valid):
            raise ConfigError(
                f"{path}: the entry for node {name!r} is malformed (expected a valid name and a "
                "64-digit lowercase hex sha256 or cert_sha256); remove it and run: "
                "fedplug certs node NAME --force"
            )
    return nodes


def _write_credentials(path: Path, nodes: dict[str, dict[str, str]]) -> None:
    doc = {"fedplug_credentials": 1, "nodes": dict(sorted(nodes.items()))}
    _write(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def _node_entries(root: Path, name: str, force: bool) -> dict[str, dict[str, str]]:
    """The credentials table, checked that ``name`` may be (re)given a credential."""
    path = root / CREDENTIALS
    nodes = _read_credentials(path) if path.exists() else {}
    if name in nodes and not force:
        kind = "a certificate" if "cert_sha256" in nodes[name] else "a token"
        raise ConfigError(
            f"node {name!r} already has {kind} in {path}; pass --force (force=True) to replace "
            "its credential, after which the old one is refused"
        )
    _mkdir(root / "nodes")
    _delete_files(root, name)  # what the old credential left behind
    return nodes


def _delete_files(root: Path, name: str) -> None:
    """Delete the token, certificate and key files the directory keeps for node ``name``."""
    for suffix in (".token", ".pem", ".key"):
        (root / "nodes" / f"{name}{suffix}").unlink(missing_ok=True)


def _created() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def add_node(directory: str | os.PathLike[str], name: str, force: bool = False) -> tuple[str, Path]:
    """Create a secret token for node ``name``: write it to ``DIR/nodes/NAME.token`` and its
    digest to ``DIR/credentials.json``. ``force`` replaces the credential of an existing node.

    :returns: the token and the token file.
    """
    root, name = Path(directory), _check_name(name)
    nodes = _node_entries(root, name, force)
    token = secrets.token_urlsafe(32)
    token_path = root / "nodes" / f"{name}.token"
    _write(token_path, token.encode("ascii"), secret=True)
    nodes[name] = {"sha256": token_digest(token), "created": _created()}
    _write_credentials(root / CREDENTIALS, nodes)
    return token, token_path


def _load_ca(root: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not (root / "ca.key").exists():
        raise ConfigError(f"{root} has no CA (ca.key); create one: fedplug certs init --dir {root}")
    try:
        ca_cert = x509.load_pem_x509_certificate(read_pem(root / "ca.pem"))
        ca_key = serialization.load_pem_private_key(read_pem(root / "ca.key"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"could not load the CA in {root}: {exc}") from None
    return ca_cert, ca_key


def _public_key_from_csr(csr_path: str | os.PathLike[str], name: str) -> Any:
    """The public key of a certificate signing request, checked: signature, key type."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        csr = x509.load_pem_x509_csr(read_pem(csr_path))
    except ValueError as exc:
        raise ConfigError(f"{csr_path} holds no valid certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise ConfigError(
            f"the signature of {csr_path} does not verify: the request was altered, or not signed "
            "with the key it carries"
        )
    key = csr.public_key()
    strong = (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256) or (
        isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    )
    if not strong:
        raise ConfigError(
            f"{csr_path}: the key must be an EC key of at least 256 bits (e.g. P-256) or an RSA "
            "key of at least 2048 bits; make one "
            f"with: openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            f"-keyout {name}.key -out {name}.csr -subj /CN={name}"
        )
    return key


def add_node_certificate(
    directory: str | os.PathLike[str],
    name: str,
    force: bool = False,
    *,
    csr: str | os.PathLike[str] | None = None,
    days: int = DEFAULT_DAYS,
) -> tuple[Path, Path | None]:
    """Issue node ``name`` a client certificate (CN = NAME, clientAuth) with the directory's CA,
    write it to ``DIR/nodes/NAME.pem`` and pin its SHA-256 fingerprint in ``credentials.json``,
    for a researcher with ``node_auth="certificate"``. The key is made here and written to
    ``DIR/nodes/NAME.key``, unless ``csr`` (a PEM certificate signing request the hospital made
    with its own key) gives the public key: then no private key exists outside the hospital, and
    the request's subject is ignored (the certificate names ``name``). ``force`` replaces the
    credential of an existing node (token or certificate).

    :returns: the certificate file, and the key file or None.
    """
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root, name, days = Path(directory), _check_name(name), _days(days)
    ca_cert, ca_key = _load_ca(root)
    public = _public_key_from_csr(csr, name) if csr is not None else None
    nodes = _node_entries(root, name, force)
    key = None
    if public is None:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(digital_signature=True), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path = None
    if key is not None:
        key_path = root / "nodes" / f"{name}.key"
        pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
        _write(key_path, pem, secret=True)
    cert_path = root / "nodes" / f"{name}.pem"
    _write(cert_path, cert.public_bytes(s.Encoding.PEM))
    nodes[name] = {"cert_sha256": cert.fingerprint(hashes.SHA256()).hex(), "created": _created()}
    _write_credentials(root / CREDENTIALS, nodes)
    return cert_path, key_path


def remove_node(directory: str | os.PathLike[str], name: str) -> None:
    """Forget node ``name``: its token or certificate is refused from now on, and the files the
    directory kept for it are removed."""
    root = Path(directory)
    nodes = _read_credentials(root / CREDENTIALS)
    if name not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        raise ConfigError(f"no node named {name!r} in {root / CREDENTIALS}; known nodes: {known}")
    del nodes[name]
    _write_credentials(root / CREDENTIALS, nodes)
    _delete_files(root, name)


def credentials_file(path: str | os.PathLike[str]) -> Path:
    """The ``credentials.json`` of a certs directory, or the credentials file ``path`` itself."""
    return Path(path) / CREDENTIALS if Path(path).is_dir() else Path(path)


def load_credentials(path: str | os.PathLike[str]) -> dict[str, str]:
    """Node name -> SHA-256 hex digest of its token, from a certs directory or credentials file
    (nodes that have a certificate instead are left out)."""
    entries = _read_credentials(credentials_file(path))
    return {name: entry["sha256"] for name, entry in entries.items() if "sha256" in entry}


def load_certificate_pins(path: str | os.PathLike[str]) -> dict[str, str]:
    """Node name -> SHA-256 fingerprint (hex) of its client certificate, from a certs directory
    or credentials file (nodes that have a token instead are left out)."""
    entries = _read_credentials(credentials_file(path))
    return {name: e["cert_sha256"] for name, e in entries.items() if "cert_sha256" in e}


def certificate_fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint (lowercase hex) of the first certificate in ``pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def check_certificate(pins: dict[str, str], pem: bytes) -> str | None:
    """The node whose pinned fingerprint is that of the certificate ``pem`` (as the TLS layer
    verified it), or None; in constant time over the entries, as :func:`check_token`."""
    try:
        return _match(pins, certificate_fingerprint(pem))
    except ValueError:
        return None


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of ``token``, as stored in ``credentials.json``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(credentials: dict[str, str], token: str) -> str | None:
    """The node whose digest matches ``token``, or None; compares in constant time with every
    entry, so that the time taken tells nothing about which node, if any, matched."""
    return _match(credentials, token_digest(token))


def _match(table: dict[str, str], digest: str) -> str | None:
    """The name whose entry is ``digest``, compared with every entry in constant time."""
    found = None
    for name, expected in table.items():
        if hmac.compare_digest(digest.encode("ascii"), expected.encode("utf-8")) and found is None:
            found = name
    return found


def read_pem(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a PEM file (certificate or key), checked to look like PEM."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist; check the path of the certificate or key"
        ) from None
    except OSError as exc:
        raise ConfigError(f"could not read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(
            f"{path} is not a PEM file (no '-----BEGIN' line); convert a DER file with "
            "`openssl x509 -inform der -in FILE -out FILE.pem` (or `openssl pkey` for a key)"
        )
    return data


def server_tls(
    directory_or_none: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> tuple[bytes, bytes]:
    """The server's (certificate chain PEM, key PEM), from a certs directory's ``server.pem`` and
    ``server.key``, or from explicit ``cert`` and ``key`` paths; checks that they match."""
    if (cert is None) != (key is None):
        raise ConfigError("give both the server certificate and its key, not only one of them")
    if cert is not None and directory_or_none is not None:
        raise ConfigError("give either a certs directory or a certificate and key, not both")
    if cert is None:
        if directory_or_none is None:
            raise ConfigError("TLS needs a certs directory or a server certificate and key")
        cert, key = Path(directory_or_none) / "server.pem", Path(directory_or_none) / "server.key"
        if not cert.exists():
            raise ConfigError(
                f"no server certificate in {directory_or_none}; create one with: "
                f"fedplug certs init --dir {directory_or_none}"
            )
    renew = "issue a new one with: fedplug certs server --dir DIR --host HOST"
    return _certificate_and_key(cert, key, "server", renew)


def node_tls(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """A node's client (certificate chain PEM, key PEM), checked that they match and that the
    certificate has not expired."""
    renew = "the researcher's operator issues a new one with: fedplug certs node NAME --force"
    return _certificate_and_key(cert, key, "node", renew)


def _certificate_and_key(
    cert: str | os.PathLike[str], key: str | os.PathLike[str], role: str, renew: str
) -> tuple[bytes, bytes]:
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as s

    cert_pem, key_pem = read_pem(cert), read_pem(key)
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise ConfigError(f"{cert} holds no valid certificate: {exc}") from None
    try:
        private = s.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"{key} is encrypted; gRPC needs an unencrypted key: openssl pkey -in {key} -out NEW"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{key} holds no valid private key: {exc}") from None
    spki = (s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(
            f"the key {key} does not belong to the certificate {cert}; give the key the "
            "certificate was issued for"
        )
    if leaf.not_valid_after_utc < datetime.now(UTC):
        raise ConfigError(
            f"the {role} certificate {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; {renew}"
        )
    return cert_pem, key_pem


def _describe(path: Path) -> dict[str, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    if not path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(read_pem(path))
    except ValueError as exc:
        raise ConfigError(f"{path} holds no valid certificate: {exc}") from None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(name.value) for name in sans]
    except x509.ExtensionNotFound:
        hosts = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": hosts,
        "not_valid_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


def describe_certs(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What a certs directory holds: CA and server certificates (None where absent), node names."""
    root = Path(directory)
    if not any((root / name).exists() for name in ("ca.pem", "server.pem", CREDENTIALS)):
        raise ConfigError(
            f"{root} is not a certs directory (no ca.pem, server.pem or {CREDENTIALS}); "
            f"create one with: fedplug certs init --dir {root}"
        )
    _require_cryptography()
    nodes = _read_credentials(root / CREDENTIALS) if (root / CREDENTIALS).exists() else {}
    return {
        "directory": str(root.resolve()),
        "ca": _describe(root / "ca.pem"),
        "server": _describe(root / "server.pem"),
        "nodes": sorted(nodes),
    }


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def certs_command(certs: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """TLS certificates and node credentials for the gRPC transport"""
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create a CA and the server certificate")
    server = actions.add_parser("server", help="issue a new server certificate with the CA")
    node = actions.add_parser(
        "node", help="create (or with --force replace) a node's token or client certificate"
    )
    remove = actions.add_parser("remove", help="revoke a node's token or certificate")
    listing = actions.add_parser("list", help="list the nodes with credentials")
    show = actions.add_parser("show", help="show the certificates and nodes")
    for action in (init, server, node, remove, listing, show):
        action.add_argument("--dir", default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    for action in (init, server, node):
        action.add_argument(
            "--days",
            type=_positive,
            default=DEFAULT_DAYS,
            help=f"validity in days (default: {DEFAULT_DAYS})",
        )
    hosts_help = "host name or IP address the nodes connect to (repeatable)"
    init.add_argument(
        "--host",
        dest="hosts",
        action="append",
        help=hosts_help + "; default: " + ", ".join(DEFAULT_HOSTS),
    )
    server.add_argument("--host", dest="hosts", action="append", required=True, help=hosts_help)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    for action in (node, remove):
        action.add_argument("name", help="node name, e.g. hospital-a")
    node.add_argument("--force", action="store_true", help="replace an existing credential")
    kind = node.add_mutually_exclusive_group()
    kind.add_argument(
        "--cert",
        action="store_true",
        help="a client certificate and key instead of a token (researcher: node_auth="
        '"certificate")',
    )
    kind.add_argument(
        "--csr",
        metavar="FILE",
        help="sign this certificate signing request from the hospital: a client certificate "
        "whose key never leaves the hospital",
    )
    for action in (listing, show):
        action.add_argument("--json", action="store_true", help="print JSON")
    return run_certs_command


def _print_cert(label: str, info: dict[str, Any] | None) -> None:
    if info is None:
        print(f"{label}: none")
        return
    print(f"{label}: {info['subject']} (issuer {info['issuer']})")
    print(f"  valid until {info['not_valid_after']}, SHA-256 {info['sha256']}")
    if info["sans"]:
        print(f"  hosts: {', '.join(info['sans'])}")


def _print_node(root: Path, args: argparse.Namespace) -> None:
    """``fedplug certs node``: make the credential, say what to hand over and the node.toml."""
    snippet = {"ca_cert": root / "ca.pem"}
    if args.cert or args.csr:
        cert_path, key_path = add_node_certificate(
            root, args.name, force=args.force, csr=args.csr, days=args.days
        )
        print(f"client certificate for node {args.name!r} written to {cert_path.resolve()}")
        if key_path is None:
            print("hand it and ca.pem to the hospital; its key never left the hospital")
            snippet |= {"cert_file": cert_path, "key_file": Path(f"{args.name}.key")}
        else:
            print(
                f"its key is in {key_path.resolve()}: hand both and ca.pem to the hospital over "
                "a trusted channel, then delete the key here"
            )
            snippet |= {"cert_file": cert_path, "key_file": key_path}
        print('the researcher must serve with node_auth="certificate"')
    else:
        _, token_path = add_node(root, args.name, force=args.force)
        print(f"token for node {args.name!r} written to {token_path.resolve()}")
        print(
            "hand it and ca.pem to the hospital over a trusted channel, then delete this "
            "copy: the researcher keeps only its digest"
        )
        snippet["token_file"] = token_path
    if (root / "ca.pem").exists():
        fingerprint = describe_certs(root)["ca"]["sha256"]
        print(f"the hospital can check ca.pem by its SHA-256 fingerprint: {fingerprint}")
    print("\nin the node's node.toml (adjust the paths to where the hospital keeps them):")
    print("[researcher]")
    for key, path in snippet.items():
        print(f"{key} = {json.dumps(str(path.resolve() if path.exists() else path))}")


def run_certs_command(args: argparse.Namespace) -> int:
    """Run a parsed ``fedplug certs`` command; 0, or 2 with the error on stderr."""
    root = Path(args.dir)
    try:
        if args.certs_command in ("init", "server"):
            hosts = args.hosts or DEFAULT_HOSTS
            if args.certs_command == "init":
                init_certs(root, hosts, args.days, force=args.force)
            else:
                server_certificate(root, hosts, args.days, force=True)
            info = describe_certs(root)
            _print_cert("CA", info["ca"])
            _print_cert("server", info["server"])
            if args.certs_command == "init":
                print(f"next, for each hospital: fedplug certs node NAME --dir {root}")
            else:
                print(
                    "nodes keep their ca.pem; restart a running server to use the new certificate"
                )
        elif args.certs_command == "node":
            _print_node(root, args)
        elif args.certs_command == "remove":
            remove_node(root, args.name)
            print(f"removed node {args.name!r}; restart a running server to refuse its token")
        elif args.certs_command == "list":
            nodes = _read_credentials(root / CREDENTIALS)
            listing = {
                name: {
                    "credential": "certificate" if "cert_sha256" in entry else "token",
                    "created": entry.get("created"),
                }
                for name, entry in nodes.items()
            }
            if args.json:
                print(json.dumps(listing, indent=2))
            else:
                for name, entry in listing.items():
                    print(f"{name:32} {entry['credential']:12} created {entry['created']}")
                if not listing:
                    print(f"no nodes; add one with: fedplug certs node NAME --dir {root}")
        else:
            info = describe_certs(root)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"certs directory: {info['directory']}")
                _print_cert("CA", info["ca"])
                _print_cert("server", info["server"])
                print(f"nodes: {', '.join(info['nodes']) or 'none'}")
    except FedplugError as exc:
        print(f"fedplug certs: error: {exc}", file=sys.stderr)
        return 2
    return 0
