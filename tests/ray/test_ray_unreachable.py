"""A Ray cluster address where nothing listens is refused at once, named, with how to start
one, where ``ray.init`` alone would retry it for minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fedplug_ray.transport import _check_reachable

from fedplug.errors import ConfigError

FEDPLUG = Path(sys.executable).with_name("fedplug")


def test_the_demo_with_a_ray_address_where_nothing_listens_exits_2_at_once(
    tmp_path, closed_port, ray_daemons
):
    port = closed_port
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    start = time.monotonic()
    result = subprocess.run(
        [str(FEDPLUG), "demo", "--transport", "ray", "--rounds", "1", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - start < 30
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("fedplug: error: no Ray cluster answers at ")
    assert f":{port}' (RAY_ADDRESS) (Connection refused)" in err
    assert f"`ray start --head --port={port}`" in err
    assert "Traceback" not in result.stderr and not ray_daemons()


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1:{port}", "no Ray cluster answers at '127.0.0.1:{port}' (Connection refused)"),
        ("ray://127.0.0.1:{port}", "Ray Client server listens on port 10001"),
        ("nohost.invalid:6379", "no Ray cluster answers at 'nohost.invalid:6379'"),
    ],
)
def test_an_address_where_nothing_listens_is_named(monkeypatch, closed_port, address, says):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = closed_port
    with pytest.raises(ConfigError) as info:
        _check_reachable(address.format(port=port))
    assert says.format(port=port) in str(info.value)
