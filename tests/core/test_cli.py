"""The ``fedplug`` command: help, argument errors, listings, and how errors are reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedplug.cli import main


def test_help_exits_zero_and_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "plugins", "optimizers"):
        assert command in out


def test_no_command_prints_help():
    assert main([]) == 0


def test_the_console_script_is_installed():
    script = shutil.which("fedplug", path=str(Path(sys.executable).parent))
    assert script is not None, "the fedplug distribution should install a `fedplug` command"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage: fedplug" in result.stdout


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--rounds", "0"], "--rounds: expected a positive integer, got '0'"),
        (["demo", "--rounds", "-3"], "--rounds: expected a positive integer"),
        (["demo", "--rounds", "many"], "--rounds: expected a positive integer, got 'many'"),
        (["demo", "--nodes", "0"], "--nodes: expected a positive integer"),
        (["demo", "--workers", "0"], "--workers: expected a positive integer"),
        (["demo", "--plan", "tensorflow"], "--plan: invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


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


def test_a_fedplug_error_is_reported_with_exit_status_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", "sklearn")
    status = main(["demo", "--plan", "sklearn", "--rounds", "1", "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug: error: ")
    assert "sklearn-sgd" in err and "pip install fedplug-sklearn" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_command_exits_130(capsys, monkeypatch):
    import fedplug.demo

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedplug.demo, "run_demo", interrupted)
    assert main(["demo", "--rounds", "1"]) == 130
    assert "fedplug: interrupted" in capsys.readouterr().err
