"""Ctrl-C stops a run at once, wherever the nodes train: a real SIGINT sent to the researcher's
process group, as a terminal sends it. The run ends within seconds (not after the round's
training), no node is reported as failed, the model and the checkpoint are the last good
round's, and no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedplug.experiment.checkpoints import latest_checkpoint, read_state

SCRIPT = Path(__file__).parent / "scripts" / "interrupted.py"


@pytest.mark.parametrize("mode", ["inline", "threads", "processes"])
def test_ctrl_c_stops_the_run_at_once_and_keeps_the_last_good_round(
    tmp_path, mode, wait_process_group_gone
):
    checkpoints = tmp_path / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(checkpoints)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        first = proc.stdout.readline()  # "round 1": a round was applied and checkpointed
        assert first.startswith("round "), first + proc.stderr.read()
        time.sleep(0.2)  # into the next round's training
        os.killpg(proc.pid, signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert took < 3.0, f"the run took {took:.1f} s to stop"
    lines = out.splitlines()
    assert lines[-1].startswith("interrupted at round "), out
    last = int(lines[-1].rsplit(" ", 1)[1])
    assert last >= 1 and f"round {last}" in [first.strip(), *lines]
    assert "Traceback" not in err and "did not answer" not in err, err
    wait_process_group_gone(proc.pid)  # the worker processes too
    # the latest checkpoint is the last applied round's, whole (written atomically)
    latest = latest_checkpoint(checkpoints)
    arrays, meta = read_state(latest)
    assert meta["round_index"] == last, meta
    assert all(np.isfinite(value).all() for value in arrays.values())
