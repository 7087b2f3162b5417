"""A researcher process SIGKILLed mid-round resumes from its checkpoint against the same node
processes and ends with the model of an uninterrupted run, bit for bit (docs/deployment.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedplug import load_params
from fedplug_demo.demo import TAGS, label_skew_split, load_breast_cancer
from fedplug_grpc.deploy import NodeSpec, make_certs, prepare_nodes

pytest.importorskip("grpc")
pytest.importorskip("torch")

pytestmark = pytest.mark.slow

# what the gRPC tests share, by path (see support.py's docstring)
_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_restart", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)

ROUNDS = 6
PAUSE_ROUND = 3

# The researcher: `new` builds the experiment, `resume` loads the latest checkpoint; both run it
# to the end and save the final model and the history. With a pause file, the researcher stops
# in round PAUSE_ROUND once the first node's reply has arrived (the nodes have trained that
# round), writes the file and waits there to be killed.
RESEARCHER = """
import json
import sys
import time
from pathlib import Path

from fedplug import Experiment
from fedplug_demo.demo import PLANS, TAGS

mode, port, certs, checkpoints, out, pause = sys.argv[1:7]
if mode == "resume":
    exp = Experiment.load_checkpoint(checkpoints)
else:
    name, _, model_args, training_args = PLANS["torch"]
    exp = Experiment(
        tags=TAGS,
        training_plan=name,
        model_args=model_args,
        training_args={**training_args, "test_ratio": 0.2},
        round_limit=ROUNDS,
        seed=0,
        transport="grpc",
        transport_options={"server": f"127.0.0.1:{port}", "tls": certs, "wait_nodes": 3},
        checkpoint_dir=checkpoints,
        progress=False,
    )
print(json.dumps({"id": exp.id, "round_index": exp.round_index}), flush=True)
if pause != "-":
    dispatch = exp.transport.dispatch

    def paused(payload, nodes, **options):
        replies = dispatch(payload, nodes, **options)
        if exp.round_index == PAUSE_ROUND:
            yield next(replies)
            Path(pause).write_text("paused")
            while True:
                time.sleep(1)
        yield from replies

    exp.transport.dispatch = paused
history = exp.run()
exp.save_model(out)
Path(out).with_suffix(".json").write_text(json.dumps({"id": exp.id, "history": history}))
exp.close()
""".replace("ROUNDS", str(ROUNDS)).replace("PAUSE_ROUND", str(PAUSE_ROUND))


class Researchers:
    """Researcher processes started from RESEARCHER; killed at teardown if still running."""

    def __init__(self, folder: Path, port: int, certs: Path) -> None:
        self.folder, self.port, self.certs = folder, port, certs
        self.script = folder / "researcher.py"
        self.script.write_text(RESEARCHER)
        self.procs: list[subprocess.Popen] = []

    def start(self, label: str, mode: str, checkpoints: Path, pause: Path | None = None):
        args = [mode, str(self.port), str(self.certs), str(checkpoints)]
        args += [str(self.folder / f"{label}.npz"), str(pause or "-")]
        with (self.folder / f"{label}.log").open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=support.python_env(OMP_NUM_THREADS="1"),
            )
        self.procs.append(proc)
        return proc

    def finish(self, label: str, proc: subprocess.Popen) -> tuple[dict, dict]:
        """Wait for a researcher's normal end; its final model and what it recorded."""
        code = proc.wait(timeout=300)
        assert code == 0, self.log(label)
        saved = json.loads((self.folder / f"{label}.json").read_text())
        return load_params(self.folder / f"{label}.npz"), saved

    def log(self, label: str) -> str:
        return (self.folder / f"{label}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def demo_specs(workdir: Path) -> list[NodeSpec]:
    """The demo's three hospitals (grpc_federation's data), retrying connections quickly."""
    x, y = load_breast_cancer()
    specs = []
    for i, index in enumerate(label_skew_split(y, 3, 0)):
        data = workdir / "data" / f"hospital-{i + 1}.npz"
        data.parent.mkdir(parents=True, exist_ok=True)
        np.savez(data, x=x[index], y=y[index])
        dataset = (f"breast-cancer-{i + 1}", "numpy", TAGS, {"path": str(data)})
        researcher = {"reconnect_s": 0.2, "max_reconnect_s": 1.0}
        specs.append(NodeSpec(f"hospital-{i + 1}", [dataset], researcher=researcher))
    return specs


def test_a_researcher_killed_mid_round_resumes_to_the_uninterrupted_model(tmp_path):
    port = support.free_port()
    specs = demo_specs(tmp_path)
    certs = make_certs(tmp_path, [spec.name for spec in specs])
    deployment = prepare_nodes(tmp_path / "nodes", specs, f"localhost:{port}", certs)
    researchers = Researchers(tmp_path, port, certs)
    try:
        deployment.start_all()
        node_pids = {name: proc.pid for name, proc in deployment.procs.items()}
        checkpoints = tmp_path / "checkpoints"
        pause = tmp_path / "paused"
        first = researchers.start("first", "new", checkpoints, pause)

        def paused_mid_round() -> bool:
            assert first.poll() is None, researchers.log("first")
            return (checkpoints / f"round-{PAUSE_ROUND:05d}.npz").exists() and pause.exists()

        support.wait_until(paused_mid_round, 300, f"the researcher to reach round {PAUSE_ROUND}")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        assert sorted(p.name for p in checkpoints.glob("round-*.npz"))[-1] == (
            f"round-{PAUSE_ROUND:05d}.npz"
        )
        first_id = json.loads(researchers.log("first").splitlines()[0])["id"]

        resumed_model, resumed = researchers.finish(
            "resumed", researchers.start("resumed", "resume", checkpoints)
        )
        start = json.loads(researchers.log("resumed").splitlines()[0])
        assert start == {"id": first_id, "round_index": PAUSE_ROUND}
        assert resumed["id"] == first_id  # the nodes' sessions (Adam moments) continued
        assert [row["round"] for row in resumed["history"]] == list(range(ROUNDS))

        straight_model, straight = researchers.finish(
            "straight", researchers.start("straight", "new", tmp_path / "straight-checkpoints")
        )
        assert straight["id"] != first_id
        assert len(straight["history"]) == ROUNDS

        # the same node processes served all three researchers, reconnecting each time
        assert {name: proc.pid for name, proc in deployment.procs.items()} == node_pids
        assert all(proc.poll() is None for proc in deployment.procs.values())
    finally:
        researchers.close()
        support.stop_processes(deployment)

    assert set(resumed_model) == set(straight_model)
    for name, value in straight_model.items():
        assert np.array_equal(resumed_model[name], value), f"parameter {name!r} differs"
    last = resumed["history"][-1]["validation_global"]
    assert last == straight["history"][-1]["validation_global"]
