"""Fixtures shared by every test folder."""

import pytest


@pytest.fixture(autouse=True)
def _plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the installed plugins, whatever the developer's shell exports."""
    monkeypatch.delenv("FEDPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("FEDPLUG_STRICT_PLUGINS", raising=False)
