"""Nodes known by client certificates (``node_auth="certificate"``, mutual TLS): real node
processes serve a round; a revoked, foreign, missing or borrowed certificate is refused."""

from __future__ import annotations

import importlib.util
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedplug import ConfigError, Experiment
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug_grpc.certs import add_node, add_node_certificate, init_certs, node_tls, remove_node
from fedplug_grpc.deploy import NodeSpec, make_certs, prepare_nodes

grpc = pytest.importorskip("grpc")

from fedplug_grpc.transport import GrpcTransport, NodeClient  # noqa: E402

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_mtls", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support
_spec.loader.exec_module(support)

TAGS = support.TAGS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = init_certs(tmp_path_factory.mktemp("mtls") / "certs")
    for name in ("hosp-a", "hosp-b", "revoked"):
        add_node_certificate(root, name)
    add_node(root, "token-node")
    return root


@pytest.fixture(scope="module")
def revoked(certs: Path) -> tuple[bytes, bytes]:
    """The certificate and key of node "revoked", which the operator then removed."""
    pair = node_tls(certs / "nodes/revoked.pem", certs / "nodes/revoked.key")
    remove_node(certs, "revoked")
    return pair


@pytest.fixture(scope="module")
def transport(certs: Path, revoked: Any) -> Iterator[GrpcTransport]:
    server = GrpcTransport("127.0.0.1:0", tls=certs, node_auth="certificate")
    try:
        yield server
    finally:
        server.close()


def client_for(
    transport: GrpcTransport,
    certs: Path,
    name: str,
    client_cert: tuple[bytes, bytes] | None,
    token: str = "",
) -> tuple[support.FakeNode, NodeClient]:
    fake = support.FakeNode(name, lambda payload: b"", TAGS)
    client = NodeClient(
        fake,
        f"localhost:{transport.port}",
        token,
        ca_cert=(certs / "ca.pem").read_bytes(),
        client_cert=client_cert,
        reconnect_s=0.2,
        max_reconnect_s=0.5,
    )
    return fake, client


def own(certs: Path, name: str) -> tuple[bytes, bytes]:
    return node_tls(certs / f"nodes/{name}.pem", certs / f"nodes/{name}.key")


def run_briefly(client: NodeClient, seconds: float) -> Any:
    """Run ``client`` for at most ``seconds``; its exit code, or None when it was still
    retrying (then stopped)."""
    future = support.in_thread(client.run)
    try:
        return future.result(timeout=seconds)
    except TimeoutError:
        return None
    finally:
        client.stop()
        future.result(timeout=30)


def test_a_node_with_its_pinned_certificate_joins(transport, certs):
    _, client = client_for(transport, certs, "hosp-a", own(certs, "hosp-a"))
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        transport.wait_for_nodes(TAGS, names=["hosp-a"], timeout=60)
        assert transport.node_tags()["hosp-a"] == [TAGS]
    finally:
        client.stop()
        thread.join(30)


def test_a_revoked_certificate_is_refused_for_good(transport, certs, revoked):
    _, client = client_for(transport, certs, "revoked", revoked)
    assert run_briefly(client, 60) == 3  # UNAUTHENTICATED: no retry
    assert client.sessions == 0
    assert any("unknown node certificate" in reason for reason in transport.refused)


def test_a_certificate_names_one_node_only(transport, certs):
    _, client = client_for(transport, certs, "hosp-b", own(certs, "hosp-a"))
    assert run_briefly(client, 60) == 3  # PERMISSION_DENIED
    expected = "credential of 'hosp-a' used by a node named 'hosp-b'"
    assert any(expected in reason for reason in transport.refused), transport.refused
    assert "hosp-b" not in transport.node_tags()


def test_no_certificate_or_one_from_another_ca_fails_the_handshake(transport, certs, tmp_path):
    other = init_certs(tmp_path / "other")
    add_node_certificate(other, "hosp-a")  # same name, another CA
    token = (certs / "nodes/token-node.token").read_text()
    for name, cert, tok in (("hosp-a", own(other, "hosp-a"), ""), ("token-node", None, token)):
        _, client = client_for(transport, certs, name, cert, token=tok)
        assert run_briefly(client, 3) is None  # still retrying: the TLS handshake fails
        assert client.sessions == 0, name
    assert "token-node" not in transport.node_tags()


def test_a_token_researcher_does_not_ask_for_certificates(certs):
    server = GrpcTransport("127.0.0.1:0", tls=certs)  # node_auth="token"
    try:
        token = (certs / "nodes/token-node.token").read_text()
        # a node configured with both: the token identifies it, the certificate is not requested
        _, client = client_for(server, certs, "token-node", own(certs, "hosp-a"), token=token)
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        try:
            server.wait_for_nodes(TAGS, names=["token-node"], timeout=60)
        finally:
            client.stop()
            thread.join(30)
        _, client = client_for(server, certs, "hosp-a", own(certs, "hosp-a"))
        assert run_briefly(client, 60) == 3  # a certificate but no token: refused, and told why
        assert any("no node token" in reason for reason in server.refused), server.refused
    finally:
        server.close()


def test_certificate_settings_are_checked(certs, tmp_path):
    with pytest.raises(ConfigError, match="node_auth must be 'token' or 'certificate'"):
        GrpcTransport("127.0.0.1:0", tls=certs, node_auth="password")
    with pytest.raises(ConfigError, match="mutual TLS: give tls="):
        GrpcTransport("127.0.0.1:0", node_auth="certificate")
    pair = (certs / "server.pem", certs / "server.key")
    with pytest.raises(ConfigError, match="needs client_ca="):
        GrpcTransport("127.0.0.1:0", tls=pair, node_auth="certificate")
    with pytest.raises(ConfigError, match="client_ca is used only with"):
        GrpcTransport("127.0.0.1:0", tls=certs, client_ca=certs / "ca.pem")
    with pytest.raises(ConfigError, match="needs TLS"):
        NodeClient(support.FakeNode("x", bytes, TAGS), "localhost:1", client_cert=(b"c", b"k"))


def test_node_processes_with_certificates_serve_an_experiment(tmp_path):
    specs = []
    for seed, name in enumerate(("clinic-1", "clinic-2")):
        x, y = support.separable(60, seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        dataset = (f"data-{name}", "numpy", TAGS, {"path": str(tmp_path / f"{name}.npz")})
        quick = {"reconnect_s": 0.2, "max_reconnect_s": 1.0}
        specs.append(NodeSpec(name, [dataset], node={"approval": False}, researcher=quick))
    certs = make_certs(tmp_path, [spec.name for spec in specs], node_auth="certificate")
    port = support.free_port()
    deployment = prepare_nodes(tmp_path / "nodes", specs, f"localhost:{port}", certs)
    researcher = tomllib.loads(deployment.configs["clinic-1"].read_text())["researcher"]
    assert researcher["cert_file"].endswith("clinic-1.pem") and "token_file" not in researcher
    deployment.start_all()  # the nodes retry until the server is up
    try:
        # the keywords of the release before transports were plugins still work, with a warning
        with pytest.warns(DeprecationWarning, match="transport_options="):
            exp = Experiment(
                tags=TAGS,
                training_plan=LogisticRegressionPlan,
                model_args={"n_features": support.N_FEATURES},
                training_args={"batch_size": 16, "epochs": 1},
                round_limit=2,
                seed=0,
                transport="grpc",
                server=f"127.0.0.1:{port}",
                tls=certs,
                node_auth="certificate",
                wait_nodes=["clinic-1", "clinic-2"],
                wait_timeout=support.STARTUP_S,
                checkpoint_dir=tmp_path / "checkpoints",
                progress=False,
            )
        with exp:
            assert exp.transport.node_auth == "certificate"
            summary = support.run_round(exp)
        assert sorted(summary["train_loss"]) == ["clinic-1", "clinic-2"]
        assert all(np.isfinite(v).all() for v in exp.global_params.values())
        # a resumed experiment serves the nodes the same way
        with Experiment.load_checkpoint(tmp_path / "checkpoints") as resumed:
            assert resumed.transport.node_auth == "certificate"
            assert sorted(support.run_round(resumed)["train_loss"]) == ["clinic-1", "clinic-2"]
    finally:
        support.stop_processes(deployment)
