"""A running node is seen by ``fedplug node dataset add|remove``, which then say it needs a restart.

``fedplug node start`` holds a lock on ``<database>.lock`` while it serves; here a child process
holds it the same way (``_running_lock``) so that it can be killed: the kernel drops the lock with
the process, so a lock file left behind by a killed node means nothing.
"""

import subprocess
import sys
import time
from pathlib import Path

from fedplug_grpc.node_cli import running_node
from fedplug_grpc.nodeconfig import write_node_config

HOLD = r"""
import sys, time
from pathlib import Path
from fedplug_grpc.node_cli import _running_lock

with _running_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(120)
"""


def _fedplug(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fedplug", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_dataset_commands_warn_while_a_node_holds_the_database_and_not_after(tmp_path):
    config = write_node_config(tmp_path / "node.toml", "hospital-1", "localhost:1", insecure=True)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n2,1\n3,0\n")
    database = tmp_path / "hospital-1.db"
    add = ["node", "dataset", "add", "--config", str(config), "--type", "csv"]
    add += ["--path", "data.csv", "--target", "label", "--tags", "t"]
    remove = ["node", "dataset", "remove", "--config", str(config), "t"]

    assert running_node(database) is None  # never started: no lock file at all
    assert "warning" not in _fedplug(*add, cwd=tmp_path).stderr

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(database)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert running_node(database) == holder.pid
        removed = _fedplug(*remove, cwd=tmp_path).stderr
        assert f"(pid {holder.pid})" in removed and "restarted" in removed, removed
        added = _fedplug(*add, cwd=tmp_path).stderr
        assert "it will serve 't' only once it is restarted" in added, added
        assert f"fedplug node start --config {config}" in added
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while running_node(database) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "hospital-1.db.lock").exists()  # left behind by the killed process...
    assert running_node(database) is None  # ...and meaningless
    assert "warning" not in _fedplug(*remove, cwd=tmp_path).stderr
