"""``fedplug_grpc.certs``: the CA and server certificate, a real TLS handshake with gRPC, node tokens,
and the ``fedplug certs`` command."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest

from fedplug.cli import build_parser
from fedplug.errors import ConfigError
from fedplug_grpc.certs import (
    add_node,
    add_node_certificate,
    certificate_fingerprint,
    check_certificate,
    check_token,
    describe_certs,
    init_certs,
    load_certificate_pins,
    load_credentials,
    node_tls,
    read_pem,
    remove_node,
    server_certificate,
    server_tls,
    token_digest,
)

grpc = pytest.importorskip("grpc")
x509 = pytest.importorskip("cryptography.x509")
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return init_certs(tmp_path / "certs")


# --- the CA and the server certificate ------------------------------------------------------


def test_init_creates_the_files_with_private_keys(tmp_path):
    root = init_certs(tmp_path / "new" / "certs")
    assert root == tmp_path / "new" / "certs"
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        assert (root / name).is_file()
    assert mode(root / "ca.key") == 0o600
    assert mode(root / "server.key") == 0o600
    assert not list(root.glob(".*.tmp")), "temporary files should be renamed into place"


def test_the_ca_is_a_ca_and_signs_the_server_certificate(certs):
    ca, server = load_cert(certs / "ca.pem"), load_cert(certs / "server.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"

    assert server.issuer == ca.subject
    ca.public_key().verify(
        server.signature,
        server.tbs_certificate_bytes,
        ec.ECDSA(server.signature_hash_algorithm),
    )
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_a_certificate_from_another_ca_does_not_verify(tmp_path):
    first, second = init_certs(tmp_path / "a"), init_certs(tmp_path / "b")
    other_ca, server = load_cert(second / "ca.pem"), load_cert(first / "server.pem")
    with pytest.raises(InvalidSignature):
        other_ca.public_key().verify(
            server.signature,
            server.tbs_certificate_bytes,
            ec.ECDSA(server.signature_hash_algorithm),
        )


def test_the_server_certificate_names_the_given_hosts(tmp_path):
    hosts = ["researcher.example.org", "10.0.0.5", "::1", "localhost"]
    root = init_certs(tmp_path / "certs", hosts=hosts, days=30)
    server = load_cert(root / "server.pem")
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["researcher.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 29 < lifetime.days <= 30


def test_init_refuses_to_overwrite_without_force(certs):
    before = (certs / "ca.pem").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds ca\.pem.*--force"):
        init_certs(certs)
    assert (certs / "ca.pem").read_bytes() == before
    init_certs(certs, force=True)
    assert (certs / "ca.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("hosts", "days", "match"),
    [
        (["https://researcher.example.org:50051"], 10, "neither a DNS name nor an IP address"),
        (["[::1]"], 10, "neither a DNS name nor an IP address"),
        (["10.0.0.256"], 10, "neither a DNS name nor an IP address"),
        ([""], 10, "neither a DNS name nor an IP address"),
        ([], 10, "no hosts given"),
        (["localhost"], 0, "days must be a positive integer, got 0"),
    ],
)
def test_init_refuses_bad_hosts_and_days(tmp_path, hosts, days, match):
    with pytest.raises(ConfigError, match=match):
        init_certs(tmp_path / "certs", hosts=hosts, days=days)
    assert not (tmp_path / "certs" / "ca.key").exists()


def test_server_certificate_reissues_with_the_same_ca(certs):
    ca_before = (certs / "ca.pem").read_bytes()
    key_before = (certs / "server.key").read_bytes()
    with pytest.raises(ConfigError, match=r"server\.pem exists"):
        server_certificate(certs, hosts=["researcher.example.org"])
    server_certificate(certs, hosts=["researcher.example.org"], force=True)
    assert (certs / "ca.pem").read_bytes() == ca_before
    assert (certs / "server.key").read_bytes() != key_before
    assert mode(certs / "server.key") == 0o600
    ca, server = load_cert(certs / "ca.pem"), load_cert(certs / "server.pem")
    ca.public_key().verify(
        server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm)
    )
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["researcher.example.org"]


def test_server_certificate_needs_a_ca(tmp_path):
    with pytest.raises(ConfigError, match=r"has no CA.*fedplug certs init"):
        server_certificate(tmp_path)


# --- a real TLS handshake -------------------------------------------------------------------


@pytest.fixture
def tls_server(certs):
    """A gRPC server on 127.0.0.1 with the certs directory's server certificate; its port."""
    cert, key = server_tls(certs)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"Echo": echo}),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    assert port > 0
    server.start()
    yield port
    server.stop(None)


def echo(port: int, ca_pem: bytes, host: str = "localhost", override: str | None = None) -> bytes:
    options = [("grpc.ssl_target_name_override", override)] if override else []
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
        return channel.unary_unary("/t.S/Echo")(b"hi", timeout=10)


def test_a_client_trusting_the_ca_completes_the_handshake(certs, tls_server):
    assert echo(tls_server, read_pem(certs / "ca.pem")) == b"hi"
    assert echo(tls_server, read_pem(certs / "ca.pem"), host="127.0.0.1") == b"hi"


def test_a_client_trusting_another_ca_is_refused(tmp_path, tls_server):
    other = init_certs(tmp_path / "other")
    with pytest.raises(grpc.RpcError) as info:
        echo(tls_server, read_pem(other / "ca.pem"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_host_name_not_in_the_certificate_is_refused(certs, tls_server):
    with pytest.raises(grpc.RpcError) as info:
        echo(tls_server, read_pem(certs / "ca.pem"), override="other.example")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_reissued_certificate_is_accepted_under_its_new_host_name(certs):
    server_certificate(certs, hosts=["other.example", "127.0.0.1"], force=True)
    cert, key = server_tls(certs)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    echo_handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    handler = grpc.method_handlers_generic_handler("t.S", {"Echo": echo_handler})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        ca_pem = read_pem(certs / "ca.pem")
        assert echo(port, ca_pem, override="other.example") == b"hi"
        with pytest.raises(grpc.RpcError):
            echo(port, ca_pem, host="localhost")  # no longer in the certificate
    finally:
        server.stop(None)


# --- node credentials -----------------------------------------------------------------------


def test_add_node_check_token_and_load_credentials_round_trip(tmp_path):
    token, path = add_node(tmp_path, "hospital-a")
    assert path == tmp_path / "nodes" / "hospital-a.token"
    assert path.read_text() == token
    assert mode(path) == 0o600
    assert len(token) >= 40
    document = json.loads((tmp_path / "credentials.json").read_text())
    assert document["fedplug_credentials"] == 1
    assert document["nodes"]["hospital-a"]["sha256"] == token_digest(token)
    assert "created" in document["nodes"]["hospital-a"]
    assert token not in (tmp_path / "credentials.json").read_text()

    credentials = load_credentials(tmp_path)
    assert credentials == {"hospital-a": token_digest(token)}
    assert load_credentials(tmp_path / "credentials.json") == credentials
    assert check_token(credentials, token) == "hospital-a"
    assert check_token(credentials, token + "x") is None
    assert check_token(credentials, "") is None
    assert check_token({}, token) is None


def test_each_node_is_known_by_its_own_token(tmp_path):
    tokens = {name: add_node(tmp_path, name)[0] for name in ("a", "b.site", "c_3")}
    assert len(set(tokens.values())) == 3
    credentials = load_credentials(tmp_path)
    assert sorted(credentials) == ["a", "b.site", "c_3"]
    for name, token in tokens.items():
        assert check_token(credentials, token) == name


def test_token_digest_is_sha256_hex():
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_add_node_refuses_an_existing_name_unless_forced(tmp_path):
    old, _ = add_node(tmp_path, "hospital-a")
    with pytest.raises(ConfigError, match=r"'hospital-a' already has a token.*--force"):
        add_node(tmp_path, "hospital-a")
    assert check_token(load_credentials(tmp_path), old) == "hospital-a"
    new, path = add_node(tmp_path, "hospital-a", force=True)
    credentials = load_credentials(tmp_path)
    assert check_token(credentials, old) is None
    assert check_token(credentials, new) == "hospital-a"
    assert path.read_text() == new


@pytest.mark.parametrize(
    "name", ["", "-a", ".hidden", "a/b", "../x", "a b", "é", "a" * 65, "a\n", None]
)
def test_bad_node_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid node name"):
        add_node(tmp_path, name)
    assert not (tmp_path / "credentials.json").exists()


def test_a_64_character_name_is_accepted(tmp_path):
    add_node(tmp_path, "a" * 64)
    assert list(load_credentials(tmp_path)) == ["a" * 64]


def test_remove_node_revokes_the_token(tmp_path):
    token_a, path_a = add_node(tmp_path, "hospital-a")
    token_b, _ = add_node(tmp_path, "hospital-b")
    remove_node(tmp_path, "hospital-a")
    assert not path_a.exists()
    credentials = load_credentials(tmp_path)
    assert check_token(credentials, token_a) is None
    assert check_token(credentials, token_b) == "hospital-b"
    with pytest.raises(ConfigError, match=r"no node named 'hospital-a'.*known nodes: hospital-b"):
        remove_node(tmp_path, "hospital-a")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "could not read the credentials file"),
        ("[]", "not a fedplug credentials file"),
        ('{"nodes": {}}', "not a fedplug credentials file"),
        ('{"fedplug_credentials": 1, "nodes": []}', "not a fedplug credentials file"),
        ('{"fedplug_credentials": 1, "nodes": {"a": {"sha256": "xyz"}}}', "'a' is malformed"),
        ('{"fedplug_credentials": 1, "nodes": {"a": "0"}}', "'a' is malformed"),
        ('{"fedplug_credentials": 1, "nodes": {"a": {"created": "x"}}}', "'a' is malformed"),
        ('{"fedplug_credentials": 1, "nodes": {"a": {"cert_sha256": "AB"}}}', "'a' is malformed"),
        ('{"fedplug_credentials": 1, "nodes": {"../a": {"sha256": "' + "0" * 64 + '"}}}', "'../a'"),
    ],
)
def test_malformed_credentials_are_refused(tmp_path, content, match):
    (tmp_path / "credentials.json").write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_credentials(tmp_path)


def test_missing_credentials_say_how_to_create_them(tmp_path):
    with pytest.raises(ConfigError, match=r"no credentials file.*fedplug certs node"):
        load_credentials(tmp_path)


# --- client certificates (mutual TLS) -------------------------------------------------------


def csr_for(key, cn: str = "ignored") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name)
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tampered(csr_pem: bytes) -> bytes:
    """The request with its subject changed after signing."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    at = der.index(b"ignored")
    der[at : at + 7] = b"IGNORED"
    body = base64.encodebytes(bytes(der))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


def test_a_node_certificate_is_a_client_certificate_of_the_ca_and_is_pinned(certs):
    cert_path, key_path = add_node_certificate(certs, "hospital-a", days=30)
    assert (cert_path, key_path) == (certs / "nodes/hospital-a.pem", certs / "nodes/hospital-a.key")
    assert mode(key_path) == 0o600
    cert, ca = load_cert(cert_path), load_cert(certs / "ca.pem")
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    pins = load_certificate_pins(certs)
    assert pins == {"hospital-a": cert.fingerprint(hashes.SHA256()).hex()}
    assert load_credentials(certs) == {}  # no token
    assert check_certificate(pins, cert_path.read_bytes()) == "hospital-a"
    assert node_tls(cert_path, key_path) == (cert_path.read_bytes(), key_path.read_bytes())


def test_only_the_pinned_certificate_is_the_node_s(certs):
    add_node_certificate(certs, "hospital-a")
    first = (certs / "nodes/hospital-a.pem").read_bytes()
    add_node_certificate(certs, "hospital-b")
    with pytest.raises(ConfigError, match="'hospital-a' already has a certificate"):
        add_node_certificate(certs, "hospital-a")
    add_node_certificate(certs, "hospital-a", force=True)  # reissued: the old one is refused
    second = (certs / "nodes/hospital-a.pem").read_bytes()
    pins = load_certificate_pins(certs)
    assert check_certificate(pins, first) is None
    assert check_certificate(pins, second) == "hospital-a"
    assert check_certificate(pins, (certs / "nodes/hospital-b.pem").read_bytes()) == "hospital-b"
    assert check_certificate(pins, (certs / "server.pem").read_bytes()) is None
    assert check_certificate(pins, b"not a certificate") is None
    assert certificate_fingerprint(second) == pins["hospital-a"]


def test_a_token_and_a_certificate_replace_each_other(certs):
    token, token_path = add_node(certs, "hospital-a")
    with pytest.raises(ConfigError, match="'hospital-a' already has a token"):
        add_node_certificate(certs, "hospital-a")
    cert_path, _ = add_node_certificate(certs, "hospital-a", force=True)
    assert not token_path.exists()
    assert check_token(load_credentials(certs), token) is None
    add_node(certs, "hospital-a", force=True)
    assert not cert_path.exists() and not (certs / "nodes/hospital-a.key").exists()
    assert load_certificate_pins(certs) == {}


def test_remove_node_revokes_the_certificate_and_deletes_its_files(certs):
    cert_path, key_path = add_node_certificate(certs, "hospital-a")
    remove_node(certs, "hospital-a")
    assert not cert_path.exists() and not key_path.exists()
    assert load_certificate_pins(certs) == {}


def test_a_signing_request_keeps_the_key_at_the_hospital(certs, tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "h.csr").write_bytes(csr_for(key, cn="whatever-the-hospital-wrote"))
    cert_path, key_path = add_node_certificate(certs, "hospital-a", csr=tmp_path / "h.csr")
    assert key_path is None and not (certs / "nodes/hospital-a.key").exists()
    cert = load_cert(cert_path)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "h.key").write_bytes(key_pem)
    assert node_tls(cert_path, tmp_path / "h.key")[1] == key_pem


def test_bad_signing_requests_are_refused_before_anything_is_written(certs, tmp_path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.csr").write_bytes(csr_for(weak))
    (tmp_path / "p192.csr").write_bytes(csr_for(ec.generate_private_key(ec.SECP192R1())))
    forged = tampered(csr_for(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "forged.csr").write_bytes(forged)
    (tmp_path / "junk.csr").write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    for name, match in (
        ("weak.csr", "at least 2048 bits"),
        ("p192.csr", "EC key of at least 256 bits"),
        ("forged.csr", "signature of .* does not verify"),
        ("junk.csr", "holds no valid certificate signing request"),
    ):
        with pytest.raises(ConfigError, match=match):
            add_node_certificate(certs, "hospital-a", csr=tmp_path / name)
    assert not (certs / "credentials.json").exists()


def test_node_tls_refuses_a_foreign_key_and_a_certificate_needs_a_ca(certs, tmp_path):
    cert_a, _ = add_node_certificate(certs, "hospital-a")
    _, key_b = add_node_certificate(certs, "hospital-b")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        node_tls(cert_a, key_b)
    with pytest.raises(ConfigError, match="has no CA"):
        add_node_certificate(tmp_path, "hospital-a")


# --- PEM files and the server's TLS material ------------------------------------------------


def test_read_pem_refuses_missing_and_non_pem_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_pem(tmp_path / "missing.pem")
    (tmp_path / "cert.der").write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(ConfigError, match="not a PEM file"):
        read_pem(tmp_path / "cert.der")


def test_server_tls_from_a_directory_and_from_explicit_paths(certs):
    expected = ((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes())
    assert server_tls(certs) == expected
    assert server_tls(cert=certs / "server.pem", key=str(certs / "server.key")) == expected


def test_server_tls_refuses_a_key_that_does_not_match(tmp_path):
    first, second = init_certs(tmp_path / "a"), init_certs(tmp_path / "b")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        server_tls(cert=first / "server.pem", key=second / "server.key")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        server_tls(cert=first / "server.pem", key=first / "ca.key")


def test_server_tls_needs_both_files(tmp_path, certs):
    with pytest.raises(ConfigError, match="certs directory or a server certificate"):
        server_tls()
    with pytest.raises(ConfigError, match="give both"):
        server_tls(cert=certs / "server.pem")
    with pytest.raises(ConfigError, match="not both"):
        server_tls(certs, cert=certs / "server.pem", key=certs / "server.key")
    with pytest.raises(ConfigError, match=r"no server certificate in .*fedplug certs init"):
        server_tls(tmp_path / "empty")
    (tmp_path / "key-missing").mkdir()
    (tmp_path / "key-missing" / "server.pem").write_bytes((certs / "server.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"server\.key does not exist"):
        server_tls(tmp_path / "key-missing")


def test_describe_certs(certs):
    add_node(certs, "hospital-b")
    add_node(certs, "hospital-a")
    info = describe_certs(certs)
    ca = load_cert(certs / "ca.pem")
    assert info["ca"]["subject"] == ca.subject.rfc4514_string()
    assert info["ca"]["sha256"].replace(":", "").lower() == ca.fingerprint(hashes.SHA256()).hex()
    assert info["server"]["issuer"] == info["ca"]["subject"]
    assert info["server"]["sans"] == ["localhost", "127.0.0.1"]
    assert info["server"]["not_valid_after"].startswith(
        str(load_cert(certs / "server.pem").not_valid_after_utc.year)
    )
    assert info["nodes"] == ["hospital-a", "hospital-b"]
    json.dumps(info)  # serializable for --json


def test_importing_the_module_does_not_import_cryptography():
    code = "import sys, fedplug_grpc.certs; print('cryptography' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- the command ----------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    """``fedplug ARGV`` through the command line fedplug-grpc's plugin registers ``certs`` in."""
    args = build_parser().parse_args(argv)
    assert args.command == "certs"
    return args.run(args)


def test_cli_init_with_hosts(tmp_path, capsys):
    root = tmp_path / "certs"
    argv = ["certs", "init", "--dir", str(root), "--host", "r.example.org", "--host", "10.1.2.3"]
    assert run([*argv, "--days", "10"]) == 0
    sans = load_cert(root / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.DNSName) == ["r.example.org"]  # defaults replaced
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    out = capsys.readouterr().out
    assert "r.example.org, 10.1.2.3" in out
    assert describe_certs(root)["ca"]["sha256"] in out


def test_cli_init_defaults_and_server(tmp_path):
    root = tmp_path / "certs"
    assert run(["certs", "init", "--dir", str(root)]) == 0
    assert describe_certs(root)["server"]["sans"] == ["localhost", "127.0.0.1"]
    ca_before = (root / "ca.pem").read_bytes()
    assert run(["certs", "server", "--dir", str(root), "--host", "new.example"]) == 0
    assert (root / "ca.pem").read_bytes() == ca_before
    assert describe_certs(root)["server"]["sans"] == ["new.example"]


def test_cli_node_prints_the_snippet_but_not_the_token(certs, capsys):
    assert run(["certs", "node", "hospital-a", "--dir", str(certs)]) == 0
    out = capsys.readouterr().out
    token_path = (certs / "nodes" / "hospital-a.token").resolve()
    token = token_path.read_text()
    assert token not in out
    assert check_token(load_credentials(certs), token) == "hospital-a"
    lines = out.splitlines()
    assert "[researcher]" in lines
    assert f'ca_cert = "{(certs / "ca.pem").resolve()}"' in lines
    assert f'token_file = "{token_path}"' in lines
    assert describe_certs(certs)["ca"]["sha256"] in out  # to check ca.pem out of band


def test_cli_node_cert_and_csr(certs, tmp_path, capsys):
    assert run(["certs", "node", "hospital-a", "--cert", "--dir", str(certs)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f'cert_file = "{(certs / "nodes/hospital-a.pem").resolve()}"' in lines
    assert f'key_file = "{(certs / "nodes/hospital-a.key").resolve()}"' in lines
    assert not any(line.startswith("token_file") for line in lines)
    assert 'node_auth="certificate"' in out
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "b.csr").write_bytes(csr_for(key))
    argv = ["certs", "node", "hospital-b", "--csr", str(tmp_path / "b.csr"), "--days", "9"]
    assert run([*argv, "--dir", str(certs)]) == 0
    out = capsys.readouterr().out
    assert "its key never left the hospital" in out and 'key_file = "hospital-b.key"' in out
    assert sorted(load_certificate_pins(certs)) == ["hospital-a", "hospital-b"]
    assert run(["certs", "list", "--dir", str(certs), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {name: entry["credential"] for name, entry in listing.items()} == {
        "hospital-a": "certificate",
        "hospital-b": "certificate",
    }


def test_cli_list_show_and_remove(certs, capsys):
    run(["certs", "node", "hospital-a", "--dir", str(certs)])
    run(["certs", "node", "hospital-b", "--dir", str(certs)])
    capsys.readouterr()
    assert run(["certs", "list", "--dir", str(certs), "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)) == ["hospital-a", "hospital-b"]
    assert run(["certs", "remove", "hospital-a", "--dir", str(certs)]) == 0
    capsys.readouterr()
    assert run(["certs", "list", "--dir", str(certs)]) == 0
    out = capsys.readouterr().out
    assert "hospital-b" in out
    assert "hospital-a" not in out
    assert run(["certs", "show", "--dir", str(certs), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["nodes"] == ["hospital-b"]
    assert shown == describe_certs(certs)
    assert run(["certs", "show", "--dir", str(certs)]) == 0
    assert "nodes: hospital-b" in capsys.readouterr().out
    assert run(["certs", "remove", "hospital-b", "--dir", str(certs)]) == 0
    capsys.readouterr()
    assert run(["certs", "list", "--dir", str(certs)]) == 0
    assert capsys.readouterr().out.startswith("no nodes; add one with: fedplug certs node")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["init"], "already holds"),
        (["node", "../evil"], "invalid node name '../evil'"),
        (["remove", "nobody"], "no node named 'nobody' in"),
        (["node", "hospital-a"], "'hospital-a' already has a token"),
    ],
)
def test_cli_errors_return_2_with_the_message_on_stderr(certs, capsys, argv, match):
    add_node(certs, "hospital-a")
    assert run(["certs", argv[0], *argv[1:], "--dir", str(certs)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fedplug certs: error: ")
    assert match in captured.err
    assert captured.out == ""


def test_cli_show_of_an_empty_directory_is_an_error(tmp_path, capsys):
    assert run(["certs", "show", "--dir", str(tmp_path)]) == 2
    assert "is not a certs directory" in capsys.readouterr().err


def test_cli_refuses_a_non_positive_days(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(["certs", "init", "--dir", str(tmp_path), "--days", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
