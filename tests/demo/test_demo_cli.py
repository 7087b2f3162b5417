"""``fedplug demo``, fedplug-demo's command: its arguments, and how its errors are reported."""

from __future__ import annotations

import pytest

from fedplug.cli import main


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
    import fedplug_demo.demo

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedplug_demo.demo, "run_demo", interrupted)
    assert main(["demo", "--rounds", "1"]) == 130
    assert "fedplug: interrupted" in capsys.readouterr().err
