"""The plugin host: fresh managers, entry-point discovery, broken and disabled plugins, registries."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedplug import (
    Aggregator,
    FedAverage,
    LogisticRegressionPlan,
    PluginError,
    get_plugin_manager,
    hookimpl,
)
from fedplug.cli import main
from fedplug.plugins import DEFAULT_PLUGINS

# -- helpers ------------------------------------------------------------------------------------


class AggregatorPlugin:
    """Registers ``FedAverage`` under each of ``names``."""

    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def fedplug_register_aggregators(self, register):
        for name in self.names:
            register(name, FedAverage)


class PlanPlugin:
    """Registers ``obj`` as a training plan named ``name``."""

    def __init__(self, name: str, obj: object) -> None:
        self.name, self.obj = name, obj

    @hookimpl
    def fedplug_register_training_plans(self, register):
        register(self.name, self.obj)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """Write an importable module into ``tmp_path``; ``plugin_module(source)`` returns its name.

    Names are unique per call; every such module is removed from ``sys.modules`` afterwards.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str, prefix: str = "fp_test_plugin") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Make ``importlib.metadata.entry_points`` (as fedplug.plugins calls it) return ``eps`` only."""

    def install(*eps: importlib.metadata.EntryPoint) -> None:
        def fake(**params):
            return importlib.metadata.EntryPoints(eps).select(**params)

        monkeypatch.setattr(importlib.metadata, "entry_points", fake)

    return install


def ep(name: str, module: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=module, group="fedplug")


GOOD_PLUGIN = """
    from fedplug import FedAverage, hookimpl

    @hookimpl
    def fedplug_register_aggregators(register):
        register("good-agg", FedAverage)
"""


def infos_by_name(pm) -> dict:
    return {info.name: info for info in pm.plugin_infos()}


# -- fresh managers and the built-in plugin -----------------------------------------------------


def test_each_call_builds_an_independent_manager(fresh_pm):
    other = get_plugin_manager(load_entry_points=False)
    assert other is not fresh_pm
    fresh_pm.register(AggregatorPlugin("only-here"), name="extra")
    assert "only-here" in fresh_pm.aggregators
    assert "only-here" not in other.aggregators
    assert "only-here" not in get_plugin_manager(load_entry_points=False).aggregators


def test_builtin_plugins_provide_core_contributions_one_concern_each(fresh_pm):
    infos = fresh_pm.plugin_infos()
    assert [info.name for info in infos] == sorted(DEFAULT_PLUGINS)
    assert {info.distribution for info in infos} == {"fedplug"}
    assert {"fedavg", "median"} <= set(fresh_pm.aggregators)
    assert fresh_pm.training_plans["numpy-logreg"] is LogisticRegressionPlan
    assert {"numpy", "csv"} <= set(fresh_pm.dataset_types)
    assert isinstance(fresh_pm.aggregators["fedavg"](), Aggregator)
    assert fresh_pm.aggregators.owner("fedavg") == "fedplug.builtin.aggregators"
    assert fresh_pm.transports.owner("local") == "fedplug.builtin.transports"
    # each built-in module registers into one registry at most
    for info in infos:
        assert len(info.registers) <= 1, info


def test_registries_follow_register_and_unregister(fresh_pm):
    assert "late" not in fresh_pm.aggregators  # builds (and caches) the registry
    plugin = AggregatorPlugin("late")
    fresh_pm.register(plugin, name="late-plugin")
    assert fresh_pm.aggregators["late"] is FedAverage
    assert fresh_pm.aggregators.owner("late") == "late-plugin"
    fresh_pm.unregister(plugin)
    assert "late" not in fresh_pm.aggregators


# -- entry-point discovery ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ("raise ImportError('needs frobnicate, which is not installed')", "ImportError"),
        ("1 / 0", "ZeroDivisionError"),
        ("def broken(:\n    pass", "SyntaxError"),
        (  # a hook implementation whose arguments do not match the spec
            "from fedplug import hookimpl\n\n@hookimpl\ndef fedplug_register_aggregators(reg):\n"
            "    pass",
            "PluginValidationError",
        ),
    ],
)
def test_a_broken_plugin_is_reported_and_does_not_break_others(
    plugin_module, entry_points, body, error_type
):
    broken = plugin_module(body)
    good = plugin_module(GOOD_PLUGIN)
    entry_points(ep("broken", broken), ep("good", good))  # the broken one is loaded first

    with pytest.warns(RuntimeWarning, match=r"plugin 'broken' .* failed to load") as record:
        pm = get_plugin_manager()
    assert "FEDPLUG_STRICT_PLUGINS" in str(record[0].message)

    infos = infos_by_name(pm)
    assert set(infos) == {*DEFAULT_PLUGINS, "broken", "good"}
    assert infos["broken"].error is not None
    assert infos["broken"].error.startswith(error_type)
    assert infos["broken"].hooks == []
    assert infos["good"].error is None
    assert infos["good"].hooks == ["fedplug_register_aggregators"]
    assert pm.aggregators["good-agg"] is FedAverage
    assert "fedavg" in pm.aggregators


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_module, entry_points, monkeypatch):
    broken = plugin_module("raise ImportError('needs frobnicate')")
    entry_points(ep("broken", broken))
    monkeypatch.setenv("FEDPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="frobnicate") as info:
        get_plugin_manager()
    assert "'broken'" in str(info.value)
    assert broken in str(info.value)  # names the entry point's target


def test_strict_mode_off_when_set_to_zero(plugin_module, entry_points, monkeypatch):
    broken = plugin_module("raise ImportError('needs frobnicate')")
    entry_points(ep("broken", broken))
    monkeypatch.setenv("FEDPLUG_STRICT_PLUGINS", "0")
    with pytest.warns(RuntimeWarning, match="frobnicate"):
        pm = get_plugin_manager()
    assert "frobnicate" in infos_by_name(pm)["broken"].error


def test_disabled_plugins_are_not_imported_and_are_listed(plugin_module, entry_points, monkeypatch):
    broken = plugin_module("raise ImportError('must not be imported')")
    good = plugin_module(GOOD_PLUGIN)
    other = plugin_module(GOOD_PLUGIN.replace("good-agg", "other-agg"))
    entry_points(ep("broken", broken), ep("good", good), ep("other", other))
    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", " broken, good ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken plugin is never imported: no warning
        pm = get_plugin_manager()

    infos = infos_by_name(pm)
    assert infos["broken"].disabled and infos["good"].disabled
    assert infos["broken"].error is None
    assert not infos["other"].disabled
    assert broken not in sys.modules and good not in sys.modules
    assert "good-agg" not in pm.aggregators
    assert pm.aggregators["other-agg"] is FedAverage


def test_distribution_and_version_come_from_the_entry_points_distribution(
    tmp_path, plugin_module, entry_points
):
    module = plugin_module(GOOD_PLUGIN)
    info_dir = tmp_path / "fp_dist_demo-1.2.3.dist-info"
    info_dir.mkdir()
    (info_dir / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fp-dist-demo\nVersion: 1.2.3\n"
    )
    (info_dir / "entry_points.txt").write_text(f"[fedplug]\ndistdemo = {module}\n")
    dist = importlib.metadata.PathDistribution(info_dir)
    entry_points(*dist.entry_points)

    info = infos_by_name(get_plugin_manager())["distdemo"]
    assert (info.distribution, info.version) == ("fp-dist-demo", "1.2.3")
    assert info.hooks == ["fedplug_register_aggregators"]


def test_entry_points_are_not_loaded_when_asked_not_to(plugin_module, entry_points):
    good = plugin_module(GOOD_PLUGIN)
    entry_points(ep("good", good))
    pm = get_plugin_manager(load_entry_points=False)
    assert "good" not in infos_by_name(pm)
    assert good not in sys.modules
    assert "good" in infos_by_name(get_plugin_manager())


# -- registries: duplicates, types, unknown names -----------------------------------------------


def test_duplicate_names_name_both_plugins(fresh_pm):
    fresh_pm.register(AggregatorPlugin("twin"), name="first-plugin")
    fresh_pm.register(AggregatorPlugin("twin"), name="second-plugin")
    with pytest.raises(PluginError, match="'twin'") as info:
        fresh_pm.aggregators  # noqa: B018 (building the registry is the point)
    assert "first-plugin" in str(info.value)
    assert "second-plugin" in str(info.value)


def test_a_plugin_cannot_take_a_builtin_name(fresh_pm):
    fresh_pm.register(AggregatorPlugin("fedavg"), name="usurper")
    with pytest.raises(PluginError, match="'fedavg'") as info:
        fresh_pm.aggregators  # noqa: B018
    assert "'fedplug.builtin.aggregators'" in str(info.value)
    assert "'usurper'" in str(info.value)


class NotAPlan:
    """Has the methods of a plan but does not derive from TrainingPlan."""

    def train(self, dataset, args): ...


@pytest.mark.parametrize("obj", [NotAPlan, LogisticRegressionPlan({"n_features": 2}), 42])
def test_a_plan_that_is_not_a_training_plan_subclass_is_refused(fresh_pm, obj):
    fresh_pm.register(PlanPlugin("bogus", obj), name="sloppy")
    with pytest.raises(PluginError, match="TrainingPlan") as info:
        fresh_pm.training_plans  # noqa: B018
    assert "'sloppy'" in str(info.value)
    assert "'bogus'" in str(info.value)


def test_an_aggregator_that_is_not_callable_is_refused(fresh_pm):
    class Plugin:
        @hookimpl
        def fedplug_register_aggregators(self, register):
            register("number", 42)

    fresh_pm.register(Plugin(), name="sloppy")
    with pytest.raises(PluginError, match="callable"):
        fresh_pm.aggregators  # noqa: B018


@pytest.mark.parametrize("name", ["", None, 3])
def test_invalid_registered_names_are_refused(fresh_pm, name):
    fresh_pm.register(AggregatorPlugin(name), name="sloppy")
    with pytest.raises(PluginError, match="registered an aggregator with an invalid name"):
        fresh_pm.aggregators  # noqa: B018


def test_a_failing_registration_hook_is_a_plugin_error_naming_the_plugin(fresh_pm):
    class Plugin:
        @hookimpl
        def fedplug_register_dataset_types(self, register):
            raise KeyError("oops")

    fresh_pm.register(Plugin(), name="crashy")
    with pytest.raises(PluginError, match="crashy") as info:
        fresh_pm.dataset_types  # noqa: B018
    assert "fedplug_register_dataset_types" in str(info.value)
    assert "KeyError" in str(info.value)


def test_plans_registered_by_import_path_are_imported_on_first_use(fresh_pm, plugin_module):
    module = plugin_module(
        """
        from fedplug import LogisticRegressionPlan

        class LazyPlan(LogisticRegressionPlan):
            pass
        """
    )
    fresh_pm.register(PlanPlugin("lazy", f"{module}:LazyPlan"), name="lazy-plugin")
    assert "lazy" in fresh_pm.training_plans
    assert module not in sys.modules  # listing the registry imports nothing
    plan_cls = fresh_pm.training_plans["lazy"]
    assert plan_cls.__name__ == "LazyPlan"
    assert module in sys.modules
    assert fresh_pm.training_plans.name_of(plan_cls) == "lazy"


def test_import_path_entries_are_type_checked_when_resolved(fresh_pm):
    fresh_pm.register(PlanPlugin("wrong", "fedplug.aggregators:FedAverage"), name="sloppy")
    assert "wrong" in fresh_pm.training_plans
    with pytest.raises(PluginError, match="TrainingPlan") as info:
        fresh_pm.training_plans["wrong"]
    assert "'sloppy'" in str(info.value)


@pytest.mark.parametrize(
    ("path", "when"),
    [("no_colon_here", "register"), ("fp_no_such_module_xyz:Plan", "access")],
)
def test_bad_import_paths_are_plugin_errors(fresh_pm, path, when):
    fresh_pm.register(PlanPlugin("broken-path", path), name="sloppy")
    if when == "register":
        with pytest.raises(PluginError, match=r"package\.module:attribute"):
            fresh_pm.training_plans  # noqa: B018
    else:
        with pytest.raises(PluginError, match="cannot be imported") as info:
            fresh_pm.training_plans["broken-path"]
        assert "'sloppy'" in str(info.value)


def test_unknown_names_list_what_is_available(fresh_pm):
    with pytest.raises(PluginError, match="no aggregator named 'nope'") as info:
        fresh_pm.aggregators["nope"]
    assert "fedavg, median" in str(info.value)
    with pytest.raises(PluginError, match="numpy-logreg"):
        fresh_pm.training_plans["nope"]
    with pytest.raises(PluginError, match="training_plans"):
        fresh_pm.registry("bogus")


@pytest.mark.parametrize(
    ("kind", "typo", "noun", "suggestion"),
    [
        ("training_plans", "numpy-logreg2", "training plan", "'numpy-logreg'"),
        ("training_plans", "logreg", "training plan", "'numpy-logreg'"),
        ("aggregators", "fedavrg", "aggregator", "'fedavg'"),
        ("aggregators", "FedAvg", "aggregator", "'fedavg'"),
        ("dataset_types", "cvs", "dataset type", "'csv'"),
        ("optimizer_modules", "adma", "optimizer module", "'adam'"),
        ("transports", "lokal", "transport", "'local'"),
        ("commands", "plugin", "command", "'plugins'"),
    ],
)
def test_a_misspelled_name_gets_a_suggestion_in_plain_words(fresh_pm, kind, typo, noun, suggestion):
    with pytest.raises(PluginError) as info:
        fresh_pm.registry(kind)[typo]
    text = str(info.value)
    assert text.startswith(f"no {noun} named {typo!r} is registered (did you mean {suggestion}?)")
    assert kind not in text  # "training plan", never "training_plans"


@pytest.mark.parametrize(
    ("kind", "noun"), [("secagg_schemes", "secure-aggregation scheme"), ("trackers", "tracker")]
)
def test_an_unknown_name_far_from_every_name_gets_no_suggestion(fresh_pm, kind, noun):
    with pytest.raises(PluginError) as info:
        fresh_pm.registry(kind)["zzz"]
    assert str(info.value).startswith(f"no {noun} named 'zzz' is registered (available: none)")
    assert "did you mean" not in str(info.value)


def test_registration_mistakes_use_the_singular_name(fresh_pm):
    fresh_pm.register(AggregatorPlugin("twin"), name="first-plugin")
    fresh_pm.register(AggregatorPlugin("twin"), name="second-plugin")
    with pytest.raises(PluginError, match=r"^aggregator name 'twin' is registered by both"):
        fresh_pm.aggregators  # noqa: B018
    assert fresh_pm.conflicts() == [
        "aggregator name 'twin' is registered by 'first-plugin' and 'second-plugin'"
    ]


# -- `fedplug plugins` --------------------------------------------------------------------------


def test_fedplug_plugins_json_lists_installed_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {entry["name"]: entry for entry in listing}
    for entry in listing:
        assert {"name", "distribution", "version", "hooks", "registers", "error"} <= set(entry)
    assert {"fedplug.builtin.aggregators", "torch", "sklearn", "grpc"} <= set(by_name)
    for name, dist in [("fedplug.builtin.plans", "fedplug"), ("torch", "fedplug-torch")]:
        assert by_name[name]["distribution"] == dist
        assert by_name[name]["version"] == importlib.metadata.version(dist)
        assert by_name[name]["error"] is None
    assert by_name["sklearn"]["distribution"] == "fedplug-sklearn"
    assert "fedplug_register_training_plans" in by_name["torch"]["hooks"]
    assert "fedplug_model_adapter" in by_name["sklearn"]["hooks"]
    # what each plugin registers, by name
    assert by_name["torch"]["registers"] == {"training_plans": ["torch-mlp"]}
    assert by_name["fedplug.builtin.aggregators"]["registers"] == {
        "aggregators": ["fedavg", "median"]
    }
    assert by_name["grpc"]["registers"] == {"transports": ["grpc"], "commands": ["certs", "node"]}
    assert by_name["secagg"]["registers"] == {"secagg_schemes": ["masking"]}
    assert (
        "scaffold-client" in by_name["fedplug.builtin.optimizers"]["registers"]["optimizer_modules"]
    )


def test_fedplug_plugins_reports_a_broken_plugin_instead_of_crashing(
    plugin_module, entry_points, capsys, monkeypatch
):
    broken = plugin_module("raise ImportError('needs frobnicate')")
    entry_points(ep("broken", broken))
    with pytest.warns(RuntimeWarning):
        assert main(["plugins", "--json"]) == 0
    by_name = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert "frobnicate" in by_name["broken"]["error"]

    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", "broken")
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert "broken" in table and "disabled" in table
