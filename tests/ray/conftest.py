"""A real Ray cluster for the Ray transport's tests: a head and one worker node, two Ray nodes on
loopback (``ray start``), started once for the module and stopped after it, with every Ray process
gone (checked)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_processes() -> list[str]:
    """Ray's daemons on this machine (gcs_server, raylet, workers), as ``ps`` lists them."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    marks = ("gcs_server", "raylet", "ray::", "default_worker.py", "ray/_private")
    return [line for line in out.splitlines()[1:] if any(m in line for m in marks)]


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAY), *args], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
    )


@pytest.fixture(scope="module")
def ray_cluster():
    """``address`` of a two-node Ray cluster on this machine (2 CPUs per node; the worker node
    declares 2 GPUs, which Ray assigns as it would real ones)."""
    if not RAY.exists():
        pytest.fail(f"{RAY} missing: install fedplug-ray (make test installs it)")
    if ray_processes():
        pytest.fail(f"Ray processes already run on this machine: {ray_processes()[:3]}")
    temp = Path(tempfile.mkdtemp(prefix="fpr-", dir="/tmp"))  # short: socket paths are limited
    port = free_port()
    # token authentication, as Ray turns it on by default: one token for the head, the worker
    # node and this process (the driver), given explicitly, as on a cluster of several machines
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
    common = ["--num-cpus=2", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        head = _ray(
            "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}", "--include-dashboard=false", *common, env=env,
        )  # fmt: skip
        assert head.returncode == 0, head.stdout + head.stderr
        address = f"127.0.0.1:{port}"
        worker = _ray(  # with two GPUs declared (none installed): Ray's GPU bookkeeping
            "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-gpus=2",
            *common, env=env,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _ray("stop", "--force", env=env)
        deadline = time.monotonic() + 30
        while ray_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    left = ray_processes()
    assert not left, f"Ray processes left behind: {left[:5]}"


@pytest.fixture
def closed_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    return free_port()


@pytest.fixture
def ray_daemons():
    """``ray_daemons()``: the Ray processes running on this machine now."""
    return ray_processes
