"""fedplug-flamby without FLamby, and fedplug-flamby as the only plugin beside fedplug-torch.

Each check runs in a fresh interpreter: ``sys.modules["flamby"] = None`` makes ``import flamby``
fail there (even though the FLamby double is on ``PYTHONPATH``), and ``sys.modules`` is not shared
with this test run.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from flamby_double_support import license_file

from fedplug.plugins import DEFAULT_PLUGINS

INSTALL = "pip install git+https://github.com/owkin/FLamby"
FEDPLUG = Path(sys.executable).parent / "fedplug"


def run_python(code: str, cwd: Path, env: dict[str, str]) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is a JSON report."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_flamby_every_entry_point_says_how_to_install_it(tmp_path, child_env):
    report = run_python(
        """
        import json, sys
        sys.modules["flamby"] = None  # `import flamby` now raises ImportError

        from fedplug.errors import PluginError
        from fedplug_flamby import (
            FlambyTrainingPlan, flamby_experiment, flamby_nodes, flamby_plan, load_flamby
        )

        calls = {
            "load_flamby": lambda: load_flamby(dataset="fed_tcga_brca", center=0),
            "flamby_plan": lambda: flamby_plan("fed_tcga_brca")(),
            "generic_plan": lambda: FlambyTrainingPlan({"dataset": "fed_tcga_brca"}),
            "flamby_nodes": lambda: flamby_nodes("fed_tcga_brca"),
            "flamby_experiment": lambda: flamby_experiment(
                "fed_tcga_brca", accept_license=True
            ),
        }
        report = {}
        for name, call in calls.items():
            try:
                call()
            except PluginError as exc:
                report[name] = str(exc)
            except Exception as exc:
                report[name] = f"WRONG {type(exc).__name__}: {exc}"
            else:
                report[name] = "WRONG: no error"
        print(json.dumps(report))
        """,
        tmp_path,
        child_env(),
    )
    for name, message in report.items():
        assert not message.startswith("WRONG"), (name, message)
        assert message.startswith("FLamby is not installed"), (name, message)
        assert INSTALL in message, (name, message)
        assert "flamby[tcga]" in message, (name, message)  # the dataset's extra
    assert not license_file().exists()


def test_without_flamby_the_demo_exits_2_with_the_install_instruction(tmp_path, child_env):
    # The installed command, in a child whose `flamby` is blocked before fedplug runs.
    code = (
        "import sys; sys.modules['flamby'] = None; "
        "from fedplug.cli import main; "
        "sys.exit(main(['demo', '--flamby', 'fed_tcga_brca', '--accept-license', '--json']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fedplug: error: FLamby is not installed")
    assert INSTALL in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "fedplug-demo").exists()


def test_the_installed_command_without_flamby_on_the_path(tmp_path, child_env):
    """The real situation: FLamby not installed at all (no double on the path)."""
    env = child_env()
    env.pop("PYTHONPATH")
    result = subprocess.run(
        [str(FEDPLUG), "demo", "--flamby", "fed_tcga_brca"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "FLamby is not installed" in result.stderr and INSTALL in result.stderr
    assert "Traceback" not in result.stderr


def test_the_plugin_works_with_only_core_and_fedplug_torch(tmp_path, child_env):
    report = run_python(
        """
        import json, sys
        sys.modules["fedplug_sklearn"] = None  # as if fedplug-sklearn were not installed
        sys.modules["fedplug_secagg"] = None  # nor fedplug-secagg
        sys.modules["sklearn"] = None

        from fedplug import get_plugin_manager
        from fedplug_flamby import flamby_experiment, flamby_results

        pm = get_plugin_manager()
        exp = flamby_experiment(
            "fed_tcga_brca", accept_license=True, round_limit=1, seed=0, progress=False
        )
        history = exp.run()
        exp.close()
        print(json.dumps({
            "plugins": {info.name: [info.error, info.disabled] for info in pm.plugin_infos()},
            "rounds": len(history),
            "nodes": history[-1]["nodes"],
            "c_index": flamby_results(history, "c_index")["mean"],
            "sklearn": [m for m in sys.modules if m.startswith("sklearn") and sys.modules[m]],
        }))
        """,
        tmp_path,
        child_env(FEDPLUG_DISABLE_PLUGINS="sklearn,secagg,grpc,demo,tensorboard,mlflow,ray"),
    )
    assert report["plugins"] == {
        **{name: [None, False] for name in DEFAULT_PLUGINS},
        "flamby": [None, False],
        "sklearn": [None, True],  # FEDPLUG_DISABLE_PLUGINS: listed as disabled, not loaded
        "secagg": [None, True],
        "grpc": [None, True],
        "demo": [None, True],
        "tensorboard": [None, True],
        "mlflow": [None, True],
        "ray": [None, True],
        "torch": [None, False],
    }
    assert report["rounds"] == 1
    assert report["nodes"] == [f"center{c}" for c in range(6)]
    assert 0.5 < report["c_index"] <= 1.0
    assert report["sklearn"] == []


def test_the_distribution_depends_only_on_fedplug_fedplug_torch_and_torch():
    requirements = importlib.metadata.requires("fedplug-flamby")
    names = {re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower() for req in requirements}
    assert names == {"fedplug", "fedplug-torch", "torch"}
    entry_points = importlib.metadata.distribution("fedplug-flamby").entry_points
    assert [(ep.group, ep.name, ep.value) for ep in entry_points] == [
        ("fedplug", "flamby", "fedplug_flamby.plugin")
    ]


def test_importing_the_plugin_and_loading_plugins_imports_neither_torch_nor_flamby(
    tmp_path, child_env
):
    report = run_python(
        """
        import json, sys
        import fedplug_flamby
        import fedplug_flamby.plugin
        from fedplug import get_plugin_manager

        pm = get_plugin_manager()
        plans = sorted(name for name in pm.training_plans if name.startswith("flamby"))
        types = sorted(pm.dataset_types)
        loader = pm.dataset_types["flamby"]  # the dataset type itself is cheap to resolve
        print(json.dumps({
            "plans": plans,
            "types": types,
            "loader": f"{loader.__module__}.{loader.__qualname__}",
            "all": sorted(fedplug_flamby.__all__),
            "imported": sorted(
                name for name in sys.modules
                if name.split(".")[0] in ("torch", "flamby", "declearn")
            ),
        }))
        """,
        tmp_path,
        child_env(),
    )
    assert report["imported"] == []
    assert report["plans"] == ["flamby"] + [
        f"flamby-{name}"
        for name in sorted(
            [
                "fed_tcga_brca",
                "fed_heart_disease",
                "fed_ixi",
                "fed_isic2019",
                "fed_camelyon16",
                "fed_kits19",
                "fed_lidc_idri",
                "fed_synthetic",
            ]
        )
    ]
    assert "flamby" in report["types"]
    assert report["loader"] == "fedplug_flamby.datasets.load_flamby"
    assert "flamby_experiment" in report["all"] and "load_flamby" in report["all"]
