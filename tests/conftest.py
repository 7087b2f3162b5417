"""Fixtures shared by every test folder."""

import pytest

from fedplug.node import local_nodes


@pytest.fixture(autouse=True)
def _stop_nodes_created_by_the_test():
    """Nodes run until stopped, and experiments that name only tags find running nodes: stop the
    ones a test created, so that no later test sees them."""
    before = {id(node) for node in local_nodes()}
    yield
    for node in local_nodes():
        if id(node) not in before:
            node.stop()
