"""The demo over gRPC end to end: three ``fedplug node start`` processes over TLS on loopback
give the local transport's model bit for bit; ``fedplug demo --transport grpc`` runs, and stops
its node processes on Ctrl-C."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedplug import Experiment
from fedplug_demo.demo import PLANS, TAGS, demo_node_specs, demo_nodes, grpc_federation

pytest.importorskip("grpc")
torch = pytest.importorskip("torch")

from fedplug_grpc.deploy import StartupReport, local_deployment  # noqa: E402

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_e2e", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)

ROUNDS = 5
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]


def demo_experiment(nodes) -> Experiment:
    """The demo's experiment: torch-mlp with a node-side Adam, FedAvg, 20 % held out, seed 0."""
    name, _, model_args, training_args = PLANS["torch"]
    return Experiment(
        nodes=nodes,
        tags=TAGS,
        training_plan=name,
        model_args=model_args,
        training_args={**training_args, "test_ratio": 0.2},
        round_limit=ROUNDS,
        seed=0,
        progress=False,
    )


@pytest.fixture
def one_thread(monkeypatch):
    """Torch on one thread here and in the node processes (which read OMP_NUM_THREADS): float
    sums depend on how a matrix product is split over threads, the transport must not."""
    for var in THREAD_VARS:
        monkeypatch.setenv(var, "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_demo_over_grpc_gives_the_local_transports_model(tmp_path, one_thread):
    local = demo_experiment(demo_nodes(3, seed=0))
    local.run()

    with grpc_federation(3, 0, tmp_path / "grpc") as transport:
        assert sorted(transport.node_tags()) == HOSPITALS
        assert transport.tls
        remote = demo_experiment(transport)
        support.in_thread(remote.run).result(timeout=300)

    assert len(remote.history) == ROUNDS
    for row, expected in zip(remote.history, local.history, strict=True):
        assert row["nodes"] == HOSPITALS and row["failures"] == {}
        assert row["samples"] == expected["samples"]
        assert row["train_loss"] == expected["train_loss"]
        assert row["validation_global"] == expected["validation_global"]
    accuracy = remote.history[-1]["validation_global"]["accuracy"]
    assert accuracy == local.history[-1]["validation_global"]["accuracy"]
    assert accuracy > 0.9
    assert set(remote.global_params) == set(local.global_params)
    for name, value in local.global_params.items():
        assert np.array_equal(remote.global_params[name], value), name
    for hospital in HOSPITALS:  # each node really was a process of its own, over TLS
        log = (tmp_path / "grpc" / hospital / "node.log").read_text()
        assert f"node '{hospital}' connected" in log and "(TLS)" in log


def demo_command(out: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedplug",
        "demo",
        "--transport",
        "grpc",
        "--out",
        str(out),
        *args,
    ]


def processes_mentioning(text: str) -> dict[int, str]:
    """Processes whose command line contains ``text``, pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline
    return found


def kill_all(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_demo_command_runs_over_grpc(tmp_path):
    out = tmp_path / "demo"
    try:
        result = subprocess.run(
            demo_command(out, "--json", "--rounds", "2"),
            capture_output=True,
            text=True,
            timeout=300,
            env=support.python_env(),
            stdin=subprocess.DEVNULL,
        )
    finally:
        leftovers = processes_mentioning(str(out))
        kill_all(leftovers)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["transport"] == "grpc" and summary["rounds"] == 2
    assert isinstance(summary["global_accuracy"], float) and 0.5 < summary["global_accuracy"] <= 1
    assert sorted(summary["per_node"]) == HOSPITALS
    assert leftovers == {}, f"node processes outlived the demo: {leftovers}"
    for hospital in HOSPITALS:
        assert "connected" in (out / "grpc" / hospital / "node.log").read_text()
    # what happened before the first round was told, in order, as plain lines (not a terminal)
    err = result.stderr
    assert "\r" not in err
    steps = [
        "creating TLS certificates and node credentials in ",
        "starting 3 node processes (their output: ",
        "waiting for 3 nodes: 0 connected",
        "waiting for 3 nodes: 3 connected (hospital-1, hospital-2, hospital-3)",
        "3 nodes connected in ",
        "preparing the experiment: torch-mlp, fedavg, 3 hospitals",
        "stopping 3 node processes",
    ]
    positions = [err.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), err
    waits = re.findall(r"^waiting for 3 nodes: (\d) connected", err, re.MULTILINE)
    assert waits == sorted(waits) and len(set(waits)) == len(waits), err  # one line per change


def test_a_deployment_says_what_it_does_and_counts_nodes_as_they_connect(tmp_path):
    err = io.StringIO()
    specs = demo_node_specs(2, 0, tmp_path)
    with local_deployment(tmp_path, specs, wait_timeout=120, report=StartupReport(err)):
        started = err.getvalue()
    lines = started.splitlines()
    assert lines[0] == f"creating TLS certificates and node credentials in {tmp_path / 'certs'}"
    assert lines[1] == f"starting 2 node processes (their output: {tmp_path}/NAME/node.log)"
    assert lines[2] == "waiting for 2 nodes: 0 connected"
    assert lines[-2] == "waiting for 2 nodes: 2 connected (hospital-1, hospital-2)"
    assert re.fullmatch(r"2 nodes connected in \d+\.\d s", lines[-1])
    assert err.getvalue()[len(started) :] == "stopping 2 node processes\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_waiting_line_is_rewritten_in_place():
    out = Terminal()
    report = StartupReport(out)
    report.step("starting 2 node processes")
    report.waiting([], 2)
    report.waiting(["b"], 2)
    report.waiting(["a", "b"], 2)
    report.step("2 nodes connected in 0.5 s")
    assert out.getvalue() == (
        "starting 2 node processes\n"
        "\r\x1b[Kwaiting for 2 nodes: 0 connected"
        "\r\x1b[Kwaiting for 2 nodes: 1 connected (b)"
        "\r\x1b[Kwaiting for 2 nodes: 2 connected (a, b)\n"
        "2 nodes connected in 0.5 s\n"
    )


def test_ctrl_c_stops_the_grpc_demo_and_its_node_processes(tmp_path):
    out = tmp_path / "demo"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr, (tmp_path / "stdout.txt").open("w") as stdout:
        proc = subprocess.Popen(
            demo_command(out, "--rounds", "100000"),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=support.python_env(),
        )
    try:
        logs = [out / "grpc" / hospital / "node.log" for hospital in HOSPITALS]

        def all_connected() -> bool:
            assert proc.poll() is None, f"the demo exited early: {stderr_path.read_text()}"
            return all(log.exists() and "connected" in log.read_text() for log in logs)

        support.wait_until(all_connected, 300, "the demo's nodes to connect")
        nodes = processes_mentioning(str(out / "grpc"))
        assert len(nodes) == 3, nodes  # three `fedplug node start` processes

        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        assert code == 130, stderr_path.read_text()
        assert "fedplug: interrupted" in stderr_path.read_text()
        leftovers = processes_mentioning(str(out))
        assert leftovers == {}, f"processes left after Ctrl-C: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(processes_mentioning(str(out)))
