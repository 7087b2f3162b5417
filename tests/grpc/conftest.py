"""Fixtures of the gRPC tests; the helpers live in support.py (see its docstring)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "grpc_support_for_conftest", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = support  # inspect.getsource() finds SlowPlan's source there
_spec.loader.exec_module(support)


@pytest.fixture(scope="session")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster = support.Cluster(
        tmp_path_factory.mktemp("cluster"), max_reply_bytes=support.REPLY_LIMIT
    )
    try:
        cluster.deployment.start_all()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(_cluster: Any) -> Any:
    """The session's cluster, every node connected."""
    _cluster.ensure()
    return _cluster
