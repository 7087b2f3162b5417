"""docs/deployment.md: its shell commands run as written, and its node.toml is a valid config.

The operator's commands (sections 1 and 2) run in a fresh folder, one after the other, as
``python -m fedplug``; between them the hospital receives ``ca.pem`` and its token, as the guide
says. ``fedplug node start`` is the one command left out here: it serves until stopped, against
the guide's example host; tests/grpc starts real node processes. The plan commands run against a
plan recorded as pending with the guide's example hash prefix.
"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedplug_grpc.nodeconfig import load_node_config
from fedplug_grpc.nodestore import NodeStore

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"


def _blocks(lang: str) -> list[str]:
    """The guide's ``lang`` code blocks, also those indented in a list item (dedented)."""
    blocks, current, inside, indent = [], [], None, 0
    for line in GUIDE.read_text().splitlines():
        if line.lstrip().startswith("```"):
            if inside is None:
                inside, indent = line.strip()[3:].strip(), len(line) - len(line.lstrip())
                current = []
            else:
                if inside == lang:
                    blocks.append("\n".join(current))
                inside = None
        elif inside is not None:
            current.append(line[indent:])
    return blocks


def _commands(block: str) -> list[list[str]]:
    """The block's commands (continuation lines joined), comments dropped, as argv lists."""
    text = block.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[0] == "fedplug", argv
    result = subprocess.run(
        [sys.executable, "-m", "fedplug", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def bash_blocks() -> list[list[list[str]]]:
    blocks = [_commands(block) for block in _blocks("bash")]
    assert len(blocks) == 6, "the guide's shell blocks changed: update this test"
    return blocks


def test_the_operator_and_hospital_commands_run_as_written(tmp_path, bash_blocks):
    certs_block, _mtls, _csr, node_block, plan_block, _demo = bash_blocks
    for argv in certs_block:
        _run(argv, tmp_path)
    listing = _run(["fedplug", "certs", "list", "--dir", "certs"], tmp_path).stdout
    assert "hospital-1" in listing and "hospital-2" in listing
    # what the operator hands over to hospital-1
    shutil.copy(tmp_path / "certs" / "ca.pem", tmp_path / "ca.pem")
    shutil.copy(tmp_path / "certs" / "nodes" / "hospital-1.token", tmp_path / "hospital-1.token")
    (tmp_path / "data").mkdir()
    rows = ["age,size,label"] + [f"{40 + i},{i % 7}.5,{i % 2}" for i in range(30)]
    (tmp_path / "data" / "cohort.csv").write_text("\n".join(rows) + "\n")

    started = [argv for argv in node_block if argv[1:3] == ["node", "start"]]
    assert len(started) == 1  # runs until stopped: covered by tests/grpc
    for argv in node_block:
        if argv not in started:
            output = _run(argv, tmp_path).stdout
    assert "breast-cancer" in output  # `dataset list` shows the dataset just added
    config = load_node_config(tmp_path / "node.toml")
    assert config.name == "hospital-1" and config.address == "fl.example.org:50051"
    assert config.token == (tmp_path / "hospital-1.token").read_text().strip()
    (record,) = NodeStore(config.database).datasets()
    assert (record.type, record.tags, record.options["target"]) == (
        "csv",
        ["breast-cancer"],
        "label",
    )

    sha = "4be1c0de" + "0" * 56
    NodeStore(config.database).record_plan(sha, "MyPlan", "class MyPlan:\n    pass\n")
    for argv in plan_block:
        _run(argv, tmp_path)
    # the block approves, then rejects: the last decision holds
    assert NodeStore(config.database).plan_status(sha) == "rejected"


def test_the_client_certificate_commands_and_config_work_as_written(tmp_path, bash_blocks):
    certs_block, mtls_block, csr_block, *_ = bash_blocks
    _run(certs_block[0], tmp_path)  # fedplug certs init
    (openssl,) = csr_block  # what hospital-2 runs: its key stays with it
    assert openssl[0] == "openssl"
    if shutil.which("openssl"):
        subprocess.run(openssl, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    else:  # the same request, made with cryptography
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital-2")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        (tmp_path / "h2.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    for argv in mtls_block:
        _run(argv, tmp_path)
    nodes = tmp_path / "certs" / "nodes"
    assert sorted(p.name for p in nodes.iterdir()) == [
        "hospital-1.key",
        "hospital-1.pem",
        "hospital-2.pem",
    ]
    listing = _run(["fedplug", "certs", "list", "--dir", "certs"], tmp_path).stdout
    assert listing.count("certificate") == 2

    # hospital-1 receives ca.pem, its certificate and key, and writes the guide's [researcher]
    for name in ("hospital-1.pem", "hospital-1.key"):
        shutil.copy(nodes / name, tmp_path / name)
    shutil.copy(tmp_path / "certs" / "ca.pem", tmp_path / "ca.pem")
    snippet, _reference = _blocks("toml")
    (tmp_path / "node.toml").write_text('[node]\nname = "hospital-1"\n' + snippet)
    config = load_node_config(tmp_path / "node.toml")
    assert config.token == "" and config.cert_file == tmp_path / "hospital-1.pem"
    from fedplug_grpc.certs import check_certificate, load_certificate_pins, node_tls

    cert, _key = node_tls(config.cert_file, config.key_file)
    assert check_certificate(load_certificate_pins(tmp_path / "certs"), cert) == "hospital-1"


def test_the_node_toml_reference_is_a_valid_config(tmp_path):
    _mtls, toml = _blocks("toml")
    assert "[limits]" in toml
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    (tmp_path / "hospital-1.token").write_text("secret")
    (tmp_path / "node.toml").write_text(toml)
    config = load_node_config(tmp_path / "node.toml")
    assert config.limits.max_epochs == 100
    assert config.limits.allowed_plugins == ("torch", "sklearn")
    assert config.max_message_bytes == 8192 * 1024 * 1024
    assert config.approval is True and config.require_secagg is False
