"""Ctrl-C on `fedplug demo`, as a terminal sends it (SIGINT to the whole foreground process
group): the run stops at once with exit status 130 and a one-line message, and no process is
left behind: not the researcher, not a worker thread's training, not a gRPC node process, not
the Ray instance the demo started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

FEDPLUG = shutil.which("fedplug") or str(Path(__file__).parents[2] / ".venv" / "bin" / "fedplug")


#: a round done, in the progress bar ("3/100000") or in a plain line per round ("round 3")
ROUND_DONE = re.compile(r"\b[1-9]\d*/100000\b|\bround[ :]+[1-9]")


def _interrupt(args: list[str], tmp_path: Path) -> tuple[int, int, str, float]:
    """Run the demo, interrupt it once rounds run: its process group, status, stderr, seconds."""
    proc = subprocess.Popen(
        [FEDPLUG, "demo", "--rounds", "100000", "--out", str(tmp_path / "out"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not ROUND_DONE.search("".join(err)):
            assert proc.poll() is None, "".join(err)
            assert time.monotonic() < deadline, "the demo did not start its rounds"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        start = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=10)
    return proc.pid, proc.returncode, "".join(err), took


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    marks = ("gcs_server", "raylet", "ray::", "default_worker.py")
    return [line for line in out.splitlines()[1:] if any(m in line for m in marks)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["--workers", "3"],  # torch on 3 threads
        ["--transport", "grpc"],  # 3 node processes
        ["--transport", "ray", "--nodes", "200", "--plan", "sklearn"],  # a Ray instance, 2 actors
    ],
    ids=["threads", "grpc", "ray"],
)
def test_ctrl_c_stops_the_demo_at_once_with_status_130(tmp_path, args, wait_process_group_gone):
    group, status, err, took = _interrupt(args, tmp_path)
    wait_process_group_gone(group)
    deadline = time.monotonic() + 20  # Ray's daemons (gcs_server, raylet, workers) too
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(), _ray_processes()[:5]
    assert status == 130, err
    assert err.rstrip().endswith("fedplug: interrupted"), err
    assert "Traceback" not in err and "did not answer" not in err, err
    assert took < 5, f"stopping took {took:.1f} s"
