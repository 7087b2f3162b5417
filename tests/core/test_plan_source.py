"""What a plan shipped as source carries: its class, the base classes written beside it (which a
node cannot import), imports for the others; also for classes defined in a notebook cell, whose
module has no file."""

from __future__ import annotations

import linecache

import pytest

from fedplug import PlanError
from fedplug.numpy_plan import LogisticRegressionPlan
from fedplug.planref import plan_origin, plan_source


class LocalBase(LogisticRegressionPlan):
    def scale(self):
        return 2.0


class LocalPlan(LocalBase):
    def scale(self):
        return 3.0


def test_a_base_class_written_beside_the_plan_ships_with_it_first():
    source = plan_source(LocalPlan, [])
    assert "from fedplug.numpy_plan import LogisticRegressionPlan" in source
    assert source.index("class LocalBase") < source.index("class LocalPlan")
    namespace: dict = {}
    exec(compile(source, "shipped.py", "exec"), namespace)  # as a node rebuilds it
    plan = namespace["LocalPlan"]({"n_features": 3})
    assert plan.scale() == 3.0 and namespace["LocalPlan"].__mro__[1].__name__ == "LocalBase"


def test_a_plan_with_no_local_base_ships_as_before():
    source = plan_source(LocalBase, ["import numpy as np"])
    assert source.startswith("import numpy as np\nfrom fedplug.numpy_plan import")
    assert source.count("class ") == 1


def _cell(code: str, number: int) -> dict:
    """Run ``code`` as IPython runs a notebook cell: compiled under a file name of its own that
    linecache knows, in a ``__main__`` namespace without ``__file__``."""
    filename = f"/tmp/ipykernel_0/{number}.py"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    return filename


def test_classes_defined_in_notebook_cells_ship():
    namespace = {"__name__": "__main__", "LogisticRegressionPlan": LogisticRegressionPlan}
    first = "class CellBase(LogisticRegressionPlan):\n    def scale(self):\n        return 5.0\n"
    second = "\n\nclass CellPlan(CellBase):\n    def scale(self):\n        return 7.0\n"
    try:
        exec(compile(first, _cell(first, 1), "exec"), namespace)
        exec(compile(second, _cell(second, 2), "exec"), namespace)
        source = plan_source(namespace["CellPlan"], [])
        assert source.index("class CellBase") < source.index("class CellPlan")
        assert "return 5.0" in source and "return 7.0" in source
        assert plan_origin(namespace["CellPlan"]) == ("/tmp/ipykernel_0/2.py", 3)
    finally:
        for number in (1, 2):
            linecache.cache.pop(f"/tmp/ipykernel_0/{number}.py", None)


def test_a_class_whose_source_is_nowhere_is_refused_with_what_to_do():
    made = type("Made", (LogisticRegressionPlan,), {"__module__": "__main__"})
    with pytest.raises(
        PlanError, match=r"cannot ship plan Made.*define it in a file or a notebook"
    ):
        plan_source(made, [])
