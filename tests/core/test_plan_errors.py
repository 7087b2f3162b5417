"""An error in a plan's code names the researcher's file and line, not the shipped copy's
``fedplug_plan/<hash>.py``, and the advice is to fix the plan, not to skip nodes (issue 17)."""

from __future__ import annotations

import inspect
import re
import typing

import numpy as np
import pytest

from fedplug import Experiment, LogisticRegressionPlan, NodeError, PlanCodeError, PlanError
from fedplug import messages as msg
from fedplug.errors import node_failure_advice
from fedplug.planref import load_plan_class, make_plan_ref, plan_origin, source_hash
from fedplug.plugins import get_plugin_manager

MODEL_ARGS = {"n_features": 4}
THIS_FILE = r"\S*test_plan_errors\.py"


def line_of(obj, text: str) -> int:
    """The line of this file where ``obj``'s source holds ``text``."""
    lines, first = inspect.getsourcelines(obj)
    return first + next(i for i, line in enumerate(lines) if text in line)


def run_once(nodes, plan_cls) -> NodeError:
    exp = Experiment(
        nodes=nodes, training_plan=plan_cls, model_args=MODEL_ARGS, validate=False, seed=0
    )
    with pytest.raises(NodeError) as info:
        exp.run_once()
    return info.value


class SingularPlan(LogisticRegressionPlan):
    """Fails inside numpy, called from its own code."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency("import numpy as np")

    def train(self, dataset, args):
        np.linalg.inv(np.zeros((2, 2)))  # raises in numpy
        return super().train(dataset, args)


@typing.final
class DecoratedPlan(LogisticRegressionPlan):
    """Starts with a decorator: its lines still map to this file's."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.add_dependency("import typing")

    def train(self, dataset, args):
        return {}["missing"]


NOT_SHIPPED = 3


class BodyFailsOnNodesPlan(LogisticRegressionPlan):
    """Its class body reads a module global the nodes do not get."""

    width = NOT_SHIPPED


def test_an_error_raised_in_a_library_names_the_plans_line_and_where_it_was_raised(make_nodes):
    error = run_once(make_nodes((40,)), SingularPlan)
    line = line_of(SingularPlan.train, "np.linalg.inv")
    text = str(error)
    assert re.search(
        rf"PlanCodeError: LinAlgError: Singular matrix \(at {THIS_FILE}:{line} in train; "
        r"raised in \S*numpy\S*\.py:\d+ in \w+\)",
        text,
    ), text
    assert "fedplug_plan/" not in text
    assert "fix the plan's code" in text and "on_node_failure='skip'" not in text


def test_a_decorated_plans_lines_map_to_the_researchers_file(make_nodes):
    error = run_once(make_nodes((40,)), DecoratedPlan)
    line = line_of(DecoratedPlan.train, '{}["missing"]')
    assert re.search(rf"KeyError: 'missing' \(at {THIS_FILE}:{line} in train\)", str(error))


def test_a_plan_whose_source_fails_on_nodes_names_the_line_and_is_a_code_error(make_nodes):
    error = run_once(make_nodes((40,)), BodyFailsOnNodesPlan)
    line = line_of(BodyFailsOnNodesPlan, "width = NOT_SHIPPED")
    text = str(error)
    assert "PlanCodeError: plan BodyFailsOnNodesPlan source failed to execute" in text
    assert re.search(
        rf"NameError: name 'NOT_SHIPPED' is not defined \(at {THIS_FILE}:{line} in "
        r"BodyFailsOnNodesPlan\)",
        text,
    ), text
    assert "fix the plan's code" in text


def test_the_plan_reference_carries_the_file_and_first_line_of_the_class():
    pm = get_plugin_manager(load_entry_points=False)
    ref = make_plan_ref(SingularPlan, ["import numpy as np"], pm.training_plans)
    file, line = plan_origin(SingularPlan)
    assert (ref.source_file, ref.source_line) == (file, line)
    assert file.endswith("test_plan_errors.py")
    assert line == inspect.getsourcelines(SingularPlan)[1]
    # the origin is not part of what a node approves: the hash covers the source alone
    assert ref.sha256 == source_hash(ref.source)
    # and it travels
    request = msg.TrainRequest("exp", 0, ref, MODEL_ARGS, {}, [], {})
    assert msg.decode(msg.encode(request)).plan == ref


def _serve(node, ref) -> msg.ErrorReply:
    params = LogisticRegressionPlan(MODEL_ARGS).get_parameters()
    request = msg.encode(msg.TrainRequest("exp", 0, ref, MODEL_ARGS, {}, [], params))
    reply = msg.decode(b"".join(node.serve(request)))
    assert isinstance(reply, msg.ErrorReply), reply
    return reply


SOURCE = """import numpy as np


class Broken(LogisticRegressionPlan):
    def train(self, dataset, args):
        raise ValueError("bad")
"""


def _ref(**origin) -> msg.PlanRef:
    source = "from fedplug import LogisticRegressionPlan\n" + SOURCE
    return msg.PlanRef(source=source, class_name="Broken", sha256=source_hash(source), **origin)


def test_without_an_origin_the_shipped_copys_lines_are_named(make_nodes):
    [node] = make_nodes((40,))
    reply = _serve(node, _ref())  # from a researcher that does not send one
    assert reply.error == "PlanCodeError"
    assert re.search(r"ValueError: bad \(at fedplug_plan/\w{16}\.py:7 in train\)", reply.message)


def test_shipped_lines_map_to_the_researchers_lines(make_nodes):
    [node] = make_nodes((40,))
    reply = _serve(node, _ref(source_file="notebooks/plan.py", source_line=120))
    # the class starts on shipped line 5 and on line 120 of the researcher's file
    assert "ValueError: bad (at notebooks/plan.py:122 in train)" in reply.message


@pytest.mark.parametrize(
    "origin",
    [
        {"source_file": "x.py", "source_line": 0},
        {"source_file": "x.py", "source_line": -4},
        {"source_file": "", "source_line": 3},
        {"source_file": "x" * 5000, "source_line": 3},
    ],
)
def test_an_unusable_origin_is_ignored(make_nodes, origin):
    [node] = make_nodes((40,))
    reply = _serve(node, _ref(**origin))
    assert re.search(r"\(at fedplug_plan/\w{16}\.py:7 in train\)", reply.message)


def test_an_origin_with_control_characters_is_shown_inert(make_nodes):
    [node] = make_nodes((40,))
    reply = _serve(node, _ref(source_file="evil\x1b[2K.py", source_line=1))
    assert "\x1b" not in reply.message
    assert "(at evil\\x1b[2K.py:3 in train)" in reply.message


def test_loading_a_class_keeps_inspect_working():
    pm = get_plugin_manager(load_entry_points=False)
    ref = make_plan_ref(SingularPlan, ["import numpy as np"], pm.training_plans)
    rebuilt = load_plan_class(ref, pm.training_plans)
    assert "np.linalg.inv" in inspect.getsource(rebuilt)


def test_the_advice_depends_on_the_kind_of_failure():
    assert "fix the plan's code" in node_failure_advice(PlanCodeError("boom"))
    code_bug = NodeError("h1", "PlanCodeError: TypeError: bad operand (at plan.py:3 in train)")
    assert "fix the plan's code" in node_failure_advice(code_bug)
    assert "on_node_failure='skip'" not in node_failure_advice(code_bug)
    for other in (
        NodeError("h1", "PlanError: training diverged (non-finite parameters)"),
        NodeError("h1", "did not answer: ConnectionError: gone"),
        PlanError("needs a module this node does not have"),
    ):
        assert node_failure_advice(other) == (
            "use on_node_failure='skip' to continue without failing nodes"
        )
    assert issubclass(PlanCodeError, PlanError)  # `except PlanError` still catches it
