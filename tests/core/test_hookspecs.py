"""The hook contract: every hook is documented and tested (datasette's two guard tests).

This file must not spell out hook names itself: the coverage check below scans the other test
files, and a hook added to ``fedplug.hookspecs`` without a test there makes it fail.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fedplug import get_plugin_manager, hookspecs
from fedplug.plugins import DEFAULT_PLUGINS

TESTS = Path(__file__).resolve().parents[1]
PREFIX = "fedplug_"


def hook_specs() -> list:
    return [
        function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith(PREFIX)
    ]


HOOKS = hook_specs()


def test_the_hookspecs_module_declares_hooks():
    assert len(HOOKS) >= 13
    for function in HOOKS:
        assert hasattr(function, "fedplug_spec"), f"{function.__name__} is not a @hookspec"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.__name__)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(hook)
    assert doc, f"{hook.__name__} has no docstring"
    for arg in inspect.signature(hook).parameters:
        assert re.search(rf"^:param {arg}:", doc, re.MULTILINE), (
            f"{hook.__name__}'s docstring does not document its argument {arg!r} with :param:"
        )
    assert re.search(r"^:return:", doc, re.MULTILINE), f"{hook.__name__} has no :return:"
    # each docstring says whether the hook stops at the first non-None result (pytest's rule)
    if hook.fedplug_spec.get("firstresult"):
        assert "first non-None" in doc, f"{hook.__name__} is firstresult but does not say so"
    else:
        assert "Every implementation runs" in doc, f"{hook.__name__} does not say all run"


def _test_sources() -> dict[Path, str]:
    return {
        path: path.read_text(encoding="utf-8")
        for path in TESTS.rglob("*.py")
        if path.resolve() != Path(__file__).resolve()
    }


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.__name__)
def test_every_hook_has_a_test(hook):
    users = [path for path, text in _test_sources().items() if hook.__name__ in text]
    assert users, (
        f"no test file under {TESTS} mentions {hook.__name__}; add a test that registers an "
        "implementation of it and checks its effect"
    )


def test_installed_plugins_implement_only_declared_hooks():
    # pluggy refuses unknown fedplug_* implementations only when asked: a typo in a plugin's
    # hook name would otherwise be silently ignored.
    pm = get_plugin_manager()
    pm.check_pending()
    names = {name for name, _ in pm.list_name_plugin()}
    assert {*DEFAULT_PLUGINS, "torch", "sklearn", "secagg", "grpc", "demo", "flamby"} <= names


GUIDE = TESTS.parent / "docs" / "plugins.md"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.__name__)
def test_every_hook_has_a_row_in_the_plugin_guide(hook):
    rows = [line for line in GUIDE.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    signature = f"`{hook.__name__}({', '.join(inspect.signature(hook).parameters)})`"
    assert any(row.startswith(f"| {signature} |") for row in rows), (
        f"docs/plugins.md has no table row for {signature}"
    )
