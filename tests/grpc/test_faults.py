"""What goes wrong in a gRPC federation, with real node processes (the session's cluster, see
support.py): nodes killed mid-round, garbage and oversized replies, wrong shapes, unknown
credentials, unapproved and rejected plans; and what checkpoints keep."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedplug import ConfigError, Experiment, NodeError
from fedplug import messages as msg
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug_grpc.deploy import NodeSpec, prepare_nodes

grpc = pytest.importorskip("grpc")

from fedplug_grpc import transport as transport_module  # noqa: E402

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_faults", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)

TAGS = support.TAGS
HEALTHY = ["alpha", "beta", "slow"]  # the cluster's nodes with a dataset tagged TAGS
SlowPlan = support.SlowPlan  # waits on the "slow" node until released (shipped as source)


class MarkerPlan(LogisticRegressionPlan):
    """Leaves the file ``ran-PID`` in the folder ``model_args["marker_dir"]`` when it is built:
    proof that its code ran in process PID."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency(["import os", "from pathlib import Path"])
        (Path(self.model_args["marker_dir"]) / f"ran-{os.getpid()}").touch()


class RejectedPlan(LogisticRegressionPlan):
    """A plan the node's administrator rejects; leaves ``ran-PID`` like MarkerPlan."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency(["import os", "from pathlib import Path"])
        (Path(self.model_args["marker_dir"]) / f"ran-{os.getpid()}").touch()


def experiment(cluster, plan=LogisticRegressionPlan, model_args=None, **kwargs) -> Experiment:
    """An experiment on the cluster's transport (never closed here: the session owns it)."""
    settings = {
        "nodes": cluster.transport,
        "tags": TAGS,
        "training_plan": plan,
        "model_args": {"n_features": support.N_FEATURES, **(model_args or {})},
        "training_args": {"batch_size": 16, "epochs": 1, "test_ratio": 0.2},
        "round_limit": 3,
        "seed": 0,
        "progress": False,
    }
    return Experiment(**{**settings, **kwargs})


def copy_params(params: dict) -> dict:
    return {name: np.array(value, copy=True) for name, value in params.items()}


def assert_params_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(got[name], value), f"parameter {name!r} changed"


def wait_for_training(control: Path, future) -> None:
    """Until the slow node is inside SlowPlan.train (the round is in progress)."""
    support.wait_until(
        lambda: (control / "started").exists() or future.done(),
        support.STARTUP_S,
        "the slow node to start training",
    )
    assert not future.done(), f"the round ended before the slow node trained: {future}"


# -- a node dies mid-round ---------------------------------------------------------------------


def test_a_node_killed_mid_round_is_skipped_and_the_next_round_runs(cluster, tmp_path):
    exp = experiment(cluster, SlowPlan, {"control": str(tmp_path)}, on_node_failure="skip")
    assert exp.nodes == HEALTHY
    future = support.in_thread(exp.run_once)
    wait_for_training(tmp_path, future)

    cluster.deployment.kill("slow")
    killed = time.monotonic()
    row = future.result(timeout=60)
    assert time.monotonic() - killed < 30, "the researcher took too long to notice the death"
    assert row["nodes"] == ["alpha", "beta"]
    assert set(row["failures"]) == {"slow"}
    reason = row["failures"]["slow"]
    assert "disconnected" in reason and "connection" in reason, reason
    assert exp.round_index == 1 and len(exp.history) == 1

    # the next round: the node is gone, its failure is recorded and nothing waits for it
    start = time.monotonic()
    row = support.run_round(exp, timeout=60)
    assert time.monotonic() - start < 30
    assert row["nodes"] == ["alpha", "beta"]
    assert set(row["failures"]) == {"slow"}
    assert "not connected" in row["failures"]["slow"]
    assert exp.round_index == 2


def test_a_node_killed_mid_round_fails_the_round_and_keeps_the_model(cluster, tmp_path):
    (tmp_path / "release").touch()
    exp = experiment(cluster, SlowPlan, {"control": str(tmp_path)}, on_node_failure="fail")
    first = support.run_round(exp)  # every node trains, the slow one without waiting
    assert first["nodes"] == HEALTHY and first["failures"] == {}
    before = copy_params(exp.global_params)
    (tmp_path / "release").unlink()
    (tmp_path / "started").unlink()

    future = support.in_thread(exp.run_once)
    wait_for_training(tmp_path, future)
    cluster.deployment.kill("slow")
    killed = time.monotonic()
    error = future.exception(timeout=60)
    assert time.monotonic() - killed < 30, "the researcher took too long to notice the death"
    assert isinstance(error, NodeError), repr(error)
    assert error.node == "slow"
    assert "disconnected" in str(error) and "the global model is unchanged" in str(error)
    assert_params_equal(exp.global_params, before)
    assert len(exp.history) == 1 and exp.round_index == 1


# -- misbehaving nodes and clients --------------------------------------------------------------


def test_a_node_that_replies_garbage_is_skipped(cluster):
    def garbage(payload):
        return b"\x07\x00\x00\x00 this is not a fedplug message"

    with support.fake_node(cluster, "fake-garbage", garbage) as fake:
        exp = experiment(cluster, on_node_failure="skip", validate=False)
        assert exp.nodes == ["alpha", "beta", "fake-garbage", "slow"]
        row = support.run_round(exp)
    assert fake.requests == 1
    assert row["nodes"] == HEALTHY
    assert set(row["failures"]) == {"fake-garbage"}
    failure = row["failures"]["fake-garbage"]
    assert "MessageError" in failure and "malformed message" in failure, failure


def test_a_frame_of_unknown_kind_ends_the_stream_with_a_protocol_error(cluster):
    hello = transport_module.control(
        transport_module.HELLO, {"name": "raw-client", "tags": [["raw"]], "wire": msg.VERSION}
    )
    received, error = support.raw_stream(cluster, "raw-client", [hello, bytes([200]) + b"junk"])
    assert received and received[0][0] == transport_module.WELCOME
    assert error is not None, "the researcher kept the stream open"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "protocol error" in error.details() and "unknown frame kind 200" in error.details()
    support.wait_until(
        lambda: "raw-client" not in cluster.transport.node_tags(), 30, "raw-client to be dropped"
    )
    # the server still serves the real nodes
    row = support.run_round(experiment(cluster))
    assert row["nodes"] == HEALTHY and row["failures"] == {}


def test_a_reply_larger_than_max_reply_bytes_is_refused_before_any_allocation(cluster, monkeypatch):
    allocated = []
    real_receiver = transport_module.Receiver

    class SpyReceiver(real_receiver):
        def __init__(self, task, size, *args):
            allocated.append(size)
            super().__init__(task, size, *args)

    monkeypatch.setattr(transport_module, "Receiver", SpyReceiver)
    size = support.REPLY_LIMIT + 12345
    assert cluster.transport.max_reply_bytes == support.REPLY_LIMIT
    with support.fake_node(cluster, "fake-big", lambda payload: bytes(size)) as fake:
        # validated: the healthy nodes' evaluation replies are assembled in buffers the spy sees
        # (training replies may all be folded in while they arrive, in no buffer at all)
        exp = experiment(cluster, on_node_failure="skip", validate=True)
        row = support.run_round(exp)
    assert fake.requests == 2
    assert "max_reply_bytes" in row["validation_failures"]["fake-big"]
    assert row["nodes"] == HEALTHY
    failure = row["failures"]["fake-big"]
    assert "max_reply_bytes" in failure and str(size) in failure, failure
    assert str(support.REPLY_LIMIT) in failure, failure
    assert allocated, "the spy saw no buffer at all: it does not watch the transport"
    assert size not in allocated, f"a buffer of the refused reply's size was allocated: {size}"


def test_a_request_beyond_the_node_limit_is_refused_and_the_node_keeps_serving(cluster):
    pid = cluster.pid("limited")
    # 100,000 x 2 float64 weights: a request of about 1.6 MB for a node accepting 1 MiB
    big = experiment(cluster, tags=["limited"], model_args={"n_features": 100_000}, validate=False)
    assert big.nodes == ["limited"]
    error = support.round_error(big)
    assert isinstance(error, NodeError), repr(error)
    assert error.node == "limited"
    assert "max_message_mb" in str(error) and str(1 << 20) in str(error), str(error)
    assert big.history == []

    assert cluster.deployment.procs["limited"].poll() is None and cluster.pid("limited") == pid
    small = experiment(cluster, tags=["limited"])
    row = support.run_round(small)
    assert row["nodes"] == ["limited"] and row["failures"] == {}
    assert cluster.pid("limited") == pid


def _echo_then_wrong_shape(payload):
    """A node that returns the global model in round 0, then a weight with one row too many."""
    request = msg.decode(payload, msg.TrainRequest)
    params = {name: np.array(value) for name, value in request.params.items()}
    if request.round_index >= 1:
        params["weight"] = np.zeros((support.N_FEATURES + 1, 2))
    reply = msg.TrainReply(
        experiment_id=request.experiment_id,
        round_index=request.round_index,
        node="fake-shape",
        params=params,
        n_samples=10,
        n_steps=1,
        train_loss=0.5,
        duration_s=0.0,
    )
    return msg.encode(reply)


def test_parameters_of_the_wrong_shape_fail_the_round_and_keep_the_model(cluster):
    with support.fake_node(cluster, "fake-shape", _echo_then_wrong_shape) as fake:
        exp = experiment(cluster, on_node_failure="fail", validate=False)
        assert exp.nodes == ["alpha", "beta", "fake-shape", "slow"]
        first = support.run_round(exp)
        assert first["nodes"] == exp.nodes
        before = copy_params(exp.global_params)
        error = support.round_error(exp)
    assert fake.requests == 2
    assert isinstance(error, NodeError), repr(error)
    assert error.node == "fake-shape"
    text = str(error)
    assert "returned parameters" in text and "expected" in text, text
    assert f"({support.N_FEATURES + 1}, 2)" in text and f"({support.N_FEATURES}, 2)" in text
    assert_params_equal(exp.global_params, before)
    assert len(exp.history) == 1


# -- who may join, what may run -----------------------------------------------------------------


def test_a_node_with_an_unknown_credential_is_refused_and_exits(cluster, tmp_path):
    wrong = tmp_path / "wrong.token"
    wrong.write_text("a-token-this-researcher-never-issued\n")
    data = cluster.workdir / "data" / "alpha.npz"
    spec = NodeSpec(
        "intruder",
        [("intruder-data", "numpy", TAGS, {"path": str(data)})],
        node={"approval": False},
        researcher={"token_file": str(wrong)},
    )
    deployment = prepare_nodes(tmp_path / "nodes", [spec], cluster.address, cluster.certs)
    proc = deployment.start("intruder")
    try:
        code = proc.wait(timeout=support.STARTUP_S)
    finally:
        support.stop_processes(deployment)
    log = deployment.log("intruder", 50)
    assert code == 3, log
    assert "unknown node credential" in log and "refused" in log, log
    refused = cluster.transport.refused
    assert any("unknown node credential" in reason for reason in refused), refused

    with pytest.raises(ConfigError) as info:
        cluster.transport.wait_for_nodes(TAGS, names=["intruder"], timeout=1)
    text = str(info.value)
    assert "'intruder'" in text and "'alpha'" in text and "'beta'" in text, text
    assert "refused connections" in text and "unknown node credential" in text, text


def test_a_node_presenting_another_nodes_credential_is_refused_for_good(cluster):
    impostor = support.FakeNode("impostor", lambda payload: b"", TAGS)
    client = transport_module.NodeClient(
        impostor, cluster.address, cluster.token("fake-big"), ca_cert=cluster.ca, reconnect_s=0.2
    )
    future = support.in_thread(client.run)
    try:
        assert future.result(timeout=60) == 3  # refused for good: no retry
    finally:
        client.stop()
    assert client.sessions == 0 and impostor.requests == 0
    assert "impostor" not in cluster.transport.node_tags()
    refused = cluster.transport.refused
    expected = "credential of 'fake-big' used by a node named 'impostor'"
    assert any(expected in reason for reason in refused), refused


def test_an_unapproved_plan_is_refused_until_approved_with_the_cli(cluster, tmp_path):
    config = cluster.deployment.configs["strict"]
    pid = cluster.pid("strict")
    marker = tmp_path / f"ran-{pid}"
    exp = experiment(
        cluster, MarkerPlan, {"marker_dir": str(tmp_path)}, tags=["approval"], validate=False
    )
    assert exp.nodes == ["strict"]
    sha = exp.plan_ref.sha256
    assert exp.plan_ref.name is None and len(sha) == 64  # shipped as source

    error = support.round_error(exp)
    assert isinstance(error, NodeError), repr(error)
    assert error.node == "strict"
    assert "not approved" in str(error) and sha in str(error), str(error)
    assert f"fedplug node plan approve {sha} --config {config}" in str(error), str(error)
    assert not marker.exists(), "the node ran the code of a plan it did not approve"
    assert exp.history == []

    listing = support.fedplug_cli("node", "plan", "list", "--config", str(config), "--json")
    assert listing.returncode == 0, listing.stderr
    plans = {plan["sha256"]: plan for plan in json.loads(listing.stdout)}
    assert sha in plans, plans
    assert plans[sha]["status"] == "pending" and plans[sha]["class_name"] == "MarkerPlan"

    approve = support.fedplug_cli("node", "plan", "approve", sha[:12], "--config", str(config))
    assert approve.returncode == 0, approve.stderr
    assert sha in approve.stdout

    row = support.run_round(exp)  # the same node process, which reads approvals per request
    assert row["nodes"] == ["strict"] and row["failures"] == {}
    assert marker.exists(), "the approved plan did not run on the node"
    assert cluster.pid("strict") == pid and cluster.deployment.procs["strict"].poll() is None


def test_a_rejected_plan_is_refused_as_rejected(cluster, tmp_path):
    config = cluster.deployment.configs["strict"]
    marker = tmp_path / f"ran-{cluster.pid('strict')}"
    exp = experiment(
        cluster, RejectedPlan, {"marker_dir": str(tmp_path)}, tags=["approval"], validate=False
    )
    sha = exp.plan_ref.sha256
    assert "not approved" in str(support.round_error(exp))  # now pending on the node

    reject = support.fedplug_cli(
        "node", "plan", "reject", sha[:12], "--config", str(config), "--note", "no network code"
    )
    assert reject.returncode == 0, reject.stderr
    error = support.round_error(exp)
    assert isinstance(error, NodeError), repr(error)
    assert error.node == "strict"
    text = str(error)
    assert "rejected" in text and sha in text and "not approved" not in text, text
    assert not marker.exists()
    listing = support.fedplug_cli("node", "plan", "list", "--config", str(config), "--json")
    statuses = {plan["sha256"]: plan["status"] for plan in json.loads(listing.stdout)}
    assert statuses[sha] == "rejected"


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoints_keep_the_last_ones_and_ignore_temporary_files(cluster, tmp_path):
    folder = tmp_path / "checkpoints"
    exp = experiment(cluster, checkpoint_dir=folder, keep_checkpoints=2)
    for _ in range(3):
        support.run_round(exp)
    assert sorted(p.name for p in folder.iterdir()) == ["round-00002.npz", "round-00003.npz"]

    (folder / "round-00009.npz.tmp").write_bytes(b"a checkpoint cut short by a crash")
    resumed = Experiment.load_checkpoint(folder, nodes=cluster.transport, progress=False)
    assert resumed.round_index == 3 and resumed.id == exp.id
    assert resumed.history == json.loads(json.dumps(exp.history))
    assert_params_equal(resumed.global_params, exp.global_params)

    resumed.run(rounds=1)
    assert resumed.round_index == 4
    assert sorted(p.name for p in folder.iterdir()) == [
        "round-00003.npz",
        "round-00004.npz",
        "round-00009.npz.tmp",
    ]


# -- revocation ----------------------------------------------------------------------------------


def test_a_revoked_credential_is_dropped_without_restarting_the_researcher(cluster):
    """`fedplug certs remove` rewrites credentials.json: the running researcher reads it again,
    drops the node's connection (the node is told it is refused, and stops) and refuses the
    token from then on; the other nodes stay."""
    from fedplug_grpc import certs

    token, _ = certs.add_node(cluster.certs, "revocable")  # a new node: known without a restart
    support.wait_until(lambda: "revocable" in cluster.transport.credentials, 10, "the reload")
    with support.fake_node(cluster, "revocable", lambda payload: b"", tags=["revocable"]):
        assert "revocable" in cluster.transport.node_tags()
        start = time.monotonic()
        certs.remove_node(cluster.certs, "revocable")
        support.wait_until(
            lambda: "revocable" not in cluster.transport.node_tags(), 10, "the node to be dropped"
        )
        dropped = time.monotonic() - start
        again = transport_module.NodeClient(
            support.FakeNode("revocable", lambda payload: b"", ["revocable"]),
            cluster.address,
            token,
            ca_cert=cluster.ca,
        )
        assert again.run() == 3  # refused for good: the token is no longer known
        assert "revocable" not in cluster.transport.node_tags()
    assert dropped < 3.0, f"dropped after {dropped:.1f} s"
    assert {"alpha", "beta", "slow"} <= set(cluster.transport.node_tags())


def test_a_node_told_to_stop_mid_request_exits_at_once_and_cleanly(tmp_path):
    """SIGTERM while the node trains: the process ends within a second or so with status 0,
    rather than when the plan's training ends (or with an abort at interpreter exit)."""
    import signal
    import threading

    from fedplug_grpc.deploy import NodeSpec, local_deployment

    np.savez(tmp_path / "d.npz", x=np.ones((40, 4)), y=np.arange(40) % 2)
    spec = NodeSpec("busy", [("d", "numpy", ["busy"], {"path": str(tmp_path / "d.npz")})])
    with local_deployment(tmp_path / "deploy", [spec], wait_timeout=60) as deployment:
        exp = Experiment(
            transport=deployment.transport,
            tags=["busy"],
            training_plan=LogisticRegressionPlan,
            model_args={"n_features": 4},
            training_args={"num_updates": 10**8},  # minutes of training
            on_node_failure="skip",
            min_nodes=1,
            progress=False,
        )
        threading.Thread(target=lambda: support.round_error(exp, 60), daemon=True).start()
        proc = deployment.procs["busy"]
        time.sleep(2.0)  # the request reached the node, which is training
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - start
        log = deployment.log("busy", 5)
    assert code == 0, log
    assert seconds < 3.0, f"{seconds:.1f} s to exit"
    assert "stopped during a request" in log, log
