"""Core is layers with no cycles: each module imports only from its own layer or those below,
counting imports inside functions (only annotations under ``if TYPE_CHECKING:`` are exempt), and
no two modules import each other, directly or not. The imports are read from the source (AST)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import fedplug

ROOT = Path(fedplug.__file__).resolve().parent

#: bottom to top; a module may import from its own layer and the ones before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("fedplug.errors", "fedplug.text")),
    (
        "contracts",
        (
            "fedplug.hookspecs",
            "fedplug.plugins",
            "fedplug.plan",
            "fedplug.aggregators",
            "fedplug.datasets",
            "fedplug.transport",
            "fedplug.secagg",
            "fedplug.adapter",
        ),
    ),
    ("wire", ("fedplug.messages", "fedplug.planref")),
    ("optimizer", ("fedplug.optimizer",)),
    (
        "node / researcher",
        (
            "fedplug.node",
            "fedplug.transport.local",
            "fedplug.numpy_plan",
            "fedplug.experiment",
            "fedplug.experiment.*",
            "fedplug.report",
        ),
    ),
    ("built-in plugins", ("fedplug.builtin", "fedplug.builtin.*")),
    ("cli", ("fedplug.cli", "fedplug.__main__")),
    ("api", ("fedplug",)),  # the package's namespace: re-exports for users
]


def module_name(path: Path) -> str:
    parts = ["fedplug", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer of {__file__}: add it where it belongs")


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(module: str) -> set[str]:
    """The core modules ``module`` imports, wherever the import statement is."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:  # `from fedplug import messages` imports a module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    resolved = set()
    for name in found:
        while name and name not in MODULES:  # `import fedplug.x.y` names a module of a package
            name = name.rpartition(".")[0]
        if name.startswith("fedplug") and name != module:
            resolved.add(name)
    return resolved


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_core_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(module):
    mine = layer_of(module)
    upward = {
        target: LAYERS[layer_of(target)][0] for target in GRAPH[module] if layer_of(target) > mine
    }
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports from layers above it: {upward}"


def test_core_imports_no_plugin():
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            plugins = [name for name in names if name.startswith("fedplug_")]
            assert not plugins, f"{module} imports the plugin(s) {plugins}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            walk(module)


def test_the_layer_check_sees_imports_inside_functions():
    """Guard of the guard: the parser finds an import made in a function body, and skips one
    made for annotations only."""
    assert "fedplug.plan" in GRAPH["fedplug.plugins"]  # imported inside _check_plan only
    assert "fedplug.experiment" not in GRAPH["fedplug.hookspecs"]  # under TYPE_CHECKING
