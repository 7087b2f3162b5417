"""The ``fedplug`` command: help, argument errors, listings, and how errors are reported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedplug import ConfigError, hookimpl
from fedplug.cli import main
from fedplug.plugins import get_plugin_manager


def test_help_exits_zero_and_lists_every_plugins_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command, what in [
        ("plugins", "list installed plugins"),  # core's
        ("optimizers", "list the optimizer modules"),  # core's
        ("node", "run a hospital's node"),  # fedplug-grpc's
        ("certs", "TLS certificates"),  # fedplug-grpc's
        ("demo", "run a federated experiment"),  # fedplug-demo's
    ]:
        assert re.search(rf"^    {command}\s+{what}", out, re.MULTILINE), command


class HelloPlugin:
    def __init__(self, name="hello", fail_with=None):
        self.name, self.fail_with = name, fail_with

    @hookimpl
    def fedplug_register_commands(self, register):
        register(self.name, self.setup)

    def setup(self, parser):
        """greet someone (a test command)"""
        parser.add_argument("who")
        parser.add_argument("--shout", action="store_true")
        return self.run

    def run(self, args):
        if self.fail_with is not None:
            raise self.fail_with
        text = f"hello, {args.who}"
        print(text.upper() if args.shout else text)
        return 7


def test_hook_fedplug_register_commands(capsys):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(HelloPlugin(), name="greeter")
    assert sorted(pm.commands) == ["hello", "optimizers", "plugins"]
    assert pm.commands.owner("hello") == "greeter"
    assert main(["hello", "world", "--shout"], plugin_manager=pm) == 7
    assert capsys.readouterr().out == "HELLO, WORLD\n"
    with pytest.raises(SystemExit):
        main(["--help"], plugin_manager=pm)
    assert re.search(r"^    hello\s+greet someone", capsys.readouterr().out, re.MULTILINE)
    # without the plugin, no such command
    with pytest.raises(SystemExit) as info:
        main(["hello", "world"], plugin_manager=get_plugin_manager(load_entry_points=False))
    assert info.value.code == 2 and "invalid choice: 'hello'" in capsys.readouterr().err


def test_a_command_whose_plugin_breaks_is_left_out_and_the_rest_works(capsys):
    class Broken:
        @hookimpl
        def fedplug_register_commands(self, register):
            register("broken", "no_such_module_anywhere:setup")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Broken(), name="broken-plugin")
    pm.register(HelloPlugin(), name="greeter")
    with pytest.warns(
        RuntimeWarning, match="command 'broken' of plugin 'broken-plugin' is left out"
    ):
        assert main(["hello", "you"], plugin_manager=pm) == 7
    assert capsys.readouterr().out == "hello, you\n"


def test_a_command_name_two_plugins_register_is_a_conflict_fedplug_plugins_reports(capsys):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(HelloPlugin(), name="first")
    pm.register(HelloPlugin(), name="second")
    with pytest.warns(RuntimeWarning, match=r"command 'hello' is registered by plugins"):
        status = main(["plugins"], plugin_manager=pm)
    assert status == 1
    captured = capsys.readouterr()
    assert "command name 'hello' is registered by 'first' and 'second'" in captured.err
    assert "FEDPLUG_DISABLE_PLUGINS" in captured.err
    assert "first (" in captured.out and "second (" in captured.out


def test_fedplug_plugins_lists_what_each_plugin_registers(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^grpc \(fedplug-grpc [\d.]+\)\n  transports +grpc\n  commands +certs, node$",
        out,
        re.MULTILINE,
    )
    assert re.search(r"^  training plans +torch-mlp$", out, re.MULTILINE)
    assert max(len(line) for line in out.splitlines()) <= 120


def test_a_fedplug_error_is_reported_with_exit_status_2(capsys):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(HelloPlugin(fail_with=ConfigError("no greeting today")), name="greeter")
    assert main(["hello", "x"], plugin_manager=pm) == 2
    err = capsys.readouterr().err
    assert err == "fedplug: error: no greeting today\n"


def test_an_interrupted_command_exits_130(capsys):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(HelloPlugin(fail_with=KeyboardInterrupt()), name="greeter")
    assert main(["hello", "x"], plugin_manager=pm) == 130
    assert "fedplug: interrupted" in capsys.readouterr().err


def test_no_command_prints_help():
    assert main([]) == 0


def test_the_console_script_is_installed():
    script = shutil.which("fedplug", path=str(Path(sys.executable).parent))
    assert script is not None, "the fedplug distribution should install a `fedplug` command"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage: fedplug" in result.stdout


def test_optimizers_json_lists_modules_regularizers_and_schedulers(capsys):
    assert main(["optimizers", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == {"modules", "regularizers", "schedulers"}
    assert "adam" in listing["modules"]
    assert "fedprox" in listing["regularizers"]
    assert "warmup" in listing["schedulers"]
    assert listing["modules"]["momentum"]["beta"] == 0.9  # each entry's default settings


def test_optimizers_table(capsys):
    assert main(["optimizers"]) == 0
    out = capsys.readouterr().out
    assert "modules:" in out and "regularizers:" in out and "schedulers:" in out
    assert "scaffold-client" in out and "fedprox" in out


def test_a_reader_that_stops_early_gets_no_traceback():
    script = shutil.which("fedplug", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        f"'{script}' optimizers | head -1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "modules:\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
