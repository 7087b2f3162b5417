"""docs/deployment.md: its shell blocks run as written on one machine, end to end.

The walkthrough (sections 0 to 3) runs in a fresh folder that stands for a clone of the
repository (its ``examples`` is a link to this repository's): each block's lines run one after
the other through bash, with this interpreter's ``bin`` folder first on PATH (``fedplug`` and
``python`` are this virtual environment's), each block starting in ``study/`` as the guide says
(the first one in the clone); a ``cd`` line changes the folder of the lines after it. The two
``fedplug node start`` lines run as background processes, and the researcher's ``python
researcher.py`` as a subprocess whose output must be the guide's. One thing is changed from the
text: port 50051 becomes a free port (in the commands and in the copied researcher.py), so that
the test cannot meet another server. Every process has a timeout and is stopped in a ``finally``.

The plan-review commands run against a plan recorded as pending with the guide's example hash
prefix; the client-certificate commands and the ``node.toml`` reference are checked on their own.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedplug_grpc.nodeconfig import load_node_config
from fedplug_grpc.nodestore import NodeStore

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
EXAMPLE = ROOT / "examples" / "deployment"
BIN = str(Path(sys.executable).parent)


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


def _lines(block: str) -> list[str]:
    """The block's command lines (continuation lines joined), blank and comment lines dropped."""
    text = block.replace("\\\n", " ")
    return [line for line in text.splitlines() if shlex.split(line, comments=True)]


def _commands(block: str) -> list[list[str]]:
    """The block's commands as argv lists."""
    return [shlex.split(line, comments=True) for line in _lines(block)]


def _block(blocks: list[str], text: str) -> str:
    """The one block among ``blocks`` that holds ``text``."""
    found = [block for block in blocks if text in block]
    assert len(found) == 1, f"expected one block of docs/deployment.md with {text!r}: {found}"
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A ``fedplug`` command, with this interpreter."""
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


class Terminal:
    """A terminal in which a guide's blocks are typed: ``cd`` moves it, ``fedplug node start``
    goes to the background (it serves until stopped), anything else runs through bash and must
    succeed."""

    def __init__(self, cwd: Path, port: int, started: list, logs: Path) -> None:
        self.cwd, self.port, self.started, self.logs = cwd, port, started, logs

    def type(self, block: str) -> str:
        output = ""
        for line in _lines(block):
            line = line.replace("50051", str(self.port))
            argv = shlex.split(line, comments=True)
            if argv[0] == "cd":
                (folder,) = argv[1:]
                self.cwd = (self.cwd / folder).resolve()
                assert self.cwd.is_dir(), f"`{line}`: no folder {self.cwd}"
            elif argv[:3] == ["fedplug", "node", "start"]:
                log = self.logs / f"{self.cwd.name}.log"
                process = subprocess.Popen(
                    ["bash", "-c", f"exec {line}"],
                    cwd=self.cwd,
                    env=_env(),
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                )
                self.started.append((process, log))
            else:
                result = subprocess.run(
                    ["bash", "-c", line],
                    cwd=self.cwd,
                    env=_env(),
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert result.returncode == 0, (
                    f"`{line}` (in {self.cwd}) failed with status {result.returncode}:\n"
                    f"{result.stdout}{result.stderr}"
                )
                output += result.stdout
        return output


def _stop(started: list) -> list[int]:
    """SIGTERM to every node process, as Ctrl-C would; SIGKILL to one that does not end."""
    for process, _ in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = []
    for process, _ in started:
        try:
            codes.append(process.wait(timeout=30))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait(timeout=30))
    return codes


@pytest.fixture(scope="module")
def bash_blocks() -> list[str]:
    return _blocks("bash")


@pytest.mark.slow
def test_the_walkthrough_runs_end_to_end_on_one_machine(tmp_path, bash_blocks):
    clone = tmp_path / "clone"  # a clone of fedplug, as section 0 starts from
    clone.mkdir()
    (clone / "examples").symlink_to(ROOT / "examples")
    logs = tmp_path / "logs"
    logs.mkdir()
    port, started = _free_port(), []

    # the researcher's script of section 3 is the shipped one
    (script,) = [b for b in _blocks("python") if "transport=" in b and "save_model" in b]
    assert script + "\n" == (EXAMPLE / "researcher.py").read_text()

    setup = _block(bash_blocks, "cp -r examples/deployment study")
    certs = _block(bash_blocks, "fedplug certs init")
    handover = _block(bash_blocks, "hospital-1.token hospital-1/")
    hospital_1 = _block(bash_blocks, "--name hospital-1 --researcher")
    hospital_2 = _block(bash_blocks, "--name hospital-2 --researcher")
    researcher = _block(bash_blocks, "python researcher.py")
    (expected,) = [b for b in _blocks("text") if b.startswith("hospital-1: accuracy")]

    Terminal(clone, port, started, logs).type(setup)
    study = clone / "study"
    assert (study / "hospital-1" / "cohort.csv").is_file()
    text = (study / "researcher.py").read_text()
    assert text.count("0.0.0.0:50051") == 1
    (study / "researcher.py").write_text(text.replace("50051", str(port)))
    try:
        listing = Terminal(study, port, started, logs).type(certs)
        assert "hospital-1" in listing and "hospital-2" in listing
        Terminal(study, port, started, logs).type(handover)
        output = Terminal(study, port, started, logs).type(hospital_1)
        assert "breast-cancer" in output  # `dataset list` shows the dataset just added
        Terminal(study, port, started, logs).type(hospital_2)
        assert len(started) == 2

        # the databases are <name>.db, as the guide says
        configs = [load_node_config(study / f"hospital-{i}" / "node.toml") for i in (1, 2)]
        assert [c.database.name for c in configs] == ["hospital-1.db", "hospital-2.db"]
        assert [c.address for c in configs] == [f"localhost:{port}"] * 2
        for config in configs:
            (record,) = NodeStore(config.database).datasets()
            assert (record.type, record.tags, record.options["target"]) == (
                "csv",
                ["breast-cancer"],
                "label",
            )

        # a dataset added to a running node: the command says a restart is needed
        deadline = time.monotonic() + 30
        lock = study / "hospital-1" / "hospital-1.db.lock"
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = started[0][0].pid
        add = ["fedplug", "node", "dataset", "add", "--config", "node.toml", "--type", "csv"]
        add += ["--path", "cohort.csv", "--target", "label", "--tags", "extra"]
        warning = _run(add, study / "hospital-1").stderr
        assert f"(pid {pid})" in warning and "restarted" in warning, warning
        removed = _run(["fedplug", "node", "dataset", "remove", "extra"], study / "hospital-1")
        assert "restarted" in removed.stderr, removed.stderr

        result = subprocess.run(
            shlex.split(_lines(researcher)[0]),
            cwd=study,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    finally:
        codes = _stop(started)
    node_logs = "".join(log.read_text() for _, log in started)
    assert codes == [0, 0], node_logs
    # what the guide shows: the results it prints, and the files it saves
    printed = result.stdout.splitlines()
    assert printed[-4:] == expected.splitlines(), result.stdout
    history = json.loads((study / "history.json").read_text())
    assert len(history) == 20
    last = history[-1]["validation_global"]
    assert printed[-2].startswith(f"global: accuracy {last['accuracy']:.3f}")
    with np.load(study / "model.npz") as model:
        assert any(name.startswith("param:") for name in model.files)
    assert sorted(p.name for p in (study / "checkpoints").iterdir())[-1] == "round-00020.npz"
    # the nodes waited for the researcher as the guide says; once stopped, no warning
    assert f"connection to localhost:{port} ended (UNAVAILABLE" in node_logs
    assert "retrying in 2.0 s" in node_logs
    after = _run(add, study / "hospital-1")
    assert "restarted" not in after.stderr, after.stderr

    plan_block = _block(bash_blocks, "fedplug node plan approve")
    sha = "4be1c0de" + "0" * 56
    NodeStore(configs[0].database).record_plan(sha, "MyPlan", "class MyPlan:\n    pass\n")
    for argv in _commands(plan_block):
        _run(argv, study / "hospital-1")
    # the block approves, then rejects: the last decision holds
    assert NodeStore(configs[0].database).plan_status(sha) == "rejected"


def test_the_client_certificate_commands_and_config_work_as_written(tmp_path, bash_blocks):
    (init,) = _commands(_block(bash_blocks, "fedplug certs init"))[:1]
    _run(init, tmp_path)
    (openssl,) = _commands(_block(bash_blocks, "openssl req"))  # hospital-2's key stays with it
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
    for argv in _commands(_block(bash_blocks, "--cert ")):
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
    # the reference spells out the default database, <name>.db beside the file
    assert config.database == tmp_path / "hospital-1.db"
    del_database = toml.replace('database = "hospital-1.db"', "")
    assert del_database != toml
    (tmp_path / "node.toml").write_text(del_database)
    assert load_node_config(tmp_path / "node.toml").database == tmp_path / "hospital-1.db"
