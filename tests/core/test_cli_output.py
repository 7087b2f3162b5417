"""What the ``fedplug`` command prints on a terminal: ``fedplug plugins`` and ``fedplug optimizers``
fit 80 columns (names wrapped, never cut), ``fedplug --version``, and no traceback when the
reader of a pipe stops early."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedplug import hookimpl
from fedplug.cli import main
from fedplug.plugins import get_plugin_manager

FEDPLUG = shutil.which("fedplug", path=str(Path(sys.executable).parent))


def words(text: str) -> set[str]:
    return set(re.split(r"[\s,]+", text))


def test_fedplug_plugins_fits_80_columns_and_wraps_names_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    # core's built-in plugins are one entry, first, with all core registers
    assert lines[0] == f"fedplug {importlib.metadata.version('fedplug')} (core)"
    assert "fedplug.builtin." not in out
    core = out.split("\n", 1)[1].split("\ndemo (", 1)[0]
    for label, names in [
        ("training plans", "numpy-logreg"),
        ("aggregators", "fedavg, median"),
        ("dataset types", "csv, numpy"),
        ("transports", "local"),
        ("commands", "optimizers, plugins"),
    ]:
        assert re.search(rf"^  {label} +{names}$", core, re.MULTILINE), label
    # a long list wraps under its column, every name whole
    pm = get_plugin_manager()
    modules = sorted(pm.optimizer_modules)
    assert len(modules) > 20
    assert set(modules) <= words(out)
    continuation = [line for line in lines if line.startswith(" " * 21) and line.strip()]
    assert continuation, "the optimizer modules should need more than one line at 80 columns"
    assert all(line[21] != " " for line in continuation)
    # names a user needs, not hook names
    assert "model_adapter" not in out and "validate_experiment" not in out
    assert re.search(r"^torch \(fedplug-torch [\d.]+\)\n  training plans +torch-mlp$", out, re.M)


def test_fedplug_plugins_uses_a_wide_terminal_up_to_120_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["plugins"]) == 0
    longest = max(len(line) for line in capsys.readouterr().out.splitlines())
    assert 80 < longest <= 120


def test_fedplug_plugins_hooks_is_the_detailed_view(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plugins", "--hooks"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert re.search(
        r"^fedplug\.builtin\.serving \(fedplug [\d.]+\)\n  hooks +node_request$", out, re.M
    )
    assert re.search(
        r"^sklearn \(fedplug-sklearn [\d.]+\)\n  training plans .*\n(?: .*\n)*?"
        r"  hooks +model_adapter, validate_experiment$",
        out,
        re.M,
    )
    with pytest.raises(SystemExit) as info:
        main(["plugins", "--hooks", "--json"])
    assert info.value.code == 2


class TrackerPlugin:
    @hookimpl
    def fedplug_register_trackers(self, register):
        register("board", lambda experiment: object())


class CheckerPlugin:
    @hookimpl
    def fedplug_validate_experiment(self, config):
        pass


def test_fedplug_plugins_lists_trackers_and_a_plugin_of_hooks_only(capsys):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(TrackerPlugin(), name="boards")
    pm.register(CheckerPlugin(), name="checker")
    assert main(["plugins"], plugin_manager=pm) == 0
    out = capsys.readouterr().out
    assert re.search(r"^boards \(no distribution\)\n  trackers +board$", out, re.M)
    assert re.search(r"^checker \(no distribution\)\n  hooks +validate_experiment$", out, re.M)


def test_fedplug_version_names_fedplug_and_each_plugin_distribution(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    version = importlib.metadata.version("fedplug")
    assert lines[0] == f"fedplug {version} (Python {platform.python_version()})"
    assert lines[1] == "plugin distributions:"
    for dist, plugin in [("fedplug-grpc", "grpc"), ("fedplug-torch", "torch")]:
        pattern = rf"  {dist} {re.escape(importlib.metadata.version(dist))} +plugin {plugin}"
        assert any(re.fullmatch(pattern, line) for line in lines), dist
    assert not any("fedplug.builtin" in line for line in lines)


def test_fedplug_version_with_core_alone(capsys):
    with pytest.raises(SystemExit):
        main(["--version"], plugin_manager=get_plugin_manager(load_entry_points=False))
    assert capsys.readouterr().out.splitlines() == [
        f"fedplug {importlib.metadata.version('fedplug')} (Python {platform.python_version()})"
    ]


def test_fedplug_optimizers_fits_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["optimizers"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert re.search(
        r"^  adam +beta_1=0\.9, beta_2=0\.99, amsgrad=False,\n {10,}eps=1e-07", out, re.M
    )


def buffered_env() -> dict[str, str]:
    """The environment of a user's shell: stdout block-buffered into a pipe."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("argv", [["optimizers"], ["plugins"], ["--version"], ["--help"]])
def test_a_reader_gone_before_the_output_gets_no_traceback(argv):
    read, write = os.pipe()
    os.close(read)  # as `fedplug ... | true`: nobody reads, every write is a broken pipe
    try:
        result = subprocess.run(
            [FEDPLUG, *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=buffered_env(),
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr
    assert result.returncode == 141


def test_fedplug_optimizers_piped_to_head_ends_quietly():
    result = subprocess.run(
        f"'{FEDPLUG}' optimizers | head -2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=buffered_env(),
    )
    assert result.stdout.splitlines()[0] == "modules:"
    assert result.stderr == ""
