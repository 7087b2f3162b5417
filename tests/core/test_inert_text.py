"""Text from a peer never reaches a terminal as control characters: plan sources holding them are
refused before anyone reviews or runs them, and what is shown is escaped (issue 16, item 1)."""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedplug import Experiment, NodeError, PlanError
from fedplug import messages as msg
from fedplug.planref import make_plan_ref, source_hash
from fedplug.plugins import get_plugin_manager
from fedplug.text import SOURCE_WHITESPACE, inert, unsafe_characters

ERASE_LINE = "\x1b[1A\x1b[2K\x1b[1G"  # up one line, erase it, back to its start
RLO = "\u202e"  # right-to-left override (Trojan Source)


@given(st.text())
def test_inert_text_holds_nothing_a_terminal_acts_on(text):
    shown = inert(text)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") for c in shown)
    kept = inert(text, keep=SOURCE_WHITESPACE)
    assert {c for c in kept if unicodedata.category(c) == "Cc"} <= set(SOURCE_WHITESPACE)
    if text.isprintable():
        assert shown == text


def test_escapes_name_the_characters():
    assert inert(f"a{ERASE_LINE}b") == "a\\x1b[1A\\x1b[2K\\x1b[1Gb"
    assert inert(f"x{RLO}y\n") == "x\\u202ey\\x0a"
    assert inert("line\n\tnext", keep="\n\t") == "line\n\tnext"
    assert unsafe_characters(f"ok\n\tfine\f{ERASE_LINE}{RLO}\r") == ["\\x1b", "\\u202e", "\\x0d"]


class Store:
    """A node's plan store that records what it is asked to record."""

    def __init__(self):
        self.recorded = []

    def record_plan(self, sha256, class_name, source):
        self.recorded.append(sha256)
        return "pending"


def train_request(source: str, class_name: str = "Spoofed") -> bytes:
    ref = msg.PlanRef(source=source, class_name=class_name, sha256=source_hash(source))
    return msg.encode(msg.TrainRequest("exp", 0, ref, {"n_features": 4}, {}, [], {}))


@pytest.mark.parametrize("approval", [True, False])
@pytest.mark.parametrize(
    ("source", "class_name", "match"),
    [
        (f"class Spoofed:\n    pass  # {ERASE_LINE}\n", "Spoofed", r"\\x1b"),
        (f"class Spoofed:\n    x = 1  # {RLO}\n", "Spoofed", r"\\u202e"),
        ("class Spoofed:\n    pass\n", f"Spoofed{ERASE_LINE}", "not a Python identifier"),
    ],
    ids=["escape-sequence", "bidi-override", "class-name"],
)
def test_a_node_refuses_a_source_with_hidden_characters_before_recording_it(
    make_nodes, approval, source, class_name, match
):
    store = Store()
    [node] = make_nodes((20,), approval=approval, plan_store=store)
    reply = msg.decode(b"".join(node.serve(train_request(source, class_name))))
    assert isinstance(reply, msg.ErrorReply) and reply.error == "PlanError", reply
    assert re.search(match, reply.message), reply.message
    assert "\x1b" not in reply.message and RLO not in reply.message
    assert store.recorded == []  # nothing for an administrator to review
    assert not node._sessions  # nothing built, nothing run


def test_the_researcher_refuses_such_a_plan_before_any_node_sees_it(tmp_path, make_nodes):
    path = tmp_path / "spoofed_plan_module.py"
    path.write_text(
        "from fedplug.numpy_plan import LogisticRegressionPlan\n\n\n"
        "class SpoofedPlan(LogisticRegressionPlan):\n"
        f"    pass  # {ERASE_LINE}\n"
    )
    spec = importlib.util.spec_from_file_location("spoofed_plan_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        registry = get_plugin_manager(load_entry_points=False).training_plans
        with pytest.raises(PlanError, match=r"control or formatting characters \(\\x1b\)"):
            make_plan_ref(module.SpoofedPlan, [], registry)
        nodes = make_nodes()
        with pytest.raises(PlanError, match="can hide code"):
            Experiment(nodes=nodes, training_plan=module.SpoofedPlan, model_args={"n_features": 4})
        assert all(not node._sessions for node in nodes)
    finally:
        del sys.modules[spec.name]


def test_a_nodes_error_text_reaches_the_researcher_escaped(make_nodes):
    nodes = make_nodes((40,))
    node = nodes[0]

    def serve(request, size=None):
        request = msg.decode(request)
        return [
            msg.encode(
                msg.ErrorReply(
                    request.experiment_id,
                    request.round_index,
                    node.name,
                    f"PlanError{RLO}",
                    f"all fine{ERASE_LINE}(round 0 done)",
                )
            )
        ]

    node.serve = serve
    exp = Experiment(nodes=nodes, training_plan="numpy-logreg", model_args={"n_features": 4})
    with pytest.raises(NodeError) as info:
        exp.run_once()
    text = str(info.value)
    assert "\x1b" not in text and RLO not in text
    assert "PlanError\\u202e: all fine\\x1b[1A\\x1b[2K\\x1b[1G(round 0 done)" in text
